// tokenizer.json: loading (every piece checked, unsupported ones refused by name) and the encode and
// decode pipelines, each step as the `tokenizers` library (Rust) does it; see tokenizer.h. A
// tokenizer.model (SentencePiece) is handed to its own backend, sentencepiece_model.cpp.
#include "ferry/tokenizers/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <unordered_map>

#include "bpe.h"
#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "sentencepiece_model.h"
#include "text.h"

namespace ferry::tokenizers {

using io::JsonValue;

namespace {

/// A piece of text on its way through pre-tokenization; `at_origin`: it starts at the input's first
/// byte (Metaspace's prepend_scheme "first" prepends only there).
struct Piece {
  std::string text;
  bool at_origin;
};

using NormalizerFn = std::function<std::string(std::string)>;
using PreTokenizerFn = std::function<void(std::vector<Piece>&)>;
using PostProcessorFn = std::function<void(std::vector<int64_t>&)>;
using DecoderFn = std::function<void(std::vector<std::string>&)>;

struct AddedToken {
  std::string content;
  int64_t id;
  bool special;
  bool normalized;
  std::string pattern = {};  // what is matched: the content, normalized when `normalized`
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  /// Set for a tokenizer.model: it does all the work then, and the tokenizer.json pipeline is empty.
  std::shared_ptr<const detail::SentencePieceModel> sentencepiece;
  detail::Bpe bpe;
  std::vector<AddedToken> added;                           // in file order
  std::unordered_map<std::string, size_t> added_by_content;
  std::unordered_map<int64_t, size_t> added_by_id;
  std::vector<std::vector<size_t>> added_by_first_byte[2];  // [normalized] -> first byte -> tokens, longest first
  NormalizerFn normalizer;
  PreTokenizerFn pre_tokenizer;
  PostProcessorFn post_processor;
  DecoderFn decoder;
  std::vector<std::shared_ptr<detail::Regex>> regexes;  // kept alive for the closures

  // ---- loading ----
  std::string where(const std::string& what) const { return source + ": " + what; }
  [[noreturn]] void refuse(const char* kind, std::string_view name, const char* supported) const {
    FERRY_FAIL(source, ": ", kind, " '", name, "' is not supported; supported: ", supported,
               ". ferry refuses what it cannot reproduce exactly rather than approximate it");
  }
  static std::string type_of(const JsonValue& v, const std::string& what) {
    FERRY_CHECK(v.is_object(), what, " must be an object, got ", v.dump());
    return std::string(v.at("type", what).string(what + "'s \"type\""));
  }
  static bool bool_or(const JsonValue& v, std::string_view key, bool fallback, const std::string& what) {
    auto m = v.find(key);
    if (!m || m->is_null()) return fallback;
    auto b = m->as_bool();
    FERRY_CHECK(b.has_value(), what, "'s \"", key, "\" must be true or false, got ", m->dump());
    return *b;
  }
  static std::string string_or(const JsonValue& v, std::string_view key, const std::string& fallback,
                               const std::string& what) {
    auto m = v.find(key);
    if (!m || m->is_null()) return fallback;
    return std::string(m->string(what + "'s \"" + std::string(key) + "\""));
  }
  static int64_t int_at(const JsonValue& v, std::string_view key, const std::string& what) {
    auto i = v.at(key, what).as_int64();
    FERRY_CHECK(i.has_value() && *i >= 0, what, "'s \"", key, "\" must be a non-negative integer, got ",
                v.at(key, what).dump());
    return *i;
  }
  /// A {"String": s} or {"Regex": r} pattern: matches as [start, end) offsets.
  std::function<std::vector<std::pair<size_t, size_t>>(std::string_view)> pattern(const JsonValue& v,
                                                                                const std::string& what) {
    const JsonValue p = v.at("pattern", what);
    if (auto s = p.find("String")) {
      std::string literal(s->string(what + "'s String pattern"));
      return [literal](std::string_view text) {
        std::vector<std::pair<size_t, size_t>> out;
        if (literal.empty()) return out;
        for (size_t pos = 0; (pos = text.find(literal, pos)) != std::string_view::npos; pos += literal.size())
          out.emplace_back(pos, pos + literal.size());
        return out;
      };
    }
    if (auto r = p.find("Regex")) {
      auto regex = std::make_shared<detail::Regex>(std::string(r->string(what + "'s Regex pattern")), where(what));
      regexes.push_back(regex);
      const detail::Regex* raw = regex.get();
      return [raw](std::string_view text) { return raw->find_all(text); };
    }
    FERRY_FAIL(source, ": ", what, "'s pattern must be {\"String\": ...} or {\"Regex\": ...}, got ", p.dump());
  }

  NormalizerFn load_normalizer(const JsonValue& v) {
    const std::string type = type_of(v, where("normalizer"));
    const std::string what = "normalizer " + type;
    if (type == "Sequence") {
      std::vector<NormalizerFn> parts;
      for (JsonValue n : v.at("normalizers", where(what)).elements()) parts.push_back(load_normalizer(n));
      return [parts](std::string s) {
        for (const auto& p : parts) s = p(std::move(s));
        return s;
      };
    }
    if (type == "Prepend") {
      std::string prepend(v.at("prepend", where(what)).string(where(what) + "'s \"prepend\""));
      return [prepend](std::string s) { return s.empty() ? s : prepend + s; };
    }
    if (type == "Replace") {
      auto find = pattern(v, where(what));
      std::string content(v.at("content", where(what)).string(where(what) + "'s \"content\""));
      return [find, content](std::string s) {
        const auto hits = find(s);
        if (hits.empty()) return s;
        std::string out;
        size_t pos = 0;
        for (auto [a, b] : hits) {
          out.append(s, pos, a - pos);
          out.append(content);
          pos = b;
        }
        out.append(s, pos, std::string::npos);
        return out;
      };
    }
    const std::pair<const char*, detail::NormalForm> forms[] = {{"NFC", detail::NormalForm::NFC},
                                                                 {"NFD", detail::NormalForm::NFD},
                                                                 {"NFKC", detail::NormalForm::NFKC},
                                                                 {"NFKD", detail::NormalForm::NFKD}};
    for (auto [name, form] : forms)
      if (type == name) return [form = form](std::string s) { return detail::normalize_unicode(s, form); };
    refuse("normalizer", type, "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD");
  }

  /// Splits each piece at the matches of `find`, the matches treated as `behavior` says (the
  /// SplitDelimiterBehavior of the `tokenizers` library); empty pieces are dropped.
  static PreTokenizerFn splitter(std::function<std::vector<std::pair<size_t, size_t>>(std::string_view)> find,
                                 std::string behavior, bool invert) {
    return [find, behavior, invert](std::vector<Piece>& pieces) {
      std::vector<Piece> out;
      for (Piece& p : pieces) {
        struct Span {
          size_t a, b;
          bool match;
        };
        std::vector<Span> spans;
        size_t prev = 0;
        for (auto [a, b] : find(p.text)) {
          if (a > prev) spans.push_back({prev, a, false});
          spans.push_back({a, b, true});
          prev = b;
        }
        if (prev < p.text.size()) spans.push_back({prev, p.text.size(), false});
        if (invert)
          for (Span& s : spans) s.match = !s.match;
        std::vector<Span> kept;
        if (behavior == "Removed") {
          for (const Span& s : spans)
            if (!s.match) kept.push_back(s);
        } else if (behavior == "Isolated") {
          kept = spans;
        } else if (behavior == "MergedWithPrevious" || behavior == "Contiguous") {
          const bool contiguous = behavior == "Contiguous";
          bool previous_match = false;
          for (const Span& s : spans) {
            const bool merge = contiguous ? s.match == previous_match : s.match && !previous_match;
            if (merge && !kept.empty()) kept.back().b = s.b;
            else kept.push_back(s);
            previous_match = s.match;
          }
        } else {  // MergedWithNext
          bool previous_match = false;
          for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
            if (it->match && !previous_match && !kept.empty()) kept.back().a = it->a;
            else kept.push_back(*it);
            previous_match = it->match;
          }
          std::reverse(kept.begin(), kept.end());
        }
        for (const Span& s : kept)
          if (s.b > s.a) out.push_back({p.text.substr(s.a, s.b - s.a), p.at_origin && s.a == 0});
      }
      pieces = std::move(out);
    };
  }

  PreTokenizerFn load_pre_tokenizer(const JsonValue& v) {
    const std::string type = type_of(v, where("pre_tokenizer"));
    const std::string what = where("pre_tokenizer " + type);
    if (type == "Sequence") {
      std::vector<PreTokenizerFn> parts;
      for (JsonValue n : v.at("pretokenizers", what).elements()) parts.push_back(load_pre_tokenizer(n));
      return [parts](std::vector<Piece>& pieces) {
        for (const auto& p : parts) p(pieces);
      };
    }
    if (type == "ByteLevel") {
      const bool add_prefix_space = bool_or(v, "add_prefix_space", true, what);
      const bool use_regex = bool_or(v, "use_regex", true, what);
      PreTokenizerFn split;
      if (use_regex) {
        // GPT-2's pattern, as the `tokenizers` library's ByteLevel has it.
        auto regex = std::make_shared<detail::Regex>(
            R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", what);
        regexes.push_back(regex);
        const detail::Regex* raw = regex.get();
        split = splitter([raw](std::string_view s) { return raw->find_all(s); }, "Isolated", false);
      }
      return [add_prefix_space, split](std::vector<Piece>& pieces) {
        if (add_prefix_space)
          for (Piece& p : pieces)
            if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
        if (split) split(pieces);
        for (Piece& p : pieces) {
          std::string mapped;
          mapped.reserve(p.text.size() * 2);
          for (unsigned char c : p.text) mapped += detail::byte_to_char(c);
          p.text = std::move(mapped);
        }
      };
    }
    if (type == "Split") {
      auto find = pattern(v, what);
      const std::string behavior(v.at("behavior", what).string(what + "'s \"behavior\""));
      static const char* const kBehaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                               "Contiguous"};
      FERRY_CHECK(std::find(std::begin(kBehaviors), std::end(kBehaviors), behavior) != std::end(kBehaviors), what,
                  ": behavior '", behavior,
                  "' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
      return splitter(find, behavior, bool_or(v, "invert", false, what));
    }
    if (type == "Metaspace") {
      const std::string replacement = string_or(v, "replacement", "\xE2\x96\x81", what);
      std::string scheme = string_or(v, "prepend_scheme", "", what);
      if (scheme.empty()) scheme = bool_or(v, "add_prefix_space", true, what) ? "always" : "never";
      FERRY_CHECK(scheme == "always" || scheme == "first" || scheme == "never", what, ": prepend_scheme '", scheme,
                  "' is not one of always, first, never");
      const bool split = bool_or(v, "split", true, what);
      PreTokenizerFn splitter_fn;
      if (split)
        splitter_fn = splitter(
            [replacement](std::string_view s) {
              std::vector<std::pair<size_t, size_t>> out;
              for (size_t pos = 0; (pos = s.find(replacement, pos)) != std::string_view::npos; pos += replacement.size())
                out.emplace_back(pos, pos + replacement.size());
              return out;
            },
            "MergedWithNext", false);
      return [replacement, scheme, splitter_fn](std::vector<Piece>& pieces) {
        for (Piece& p : pieces) {
          replace_all(p.text, " ", replacement);
          const bool starts = p.text.compare(0, replacement.size(), replacement) == 0;
          if (!starts && (scheme == "always" || (scheme == "first" && p.at_origin))) p.text.insert(0, replacement);
        }
        if (splitter_fn) splitter_fn(pieces);
      };
    }
    refuse("pre_tokenizer", type, "Sequence, ByteLevel, Split, Metaspace");
  }

  PostProcessorFn load_post_processor(const JsonValue& v) {
    const std::string type = type_of(v, where("post_processor"));
    const std::string what = where("post_processor " + type);
    if (type == "Sequence") {
      std::vector<PostProcessorFn> parts;
      for (JsonValue n : v.at("processors", what).elements()) parts.push_back(load_post_processor(n));
      return [parts](std::vector<int64_t>& ids) {
        for (const auto& p : parts) p(ids);
      };
    }
    if (type == "ByteLevel") return [](std::vector<int64_t>&) {};  // offsets only
    if (type == "TemplateProcessing") {
      std::unordered_map<std::string, std::vector<int64_t>> specials;
      for (auto [name, s] : v.at("special_tokens", what).items()) {
        std::vector<int64_t> ids;
        for (JsonValue id : s.at("ids", what + " special token " + std::string(name)).elements()) {
          auto i = id.as_int64();
          FERRY_CHECK(i.has_value() && *i >= 0, what, ": special token '", name, "' has id ", id.dump(),
                      ", not a non-negative integer");
          ids.push_back(*i);
        }
        specials.emplace(std::string(name), std::move(ids));
      }
      // Each element: the ids of a special token, or empty for the sequence itself ($A).
      std::vector<std::optional<std::vector<int64_t>>> single;
      bool has_sequence = false;
      for (JsonValue piece : v.at("single", what).elements()) {
        if (auto s = piece.find("SpecialToken")) {
          const std::string id(s->at("id", what).string(what + " SpecialToken id"));
          auto it = specials.find(id);
          FERRY_CHECK(it != specials.end(), what, ": the template names the special token '", id,
                      "', which \"special_tokens\" does not define");
          single.emplace_back(it->second);
        } else if (auto q = piece.find("Sequence")) {
          const std::string id(q->at("id", what).string(what + " Sequence id"));
          FERRY_CHECK(id == "A", what, ": a single-sequence template may use only sequence A, not '", id, "'");
          single.emplace_back(std::nullopt);
          has_sequence = true;
        } else {
          FERRY_FAIL(what, ": template piece ", piece.dump(), " is neither a SpecialToken nor a Sequence");
        }
      }
      FERRY_CHECK(has_sequence, what, ": the single template has no $A (the text's own ids)");
      return [single](std::vector<int64_t>& ids) {
        std::vector<int64_t> out;
        for (const auto& piece : single) {
          if (piece) out.insert(out.end(), piece->begin(), piece->end());
          else out.insert(out.end(), ids.begin(), ids.end());
        }
        ids = std::move(out);
      };
    }
    refuse("post_processor", type, "TemplateProcessing, ByteLevel, Sequence");
  }

  DecoderFn load_decoder(const JsonValue& v) {
    const std::string type = type_of(v, where("decoder"));
    const std::string what = where("decoder " + type);
    if (type == "Sequence") {
      std::vector<DecoderFn> parts;
      for (JsonValue n : v.at("decoders", what).elements()) parts.push_back(load_decoder(n));
      return [parts](std::vector<std::string>& tokens) {
        for (const auto& p : parts) p(tokens);
      };
    }
    if (type == "ByteLevel") {
      return [](std::vector<std::string>& tokens) {
        std::string bytes;
        for (const std::string& t : tokens) {
          const size_t start = bytes.size();
          bool all = true;
          for (size_t i = 0, len = 0; i < t.size(); i += len) {
            const int b = detail::char_to_byte(t, i, &len);
            if (b < 0) {
              all = false;
              break;
            }
            bytes.push_back(static_cast<char>(b));
          }
          if (!all) {  // a token with a character outside the alphabet stands for its own bytes
            bytes.resize(start);
            bytes += t;
          }
        }
        tokens.assign(1, detail::utf8_lossy(bytes));
      };
    }
    if (type == "Replace") {
      const JsonValue p = v.at("pattern", what);
      auto s = p.find("String");
      FERRY_CHECK(s.has_value(), what, ": only a String pattern is supported in the Replace decoder, got ", p.dump());
      std::string from(s->string(what + "'s pattern"));
      std::string to(v.at("content", what).string(what + "'s \"content\""));
      return [from, to](std::vector<std::string>& tokens) {
        for (std::string& t : tokens) replace_all(t, from, to);
      };
    }
    if (type == "ByteFallback") {
      return [](std::vector<std::string>& tokens) {
        std::vector<std::string> out;
        std::string bytes;
        auto flush = [&] {
          if (bytes.empty()) return;
          if (detail::find_invalid_utf8(bytes) == std::string::npos) out.push_back(bytes);
          else
            for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back(detail::kReplacementChar);
          bytes.clear();
        };
        for (std::string& t : tokens) {
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
              std::isxdigit(static_cast<unsigned char>(t[4]))) {
            bytes.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
      };
    }
    if (type == "Fuse") {
      return [](std::vector<std::string>& tokens) {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
      };
    }
    if (type == "Strip") {
      const std::string content(v.at("content", what).string(what + "'s \"content\""));
      FERRY_CHECK(detail::find_invalid_utf8(content) == std::string::npos && !content.empty() &&
                      detail::utf8_len(static_cast<unsigned char>(content[0])) == content.size(),
                  what, ": \"content\" must be one character, got '", content, "'");
      const int64_t start = int_at(v, "start", what), stop = int_at(v, "stop", what);
      return [content, start, stop](std::vector<std::string>& tokens) {
        for (std::string& t : tokens) {
          size_t a = 0, b = t.size();
          for (int64_t i = 0; i < start && t.compare(a, content.size(), content) == 0 && a < b; ++i) a += content.size();
          for (int64_t i = 0; i < stop && b >= a + content.size() &&
                              t.compare(b - content.size(), content.size(), content) == 0;
               ++i)
            b -= content.size();
          t = t.substr(a, b - a);
        }
      };
    }
    if (type == "Metaspace") {
      const std::string replacement = string_or(v, "replacement", "\xE2\x96\x81", what);
      std::string scheme = string_or(v, "prepend_scheme", "", what);
      if (scheme.empty()) scheme = bool_or(v, "add_prefix_space", true, what) ? "always" : "never";
      const bool strip_first = scheme != "never";
      return [replacement, strip_first](std::vector<std::string>& tokens) {
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string& t = tokens[i];
          if (i == 0 && strip_first && t.compare(0, replacement.size(), replacement) == 0) t.erase(0, replacement.size());
          replace_all(t, replacement, " ");
        }
      };
    }
    refuse("decoder", type, "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace");
  }

  void load(const JsonValue& root) {
    FERRY_CHECK(root.is_object(), source, " must hold a JSON object (a tokenizer.json), got ", root.dump(80));
    const JsonValue model = root.at("model", source + " (a tokenizer.json)");
    bpe = detail::Bpe::load(model, source);
    if (auto a = root.find("added_tokens"); a && !a->is_null()) {
      for (JsonValue t : a->elements()) {
        const std::string what = where("added token " + t.dump(80));
        AddedToken token{std::string(t.at("content", what).string(what + "'s \"content\"")), int_at(t, "id", what),
                         bool_or(t, "special", false, what), bool_or(t, "normalized", false, what)};
        for (const char* option : {"lstrip", "rstrip", "single_word"})
          FERRY_CHECK(!bool_or(t, option, false, what), source, ": added token '", token.content, "' sets ", option,
                      ", which ferry does not support (the supported families' tokens do not use it)");
        FERRY_CHECK(!token.content.empty(), what, ": an added token cannot be empty");
        FERRY_CHECK(detail::find_invalid_utf8(token.content) == std::string::npos, what, ": content is not UTF-8");
        FERRY_CHECK(!added_by_content.count(token.content), source, ": added token '", token.content, "' appears twice");
        FERRY_CHECK(!added_by_id.count(token.id), source, ": two added tokens have id ", token.id);
        if (auto in_vocab = bpe.token_to_id(token.content))
          FERRY_CHECK(*in_vocab == token.id, source, ": added token '", token.content, "' has id ", token.id,
                      " but the model's vocabulary gives it id ", *in_vocab);
        else
          FERRY_CHECK(!bpe.id_to_token(token.id), source, ": added token '", token.content, "' has id ", token.id,
                      ", which the model's vocabulary gives to '", *bpe.id_to_token(token.id), "'");
        added_by_content.emplace(token.content, added.size());
        added_by_id.emplace(token.id, added.size());
        added.push_back(std::move(token));
      }
    }
    auto optional_piece = [&](const char* key) -> std::optional<JsonValue> {
      auto m = root.find(key);
      if (!m || m->is_null()) return std::nullopt;
      return m;
    };
    if (auto n = optional_piece("normalizer")) normalizer = load_normalizer(*n);
    if (auto p = optional_piece("pre_tokenizer")) pre_tokenizer = load_pre_tokenizer(*p);
    if (auto p = optional_piece("post_processor")) post_processor = load_post_processor(*p);
    if (auto d = optional_piece("decoder")) decoder = load_decoder(*d);
    // As the library: tokens marked "normalized" (special or not) are matched in the normalized text,
    // as their normalized content ("<s>" under Llama 2's normaliser is "▁<s>"); the others in the raw text.
    for (int n = 0; n < 2; ++n) added_by_first_byte[n].assign(256, {});
    for (size_t i = 0; i < added.size(); ++i) {
      AddedToken& t = added[i];
      t.pattern = t.normalized && normalizer ? normalizer(t.content) : t.content;
      if (t.pattern.empty()) continue;
      added_by_first_byte[t.normalized][static_cast<unsigned char>(t.pattern[0])].push_back(i);
    }
    for (auto& table : added_by_first_byte)
      for (auto& list : table)
        std::stable_sort(list.begin(), list.end(),
                         [&](size_t x, size_t y) { return added[x].pattern.size() > added[y].pattern.size(); });
    if (auto t = optional_piece("truncation"))
      FERRY_FAIL(source, ": \"truncation\" is set (", t->dump(80), "); ferry does not truncate, set it to null");
    if (auto p = optional_piece("padding"))
      FERRY_FAIL(source, ": \"padding\" is set (", p->dump(80), "); ferry does not pad here, set it to null");
  }

  // ---- encoding ----
  struct Segment {
    std::string_view text;  // or an added token when id >= 0
    int64_t id;
    size_t offset;
  };
  /// Splits `text` at the added tokens of one table, leftmost and longest first.
  void split_added(std::string_view text, size_t offset, bool normalized, std::vector<Segment>& out) const {
    const auto& table = added_by_first_byte[normalized];
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      const AddedToken* hit = nullptr;
      for (size_t k : table[static_cast<unsigned char>(text[i])])
        if (text.compare(i, added[k].pattern.size(), added[k].pattern) == 0) {
          hit = &added[k];
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      if (i > start) out.push_back({text.substr(start, i - start), -1, offset + start});
      out.push_back({{}, hit->id, offset + i});
      i += hit->pattern.size();
      start = i;
    }
    if (start < text.size()) out.push_back({text.substr(start), -1, offset + start});
  }

  void encode_text(std::string_view text, bool at_origin, std::vector<int64_t>& ids) const {
    std::vector<Piece> pieces{{std::string(text), at_origin}};
    if (pre_tokenizer) pre_tokenizer(pieces);
    for (const Piece& p : pieces) bpe.encode_word(p.text, ids);
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const {
    const size_t bad = detail::find_invalid_utf8(text);
    FERRY_CHECK(bad == std::string_view::npos, "the text is not valid UTF-8: byte ", bad, " (0x", std::hex,
                static_cast<int>(static_cast<unsigned char>(text[bad])), std::dec,
                ") does not start or continue a character; tokenizers take UTF-8 text (Python str)");
    std::vector<int64_t> ids;
    std::vector<Segment> raw;
    split_added(text, 0, false, raw);
    for (const Segment& s : raw) {
      if (s.id >= 0) {
        ids.push_back(s.id);
        continue;
      }
      const std::string normalized = normalizer ? normalizer(std::string(s.text)) : std::string(s.text);
      std::vector<Segment> parts;
      split_added(normalized, s.offset, true, parts);
      for (const Segment& p : parts) {
        if (p.id >= 0) ids.push_back(p.id);
        else encode_text(p.text, s.offset == 0 && p.text.data() == normalized.data(), ids);
      }
    }
    if (add_special_tokens && post_processor) post_processor(ids);
    return ids;
  }

  // ---- decoding ----
  // As the library: every token (added ones too, unless skipped) goes through the decoder together;
  // without a decoder the tokens are joined with spaces.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int64_t id : ids) {
      if (auto a = added_by_id.find(id); a != added_by_id.end()) {
        // A "normalized" added token stands for its normalized content here, as in the library, which
        // also tells special ones by that text: "<s>" normalized to "▁<S>" is not skipped. The supported
        // families' special tokens are not normalized, or their normaliser leaves them as they are.
        const AddedToken& t = added[a->second];
        auto same = added_by_content.find(t.pattern);
        const bool special = same != added_by_content.end() && added[same->second].special;
        if (!(skip_special_tokens && special)) tokens.push_back(t.pattern);
        continue;
      }
      auto token = bpe.id_to_token(id);
      FERRY_CHECK(token.has_value(), "id ", id, " is not in the vocabulary of ", source, " (",
                  bpe.vocab_size(), " tokens, ", added.size(), " added tokens); was it made by another tokenizer?");
      tokens.push_back(std::move(*token));
    }
    std::string result;
    if (decoder) {
      decoder(tokens);
      for (const std::string& t : tokens) result += t;
    } else {
      for (size_t i = 0; i < tokens.size(); ++i) result += (i ? " " : "") + tokens[i];
    }
    return result;
  }
};

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  try {
    io::JsonDocument doc = io::parse_json(json_text, source);
    impl->load(doc.root());
  } catch (const Error& e) {
    throw e.in("load_tokenizer");
  }
  return Tokenizer(std::move(impl));
}

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

std::string join(const std::string& dir, const char* file) {
  return dir + (dir.empty() || dir.back() == '/' ? "" : "/") + file;
}

}  // namespace

Tokenizer Tokenizer::from_file(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->source = path;
  try {
    if (ends_with(path, ".model")) {
      // A SentencePiece model, with the tokenizer_config.json beside it when there is one.
      const size_t slash = path.rfind('/');
      const std::string config = join(slash == std::string::npos ? "." : path.substr(0, slash + 1), "tokenizer_config.json");
      impl->sentencepiece = detail::SentencePieceModel::load(path, exists(config) ? config : "");
    } else {
      io::JsonDocument doc = io::read_json_file(path);
      impl->load(doc.root());
    }
  } catch (const Error& e) {
    throw e.in("load_tokenizer");
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_model_dir(const std::string& dir) {
  const std::string json = join(dir, "tokenizer.json"), model = join(dir, "tokenizer.model");
  if (exists(json)) return from_file(json);
  if (exists(model)) return from_file(model);
  FERRY_FAIL(dir, " has no tokenizer.json and no tokenizer.model (SentencePiece); pass a model folder as the Hub has "
             "it, or the tokenizer file itself");
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->encode(text, add_special_tokens);
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->decode(ids, skip_special_tokens);
  return impl_->decode(ids, skip_special_tokens);
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->token_to_id(token);
  if (auto a = impl_->added_by_content.find(std::string(token)); a != impl_->added_by_content.end())
    return impl_->added[a->second].id;
  return impl_->bpe.token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->id_to_token(id);
  if (auto a = impl_->added_by_id.find(id); a != impl_->added_by_id.end()) return impl_->added[a->second].pattern;
  return impl_->bpe.id_to_token(id);
}

bool Tokenizer::is_special(int64_t id) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->is_special(id);
  auto a = impl_->added_by_id.find(id);
  return a != impl_->added_by_id.end() && impl_->added[a->second].special;
}

size_t Tokenizer::vocab_size() const {
  if (impl_->sentencepiece) return impl_->sentencepiece->vocab_size();
  size_t n = impl_->bpe.vocab_size();
  for (const AddedToken& t : impl_->added)
    if (!impl_->bpe.id_to_token(t.id)) ++n;
  return n;
}

const std::string& Tokenizer::source() const { return impl_->source; }

}  // namespace ferry::tokenizers
