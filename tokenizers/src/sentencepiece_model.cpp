// tokenizer.model: a SentencePiece model run by the sentencepiece library, wrapped in the rules of
// Hugging Face's slow `LlamaTokenizer` (legacy mode, as `transformers` runs a tokenizer.model):
// special tokens matched in the text first, each stretch of text between them encoded by
// SentencePiece on its own, BOS/EOS added as tokenizer_config.json says. See tokenizer.h.
#include "sentencepiece_model.h"


#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>

#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "text.h"

namespace ferry::tokenizers::detail {

using io::JsonValue;

namespace {

/// A special token's text in tokenizer_config.json: "<s>" or {"content": "<s>", ...}; nullopt when
/// absent or null.
std::optional<std::string> token_text(const JsonValue& root, std::string_view key, const std::string& where) {
  auto v = root.find(key);
  if (!v || v->is_null()) return std::nullopt;
  if (v->is_string()) return std::string(v->string(where));
  return std::string(v->at("content", where).string(where + "'s \"content\""));
}

std::optional<bool> flag(const JsonValue& root, std::string_view key, const std::string& where) {
  auto v = root.find(key);
  if (!v || v->is_null()) return std::nullopt;
  auto b = v->as_bool();
  FERRY_CHECK(b.has_value(), where, ": \"", key, "\" must be true or false, got ", v->dump());
  return b;
}

}  // namespace

SentencePieceModel::SentencePieceModel() = default;
SentencePieceModel::~SentencePieceModel() = default;

std::shared_ptr<const SentencePieceModel> SentencePieceModel::load(const std::string& model_path,
                                                                   const std::string& config_path) {
  std::shared_ptr<SentencePieceModel> m(new SentencePieceModel());
  m->source_ = model_path;
  {
    std::ifstream probe(model_path, std::ios::binary);
    FERRY_CHECK(probe.good(), "cannot open ", model_path, ": ", std::strerror(errno));
  }
  m->sp_ = open_sentencepiece_model(model_path);
  m->pieces_ = m->sp_->piece_size();

  // Special tokens: SentencePiece's control pieces (<s>, </s>, <pad>) and its unknown piece, which
  // the slow tokenizers of `transformers` know as bos/eos/pad/unk_token and match in the text.
  auto add_token = [&](std::string content, int64_t id, bool special) {
    if (content.empty()) return;
    if (auto at = m->token_by_id_.find(id); at != m->token_by_id_.end()) {
      m->tokens_[at->second].special = special;
      return;
    }
    FERRY_CHECK(!m->token_by_content_.count(content), config_path, ": token '", content, "' has two ids, ",
                m->tokens_[m->token_by_content_.at(content)].id, " and ", id);
    m->token_by_content_.emplace(content, m->tokens_.size());
    m->token_by_id_.emplace(id, m->tokens_.size());
    m->tokens_.push_back({std::move(content), id, special});
  };
  for (int id = 0; id < m->pieces_; ++id)
    if (m->sp_->is_control(id) || m->sp_->is_unknown(id)) add_token(m->sp_->id_to_piece(id), id, true);
  if (m->sp_->bos_id() >= 0) m->bos_ = m->sp_->bos_id();
  if (m->sp_->eos_id() >= 0) m->eos_ = m->sp_->eos_id();
  bool add_bos = true, add_eos = false;  // LlamaTokenizer's defaults

  if (!config_path.empty()) {
    const io::JsonDocument doc = io::read_json_file(config_path);
    const JsonValue& root = doc.root();
    FERRY_CHECK(root.is_object(), config_path, " must hold a JSON object (a tokenizer_config.json), got ",
                root.dump(80));
    add_bos = flag(root, "add_bos_token", config_path).value_or(add_bos);
    add_eos = flag(root, "add_eos_token", config_path).value_or(add_eos);
    FERRY_CHECK(flag(root, "legacy", config_path).value_or(true), config_path,
                ": \"legacy\": false (no SentencePiece dummy prefix after special tokens) is not supported with "
                "tokenizer.model; ferry reproduces the legacy behaviour only. Use the model's tokenizer.json, or "
                "convert with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir))");
    if (auto added = root.find("added_tokens_decoder"); added && !added->is_null()) {
      for (auto [key, v] : added->items()) {
        const std::string what = config_path + ": added_tokens_decoder[\"" + std::string(key) + "\"]";
        int64_t id = -1;
        auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
        FERRY_CHECK(ec == std::errc() && end == key.data() + key.size() && id >= 0, what,
                    ": the key must be a non-negative integer id");
        std::string content(v.at("content", what).string(what + "'s \"content\""));
        for (const char* option : {"lstrip", "rstrip", "single_word"})
          FERRY_CHECK(!flag(v, option, what).value_or(false), config_path, ": added token '", content, "' sets ",
                      option, ", which ferry does not support");
        FERRY_CHECK(find_invalid_utf8(content) == std::string::npos, what, ": content is not UTF-8");
        if (id < m->pieces_)
          FERRY_CHECK(m->sp_->id_to_piece(static_cast<int>(id)) == content, what, ": token '", content, "' has id ",
                      id, ", which ", model_path, " gives to '", m->sp_->id_to_piece(static_cast<int>(id)), "'");
        add_token(std::move(content), id, flag(v, "special", what).value_or(false));
      }
    }
    // The named special tokens: known (a piece or an added token) and special.
    auto special_id = [&](std::string_view key) -> std::optional<int64_t> {
      auto text = token_text(root, key, config_path + "'s \"" + std::string(key) + "\"");
      if (!text) return std::nullopt;
      std::optional<int64_t> id;
      if (auto t = m->token_by_content_.find(*text); t != m->token_by_content_.end()) id = m->tokens_[t->second].id;
      else if (const int p = m->sp_->piece_to_id(*text); m->sp_->id_to_piece(p) == *text) id = p;
      FERRY_CHECK(id.has_value(), config_path, ": ", key, " '", *text, "' is neither a piece of ", model_path,
                  " nor in added_tokens_decoder");
      add_token(*text, *id, true);
      return id;
    };
    if (auto id = special_id("bos_token")) m->bos_ = id;
    if (auto id = special_id("eos_token")) m->eos_ = id;
    for (const char* key : {"unk_token", "pad_token"}) {
      auto text = token_text(root, key, config_path);  // often a token the model lacks ("<pad>"): ignored then
      if (text && m->token_by_content_.count(*text)) m->tokens_[m->token_by_content_.at(*text)].special = true;
      else if (text && m->sp_->id_to_piece(m->sp_->piece_to_id(*text)) == *text) add_token(*text, m->sp_->piece_to_id(*text), true);
    }
    if (auto extra = root.find("additional_special_tokens"); extra && !extra->is_null()) {
      for (JsonValue e : extra->elements()) {
        const std::string text(e.is_string() ? e.string(config_path) : e.at("content", config_path).string(config_path));
        auto t = m->token_by_content_.find(text);
        std::optional<int64_t> id;
        if (t != m->token_by_content_.end()) id = m->tokens_[t->second].id;
        else if (const int p = m->sp_->piece_to_id(text); m->sp_->id_to_piece(p) == text) id = p;
        FERRY_CHECK(id.has_value(), config_path, ": additional special token '", text, "' is neither a piece of ",
                    model_path, " nor in added_tokens_decoder");
        add_token(text, *id, true);
      }
    }
    FERRY_CHECK(!add_bos || m->bos_ || !flag(root, "add_bos_token", config_path), config_path,
                ": add_bos_token is true but ", model_path, " has no BOS piece and no bos_token is named");
    FERRY_CHECK(!add_eos || m->eos_, config_path, ": add_eos_token is true but ", model_path,
                " has no EOS piece and no eos_token is named");
  }
  if (!add_bos) m->bos_.reset();
  if (!add_eos) m->eos_.reset();

  m->by_first_byte_.assign(256, {});
  for (size_t i = 0; i < m->tokens_.size(); ++i)
    m->by_first_byte_[static_cast<unsigned char>(m->tokens_[i].content[0])].push_back(i);
  for (auto& list : m->by_first_byte_)
    std::stable_sort(list.begin(), list.end(), [&](size_t x, size_t y) {
      return m->tokens_[x].content.size() > m->tokens_[y].content.size();
    });
  return m;
}

std::vector<int64_t> SentencePieceModel::encode(std::string_view text, bool add_special_tokens) const {
  const size_t bad = find_invalid_utf8(text);
  FERRY_CHECK(bad == std::string_view::npos, "the text is not valid UTF-8: byte ", bad, " (0x", std::hex,
              static_cast<int>(static_cast<unsigned char>(text[bad])), std::dec,
              ") does not start or continue a character; tokenizers take UTF-8 text (Python str)");
  std::vector<int64_t> ids;
  if (add_special_tokens && bos_) ids.push_back(*bos_);
  std::vector<int> piece_ids;
  auto encode_stretch = [&](std::string_view stretch) {
    if (stretch.empty()) return;
    const std::string error = sp_->encode(stretch, &piece_ids);
    FERRY_CHECK(error.empty(), source_, ": SentencePiece could not encode the text: ", error);
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  };
  // Special and added tokens first, leftmost and longest first, as the slow tokenizers' trie does.
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const Token* hit = nullptr;
    for (size_t k : by_first_byte_[static_cast<unsigned char>(text[i])])
      if (text.compare(i, tokens_[k].content.size(), tokens_[k].content) == 0) {
        hit = &tokens_[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    encode_stretch(text.substr(start, i - start));
    ids.push_back(hit->id);
    i += hit->content.size();
    start = i;
  }
  encode_stretch(text.substr(start));
  if (add_special_tokens && eos_) ids.push_back(*eos_);
  return ids;
}

std::string SentencePieceModel::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string out, chunk;
  std::vector<int> run;  // ordinary pieces, decoded together
  auto flush = [&] {
    if (run.empty()) return;
    const std::string error = sp_->decode(run, &chunk);
    FERRY_CHECK(error.empty(), source_, ": SentencePiece could not decode the ids: ", error);
    out += chunk;
    run.clear();
  };
  for (int64_t id : ids) {
    if (auto t = token_by_id_.find(id); t != token_by_id_.end()) {
      const Token& token = tokens_[t->second];
      if (skip_special_tokens && token.special) continue;  // skipped before the runs form, as the library
      flush();
      out += token.content;
      continue;
    }
    FERRY_CHECK(id >= 0 && id < pieces_, "id ", id, " is not in the vocabulary of ", source_, " (", pieces_,
                " pieces, ", tokens_.size(), " special and added tokens); was it made by another tokenizer?");
    run.push_back(static_cast<int>(id));
  }
  flush();
  return out;
}

std::optional<int64_t> SentencePieceModel::token_to_id(std::string_view token) const {
  if (auto t = token_by_content_.find(std::string(token)); t != token_by_content_.end()) return tokens_[t->second].id;
  const int id = sp_->piece_to_id(token);  // the unknown id for a piece it does not have
  if (id >= 0 && id < pieces_ && sp_->id_to_piece(id) == token) return id;
  return std::nullopt;
}

std::optional<std::string> SentencePieceModel::id_to_token(int64_t id) const {
  if (auto t = token_by_id_.find(id); t != token_by_id_.end()) return tokens_[t->second].content;
  if (id >= 0 && id < pieces_) return sp_->id_to_piece(static_cast<int>(id));
  return std::nullopt;
}

bool SentencePieceModel::is_special(int64_t id) const {
  auto t = token_by_id_.find(id);
  return t != token_by_id_.end() && tokens_[t->second].special;
}

size_t SentencePieceModel::vocab_size() const {
  size_t n = static_cast<size_t>(pieces_);
  for (const Token& t : tokens_) n += t.id >= pieces_;
  return n;
}

}  // namespace ferry::tokenizers::detail
