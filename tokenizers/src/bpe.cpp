#include "bpe.h"

#include <cstdio>
#include <queue>

#include "ferry/core/error.h"
#include "text.h"

namespace ferry::tokenizers::detail {

using io::JsonValue;

Bpe Bpe::load(const JsonValue& model, const std::string& source) {
  const std::string what = source + ": model";
  FERRY_CHECK(model.is_object(), what, " must be an object, got ", model.dump(80));
  std::string type = "BPE";
  if (auto t = model.find("type")) type = std::string(t->string(what + "'s \"type\""));
  FERRY_CHECK(type == "BPE", source, ": model '", type,
              "' is not supported; supported: BPE (the model of Llama, Mistral, Qwen2 and GPT-2)");
  auto optional_string = [&](const char* key) -> std::string {
    auto m = model.find(key);
    if (!m || m->is_null()) return "";
    return std::string(m->string(what + "'s \"" + key + "\""));
  };
  auto flag = [&](const char* key) {
    auto m = model.find(key);
    if (!m || m->is_null()) return false;
    auto b = m->as_bool();
    FERRY_CHECK(b.has_value(), what, "'s \"", key, "\" must be true or false, got ", m->dump());
    return *b;
  };
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    FERRY_CHECK(optional_string(key).empty(), source, ": the BPE model sets ", key, " ('", optional_string(key),
                "'), which ferry does not support (no supported family uses it)");
  if (auto d = model.find("dropout"); d && !d->is_null())
    FERRY_CHECK(d->as_double().value_or(1) == 0, source, ": the BPE model sets dropout ", d->dump(),
                ", which ferry does not support (it makes encoding random); set it to null");

  Bpe bpe;
  bpe.byte_fallback_ = flag("byte_fallback");
  bpe.fuse_unk_ = flag("fuse_unk");
  bpe.ignore_merges_ = flag("ignore_merges");
  const JsonValue vocab = model.at("vocab", what);
  FERRY_CHECK(vocab.is_object(), what, "'s \"vocab\" must be an object of token: id, got ", vocab.dump(80));
  bpe.vocab_.reserve(vocab.size());
  int64_t max_id = -1;
  for (auto [token, value] : vocab.items()) {
    auto id = value.as_int64();
    FERRY_CHECK(id.has_value() && *id >= 0 && *id < (int64_t{1} << 31), what, ": token '", token,
                "' has id ", value.dump(), ", not an integer in [0, 2^31)");
    bpe.vocab_.emplace(std::string(token), *id);
    max_id = std::max(max_id, *id);
  }
  bpe.by_id_.assign(static_cast<size_t>(max_id + 1), nullptr);
  for (const auto& [token, id] : bpe.vocab_) {
    FERRY_CHECK(bpe.by_id_[id] == nullptr, what, ": tokens '", *bpe.by_id_[id], "' and '", token, "' share id ", id);
    bpe.by_id_[id] = &token;
  }
  if (std::string unk = optional_string("unk_token"); !unk.empty()) {
    auto it = bpe.vocab_.find(unk);
    FERRY_CHECK(it != bpe.vocab_.end(), what, ": unk_token '", unk, "' is not in the vocabulary");
    bpe.unk_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = bpe.vocab_.find(name);
    bpe.byte_ids_[b] = it == bpe.vocab_.end() ? -1 : it->second;
  }

  const JsonValue merges = model.at("merges", what);
  FERRY_CHECK(merges.is_array(), what, "'s \"merges\" must be an array, got ", merges.dump(80));
  bpe.merges_.reserve(merges.size());
  uint32_t rank = 0;
  for (JsonValue m : merges.elements()) {
    std::string_view a, b;
    std::string text;
    if (auto s = m.as_string()) {  // "a b"
      const size_t space = s->find(' ');
      FERRY_CHECK(space != std::string_view::npos && s->find(' ', space + 1) == std::string_view::npos, what,
                  ": merge ", rank, " '", *s, "' is not two tokens separated by one space");
      a = s->substr(0, space);
      b = s->substr(space + 1);
    } else {
      FERRY_CHECK(m.is_array() && m.size() == 2, what, ": merge ", rank, " must be \"a b\" or [\"a\", \"b\"], got ",
                  m.dump(80));
      auto it = m.elements().begin();
      a = (*it).string(what + " merge");
      ++it;
      b = (*it).string(what + " merge");
    }
    auto ia = bpe.vocab_.find(std::string(a)), ib = bpe.vocab_.find(std::string(b));
    auto ic = bpe.vocab_.find(std::string(a) + std::string(b));
    FERRY_CHECK(ia != bpe.vocab_.end() && ib != bpe.vocab_.end(), what, ": merge ", rank, " ('", a, "', '", b,
                "') names a token that is not in the vocabulary; the file is damaged");
    FERRY_CHECK(ic != bpe.vocab_.end(), what, ": merge ", rank, " ('", a, "', '", b, "') makes '", a, b,
                "', which is not in the vocabulary; the file is damaged");
    bpe.merges_.try_emplace(key(ia->second, ib->second), Merge{rank, ic->second});  // the first rank wins
    ++rank;
  }
  return bpe;
}

std::optional<int64_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Bpe::id_to_token(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= by_id_.size() || by_id_[id] == nullptr) return std::nullopt;
  return *by_id_[id];
}

void Bpe::encode_word(std::string_view word, std::vector<int64_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_)
    if (auto it = vocab_.find(std::string(word)); it != vocab_.end()) return ids.push_back(it->second);

  // The word's characters as symbols (byte tokens or the unknown token where a character is not in
  // the vocabulary), in the order and with the quirks of the library's BPE::merge_word.
  std::vector<int64_t> sym;
  std::optional<int64_t> pending_unk;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    piece.assign(word.substr(i, n));
    i += n;
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk) sym.push_back(*pending_unk), pending_unk.reset();
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : piece) all = all && byte_ids_[c] >= 0;
      if (all) {  // (a pending unknown token stays pending, as in the library)
        for (unsigned char c : piece) sym.push_back(byte_ids_[c]);
        continue;
      }
    }
    if (unk_) {
      if (pending_unk && !fuse_unk_) sym.push_back(*pending_unk);
      pending_unk = unk_;
    }
  }
  if (pending_unk) sym.push_back(*pending_unk);

  // Merge the lowest-ranked pair first, the leftmost among equals (a heap with lazy invalidation
  // over a linked list of symbols).
  const size_t n = sym.size();
  if (n > 1) {
    std::vector<int64_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) prev[i] = static_cast<int64_t>(i) - 1, next[i] = i + 1 < n ? i + 1 : -1;
    struct Candidate {
      uint32_t rank;
      size_t pos;
      int64_t left, right, id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto consider = [&](size_t pos) {
      const int64_t r = next[pos];
      if (r < 0) return;
      auto it = merges_.find(key(sym[pos], sym[r]));
      if (it != merges_.end()) heap.push({it->second.rank, pos, sym[pos], sym[r], it->second.id});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const int64_t r = next[c.pos];
      if (!alive[c.pos] || r < 0 || sym[c.pos] != c.left || sym[r] != c.right) continue;  // stale
      sym[c.pos] = c.id;
      alive[r] = false;
      next[c.pos] = next[r];
      if (next[r] >= 0) prev[next[r]] = static_cast<int64_t>(c.pos);
      if (prev[c.pos] >= 0) consider(static_cast<size_t>(prev[c.pos]));
      consider(c.pos);
    }
    for (int64_t i = 0; i >= 0; i = next[i]) ids.push_back(sym[i]);
    return;
  }
  ids.insert(ids.end(), sym.begin(), sym.end());
}

}  // namespace ferry::tokenizers::detail
