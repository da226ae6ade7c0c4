// Tokenizers (tokenizers/include/ferry/tokenizers): every family's tokenizer.json, made by the
// `tokenizers` library (scripts/make_tokenizer_fixtures.py), against that library's own encodings and
// decodings of the hard-case corpus; streaming decode; refusals and damaged files.

#include "ferry/tokenizers/tokenizer.h"
#include "tokenizer_test_util.h"

#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

using ferry::tokenizers::StreamDecoder;
using ferry::tokenizers::Tokenizer;

std::string dir() { return std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/"; }

// The families (gpt2, llama3, qwen2, llama2, mistral) and the variants that exercise the other
// options of their pieces (v_*): every <name>.reference.json beside its <name>.tokenizer.json.
std::vector<std::string> families() { return ferry_test::reference_names(dir()); }

using ferry_test::ids_of;
using ferry_test::read_text;
using ferry_test::show;

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

class TokenizerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerReference, EncodesAndDecodesExactlyAsTheTokenizersLibrary) {
  const std::string family = GetParam();
  const Tokenizer tok = Tokenizer::from_file(dir() + family + ".tokenizer.json");
  const ferry::io::JsonDocument ref = ferry::io::read_json_file(dir() + family + ".reference.json");
  EXPECT_EQ(tok.vocab_size(), static_cast<size_t>(*ref.root().at("vocab_size", "ref").as_int64()));
  int cases = 0, mismatches = 0;
  for (ferry::io::JsonValue c : ref.root().at("cases", "ref").elements()) {
    ++cases;
    const std::string text(c.at("text", "case").string("text"));
    const std::vector<int64_t> ids = ids_of(c.at("ids", "case"));
    const std::vector<int64_t> got = tok.encode(text);
    const std::vector<int64_t> got_plain = tok.encode(text, /*add_special_tokens=*/false);
    const std::string decoded = tok.decode(ids), with_special = tok.decode(ids, /*skip_special_tokens=*/false);
    const bool ok = got == ids && got_plain == ids_of(c.at("ids_no_special", "case")) &&
                    decoded == c.at("decoded", "case").string("decoded") &&
                    with_special == c.at("decoded_with_special", "case").string("decoded_with_special");
    EXPECT_EQ(got, ids) << family << ": '" << text << "'\n  ferry:     " << show(got) << "\n  reference: " << show(ids);
    EXPECT_EQ(got_plain, ids_of(c.at("ids_no_special", "case"))) << family << " without special tokens: '" << text << "'";
    EXPECT_EQ(decoded, c.at("decoded", "case").string("decoded")) << family << ": decode of '" << text << "'";
    EXPECT_EQ(with_special, c.at("decoded_with_special", "case").string("")) << family << ": decode with special of '"
                                                                             << text << "'";
    size_t k = 0;
    for (ferry::io::JsonValue t : c.at("tokens", "case").elements()) {
      ASSERT_LT(k, ids.size());
      // (The library's Encoding shows a special token that the template added by its content, "<s>", and
      // one matched in normalized text by what it matched, "▁<S>", which is what id_to_token gives.)
      if (tok.is_special(ids[k]) && tok.id_to_token(ids[k]) != t.string("token")) {
        EXPECT_EQ(tok.token_to_id(t.string("token")), ids[k]) << family << " id " << ids[k];
        ++k;
        continue;
      }
      EXPECT_EQ(tok.id_to_token(ids[k]).value_or("<none>"), t.string("token")) << family << " id " << ids[k];
      if (!tok.is_special(ids[k])) EXPECT_EQ(tok.token_to_id(t.string("token")), ids[k]) << family << " id " << ids[k];
      ++k;
    }
    mismatches += !ok;
  }
  EXPECT_GE(cases, 30) << family;
  EXPECT_EQ(mismatches, 0) << family << ": " << mismatches << " of " << cases << " cases differ";
}

TEST_P(TokenizerReference, StreamingDecodeGivesTheSameTextInWholeCharacters) {
  const std::string family = GetParam();
  const Tokenizer tok = Tokenizer::from_file(dir() + family + ".tokenizer.json");
  const ferry::io::JsonDocument ref = ferry::io::read_json_file(dir() + family + ".reference.json");
  StreamDecoder stream(tok);
  for (ferry::io::JsonValue c : ref.root().at("cases", "ref").elements()) {
    const std::vector<int64_t> ids = ids_of(c.at("ids", "case"));
    for (bool skip : {true, false}) {
      StreamDecoder s(tok, skip);
      std::string all;
      for (int64_t id : ids) {
        const std::string chunk = s.push(id);
        EXPECT_TRUE(valid_utf8(chunk)) << family << ": a chunk of '" << c.at("text", "").string("") << "' is cut";
        EXPECT_EQ(chunk.find("\xEF\xBF\xBD"), std::string::npos) << family << ": a U+FFFD was emitted mid-stream";
        all += chunk;
      }
      all += s.finish();
      EXPECT_EQ(all, tok.decode(ids, skip)) << family << ": '" << c.at("text", "").string("") << "'";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerReference, ::testing::ValuesIn(families()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(Tokenizer, EveryFamilyHasReferences) {
  const auto names = families();
  for (const char* family : {"gpt2", "llama3", "qwen2", "llama2", "mistral"})
    EXPECT_NE(std::find(names.begin(), names.end(), family), names.end()) << family;
}

TEST(Tokenizer, ByteFallbackCharactersAreHeldBackUntilComplete) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "llama2.tokenizer.json");
  const std::vector<int64_t> ids = tok.encode("😀", false);  // not in the vocabulary: four byte tokens
  ASSERT_GE(ids.size(), 4u);
  StreamDecoder stream(tok);
  std::vector<std::string> chunks;
  for (int64_t id : ids) chunks.push_back(stream.push(id));
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_EQ(chunks[i], "") << i;
  EXPECT_EQ(chunks.back(), "😀");
  EXPECT_EQ(stream.finish(), "");
  // An incomplete character at the end comes out as decode gives it.
  stream.push(ids[ids.size() - 4]);
  EXPECT_EQ(stream.finish(), tok.decode({ids[ids.size() - 4]}));
}

TEST(Tokenizer, SpecialTokensAreNeverSplitAndSkippedOnDecode) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "qwen2.tokenizer.json");
  const int64_t start = *tok.token_to_id("<|im_start|>"), end = *tok.token_to_id("<|im_end|>");
  EXPECT_TRUE(tok.is_special(start));
  EXPECT_FALSE(tok.is_special(*tok.token_to_id("<tool_call>")));  // added, not special
  const auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(ids.front(), start);
  EXPECT_EQ(ids.back(), end);
  EXPECT_EQ(tok.decode(ids), "user\nhi");
  EXPECT_EQ(tok.decode(ids, false), "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(tok.decode({*tok.token_to_id("<tool_call>")}), "<tool_call>");
}

TEST(Tokenizer, TemplateAddsBosOnlyWithSpecialTokens) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "llama3.tokenizer.json");
  const int64_t bos = *tok.token_to_id("<|begin_of_text|>");
  EXPECT_EQ(tok.encode("hi").front(), bos);
  EXPECT_NE(tok.encode("hi", false).front(), bos);
  EXPECT_EQ(tok.encode(""), std::vector<int64_t>{bos});
}

TEST(Tokenizer, InvalidUtf8InputIsAnErrorWithTheOffset) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "gpt2.tokenizer.json");
  try {
    tok.encode("abc\xff" "def");
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_TRUE(ferry_test::has(e.what(), "not valid UTF-8: byte 3 (0xff)")) << e.what();
  }
  EXPECT_THROW(tok.encode("\xe4\xb8"), ferry::Error);       // cut short
  EXPECT_THROW(tok.encode("\xed\xa0\x80"), ferry::Error);   // a UTF-16 surrogate
  EXPECT_THROW(tok.encode("\xc0\xaf"), ferry::Error);       // overlong
}

TEST(Tokenizer, DecodeRefusesIdsBeyondTheVocabulary) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "gpt2.tokenizer.json");
  try {
    tok.decode({1, 99999});
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_TRUE(ferry_test::has(e.what(), "id 99999 is not in the vocabulary of")) << e.what();
  }
}

// ---- refusals: a piece ferry does not support is named, with the file ------------------------

std::string with_field(const std::string& json, const std::string& field, const std::string& value) {
  const std::string key = "\"" + field + "\":";
  const size_t at = json.find(key);
  EXPECT_NE(at, std::string::npos) << field;
  // Replace the value that follows (null or an object) by `value`.
  size_t start = at + key.size(), end = start;
  if (json.compare(start, 4, "null") == 0) end = start + 4;
  else {
    int depth = 0;
    bool in_string = false;
    for (end = start; end < json.size(); ++end) {
      const char ch = json[end];
      if (in_string) {
        if (ch == '\\') ++end;
        else if (ch == '"') in_string = false;
      } else if (ch == '"') in_string = true;
      else if (ch == '{' || ch == '[') ++depth;
      else if ((ch == '}' || ch == ']') && --depth == 0) {
        ++end;
        break;
      }
    }
  }
  return json.substr(0, start) + value + json.substr(end);
}

std::string load_error(const std::string& json) {
  try {
    Tokenizer::from_json(json, "my/tokenizer.json");
  } catch (const ferry::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, UnsupportedPiecesAreRefusedByName) {
  const std::string gpt2 = read_text(dir() + "gpt2.tokenizer.json");
  const std::string llama2 = read_text(dir() + "llama2.tokenizer.json");
  struct Case {
    std::string json, expected;
  } cases[] = {
      {with_field(gpt2, "normalizer", R"({"type":"BertNormalizer","lowercase":true})"),
       "my/tokenizer.json: normalizer 'BertNormalizer' is not supported; supported: Sequence, Prepend, Replace, NFC"},
      {with_field(gpt2, "pre_tokenizer", R"({"type":"Whitespace"})"),
       "my/tokenizer.json: pre_tokenizer 'Whitespace' is not supported; supported: Sequence, ByteLevel, Split, Metaspace"},
      {with_field(gpt2, "post_processor", R"({"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0]})"),
       "my/tokenizer.json: post_processor 'RobertaProcessing' is not supported; supported: TemplateProcessing"},
      {with_field(gpt2, "decoder", R"({"type":"WordPiece","prefix":"##"})"),
       "my/tokenizer.json: decoder 'WordPiece' is not supported; supported: Sequence, ByteLevel"},
      {with_field(llama2, "normalizer",
                  R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"x"},{"type":"Lowercase"}]})"),
       "normalizer 'Lowercase' is not supported"},
      {with_field(gpt2, "model", R"({"type":"Unigram","vocab":[["a",0.0]]})"),
       "my/tokenizer.json: model 'Unigram' is not supported; supported: BPE"},
      {with_field(gpt2, "continuing_subword_prefix", R"("##")"),
       "the BPE model sets continuing_subword_prefix ('##'), which ferry does not support"},
      {with_field(gpt2, "truncation", R"({"max_length":8})"), "\"truncation\" is set"},
  };
  for (const Case& c : cases) {
    const std::string error = load_error(c.json);
    EXPECT_TRUE(ferry_test::has(error, c.expected)) << "expected '" << c.expected << "' in:\n  " << error;
    EXPECT_TRUE(ferry_test::has(error, "[load_tokenizer]")) << error;
  }
  std::string lstrip = gpt2;
  const size_t at = lstrip.find("\"lstrip\":false");
  ASSERT_NE(at, std::string::npos);
  lstrip.replace(at, 14, "\"lstrip\":true");
  EXPECT_TRUE(ferry_test::has(load_error(lstrip), "added token '<|endoftext|>' sets lstrip, which ferry does not support"))
      << load_error(lstrip);
}

TEST(Tokenizer, DamagedFilesGiveClearErrors) {
  const std::string gpt2 = read_text(dir() + "gpt2.tokenizer.json");
  EXPECT_TRUE(ferry_test::has(load_error(gpt2.substr(0, gpt2.size() / 2)), "my/tokenizer.json is not valid JSON"))
      << load_error(gpt2.substr(0, gpt2.size() / 2));
  EXPECT_TRUE(ferry_test::has(load_error("[1, 2]"), "must hold a JSON object (a tokenizer.json)"));
  EXPECT_TRUE(ferry_test::has(load_error("{\"added_tokens\": []}"), "has no \"model\""));
  std::string bad_merge = gpt2;
  const size_t m = bad_merge.find("\"h e\"");
  ASSERT_NE(m, std::string::npos);
  bad_merge.replace(m, 5, "\"h \\u4e00\"");
  EXPECT_TRUE(ferry_test::has(load_error(bad_merge), "names a token that is not in the vocabulary; the file is damaged"))
      << load_error(bad_merge);
  EXPECT_TRUE(ferry_test::has(load_error(with_field(gpt2, "pre_tokenizer",
                                                    R"({"type":"Split","pattern":{"Regex":"(unclosed"},"behavior":"Isolated"})")),
                              "does not compile with PCRE2"));
  ferry_test::TempDir tmp("tokenizer");
  try {
    Tokenizer::from_model_dir(tmp.str());
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_TRUE(ferry_test::has(e.what(), "has no tokenizer.json")) << e.what();
  }
}

}  // namespace
