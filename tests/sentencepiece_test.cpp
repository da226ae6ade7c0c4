// Tokenizers from a tokenizer.model (SentencePiece, through libsentencepiece): the models made by
// scripts/make_sentencepiece_fixtures.py (a Llama-2-style BPE with byte fallback, a T5-style unigram)
// against the `sentencepiece` package's encodings and decodings under the slow tokenizers' rules, with
// and without a tokenizer_config.json beside them; the fallback of from_model_dir; streaming decode;
// damaged files and refused settings.

#include "ferry/tokenizers/tokenizer.h"

#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "test_util.h"
#include "tokenizer_test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

using ferry::tokenizers::StreamDecoder;
using ferry::tokenizers::Tokenizer;

std::string dir() { return std::string(FERRY_TEST_DATA_DIR) + "/sentencepiece/"; }

// Every <name>.reference.json of tests/data/sentencepiece.
std::vector<std::string> references() { return ferry_test::reference_names(dir()); }

using ferry_test::ids_of;
using ferry_test::read_text;
using ferry_test::show;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

/// The tokenizer a reference is checked against: its model alone (from_file), or, when the reference
/// has a "tokenizer_config", a model folder with tokenizer.model and that tokenizer_config.json
/// (from_model_dir, which falls back to tokenizer.model without a tokenizer.json).
Tokenizer load(const ferry::io::JsonValue& ref, const ferry_test::TempDir& tmp) {
  const std::string model = dir() + std::string(ref.at("model", "ref").string("model"));
  auto config = ref.find("tokenizer_config");
  if (!config) return Tokenizer::from_file(model);
  std::filesystem::copy_file(model, tmp / "tokenizer.model");
  write_text(tmp / "tokenizer_config.json", config->dump(std::string::npos));
  return Tokenizer::from_model_dir(tmp.str());
}

// A sanitizer build cannot open libsentencepiece beside LibTorch's protobuf (Note
// [sentencepiece in its own scope]): it says so, and these tests are skipped there.
std::string sentencepiece_unavailable() {
  try {
    Tokenizer::from_file(dir() + "llama_bpe.model");
  } catch (const ferry::Error& e) {
    const std::string what = e.what();
    if (what.find("not available in a sanitizer build") != std::string::npos) return what;
  }
  return "";
}

#define SKIP_WITHOUT_SENTENCEPIECE()                                       \
  if (const std::string why = sentencepiece_unavailable(); !why.empty()) { \
    GTEST_SKIP() << why;                                                   \
  }

class SentencePieceReference : public ::testing::TestWithParam<std::string> {};

TEST_P(SentencePieceReference, EncodesAndDecodesExactlyAsTheReference) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const std::string name = GetParam();
  const ferry::io::JsonDocument ref = ferry::io::read_json_file(dir() + name + ".reference.json");
  ferry_test::TempDir tmp("sentencepiece");
  const Tokenizer tok = load(ref.root(), tmp);
  EXPECT_EQ(tok.vocab_size(), static_cast<size_t>(*ref.root().at("vocab_size", "ref").as_int64()));
  int cases = 0, mismatches = 0;
  for (ferry::io::JsonValue c : ref.root().at("cases", "ref").elements()) {
    ++cases;
    const std::string text(c.at("text", "case").string("text"));
    const std::vector<int64_t> ids = ids_of(c.at("ids", "case")), plain = ids_of(c.at("ids_no_special", "case"));
    const std::vector<int64_t> got = tok.encode(text), got_plain = tok.encode(text, /*add_special_tokens=*/false);
    const std::string decoded = tok.decode(ids), with_special = tok.decode(ids, /*skip_special_tokens=*/false);
    bool ok = got == ids && got_plain == plain && decoded == c.at("decoded", "case").string("decoded") &&
              with_special == c.at("decoded_with_special", "case").string("decoded_with_special");
    EXPECT_EQ(got, ids) << name << ": '" << text << "'\n  ferry:     " << show(got) << "\n  reference: " << show(ids);
    EXPECT_EQ(got_plain, plain) << name << " without special tokens: '" << text << "'";
    EXPECT_EQ(decoded, c.at("decoded", "case").string("")) << name << ": decode of '" << text << "'";
    EXPECT_EQ(with_special, c.at("decoded_with_special", "case").string("")) << name << ": decode with special of '"
                                                                             << text << "'";
    size_t k = 0;
    for (ferry::io::JsonValue t : c.at("tokens", "case").elements()) {
      ASSERT_LT(k, ids.size());
      const std::string token(t.string("token"));
      ok = ok && tok.id_to_token(ids[k]) == token && tok.token_to_id(token) == ids[k];
      EXPECT_EQ(tok.id_to_token(ids[k]).value_or("<none>"), token) << name << " id " << ids[k];
      EXPECT_EQ(tok.token_to_id(token), ids[k]) << name << " token '" << token << "'";
      ++k;
    }
    mismatches += !ok;
  }
  EXPECT_GE(cases, 35) << name;
  EXPECT_EQ(mismatches, 0) << name << ": " << mismatches << " of " << cases << " cases differ";
}

TEST_P(SentencePieceReference, StreamingDecodeGivesTheSameTextInWholeCharacters) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const std::string name = GetParam();
  const ferry::io::JsonDocument ref = ferry::io::read_json_file(dir() + name + ".reference.json");
  ferry_test::TempDir tmp("sentencepiece");
  const Tokenizer tok = load(ref.root(), tmp);
  for (ferry::io::JsonValue c : ref.root().at("cases", "ref").elements()) {
    const std::vector<int64_t> ids = ids_of(c.at("ids", "case"));
    for (bool skip : {true, false}) {
      StreamDecoder s(tok, skip);
      std::string all;
      for (int64_t id : ids) {
        const std::string chunk = s.push(id);
        EXPECT_EQ(chunk.find("\xEF\xBF\xBD"), std::string::npos) << name << ": a U+FFFD was emitted mid-stream";
        all += chunk;
      }
      all += s.finish();
      EXPECT_EQ(all, tok.decode(ids, skip)) << name << ": '" << c.at("text", "").string("") << "'";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SentencePieceReference, ::testing::ValuesIn(references()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(SentencePiece, EveryModelHasReferences) {
  const auto names = references();
  for (const char* name : {"llama_bpe", "llama_bpe_config", "t5_unigram"})
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
}

TEST(SentencePiece, SpecialTokensAndBosAsLlamaTokenizer) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const Tokenizer tok = Tokenizer::from_file(dir() + "llama_bpe.model");
  EXPECT_EQ(tok.source(), dir() + "llama_bpe.model");
  EXPECT_EQ(tok.token_to_id("<unk>"), 0);
  EXPECT_EQ(tok.token_to_id("<s>"), 1);
  EXPECT_EQ(tok.token_to_id("</s>"), 2);
  for (int64_t id : {0, 1, 2}) EXPECT_TRUE(tok.is_special(id)) << id;
  EXPECT_FALSE(tok.is_special(*tok.token_to_id("<0x0A>")));  // a byte piece is an ordinary piece
  EXPECT_FALSE(tok.token_to_id("no such piece").has_value());  // not the unknown id
  EXPECT_FALSE(tok.id_to_token(800).has_value());
  EXPECT_EQ(tok.encode("").size(), 1u);  // BOS only
  const std::vector<int64_t> hi = tok.encode("hi");
  EXPECT_EQ(hi.front(), 1);
  EXPECT_NE(hi.back(), 2);  // no EOS without add_eos_token
  EXPECT_EQ(tok.encode("hi", false), std::vector<int64_t>(hi.begin() + 1, hi.end()));
  // Legacy mode: each stretch after a special token gets SentencePiece's dummy prefix ("▁b"), so
  // without the special tokens the text has a space there.
  EXPECT_EQ(tok.decode(tok.encode("<s>a</s>b", false)), "a b");
  EXPECT_EQ(tok.decode(tok.encode("<s>a</s>b", false), false), "<s>a</s>b");
  const Tokenizer t5 = Tokenizer::from_file(dir() + "t5_unigram.model");
  EXPECT_EQ(t5.encode("hi"), t5.encode("hi", false));  // no BOS piece: nothing added
  EXPECT_TRUE(t5.is_special(*t5.token_to_id("<ctl>")));  // a control piece
  EXPECT_FALSE(t5.is_special(*t5.token_to_id("<sep>")));  // a user-defined piece, matched by SentencePiece
}

TEST(SentencePiece, ModelDirFallsBackToTokenizerModel) {
  SKIP_WITHOUT_SENTENCEPIECE();
  ferry_test::TempDir tmp("sentencepiece_dir");
  try {
    Tokenizer::from_model_dir(tmp.str());
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_TRUE(ferry_test::has(e.what(), "has no tokenizer.json and no tokenizer.model")) << e.what();
  }
  std::filesystem::copy_file(dir() + "llama_bpe.model", tmp / "tokenizer.model");
  const Tokenizer tok = Tokenizer::from_model_dir(tmp.str());
  EXPECT_EQ(tok.source(), tmp / "tokenizer.model");
  EXPECT_EQ(tok.encode("Hello world"), Tokenizer::from_file(dir() + "llama_bpe.model").encode("Hello world"));
  // A tokenizer.json wins when both are there.
  std::filesystem::copy_file(std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/llama2.tokenizer.json",
                             tmp / "tokenizer.json");
  EXPECT_EQ(Tokenizer::from_model_dir(tmp.str()).source(), tmp / "tokenizer.json");
}

TEST(SentencePiece, ConfigAddsTokensBeyondTheModel) {
  SKIP_WITHOUT_SENTENCEPIECE();
  ferry_test::TempDir tmp("sentencepiece_config");
  std::filesystem::copy_file(dir() + "llama_bpe.model", tmp / "tokenizer.model");
  write_text(tmp / "tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true,
    "added_tokens_decoder": {"800": {"content": "<|im_end|>", "special": true}, "801": {"content": "<x>"}}})");
  const Tokenizer tok = Tokenizer::from_file(tmp / "tokenizer.model");  // reads the config beside it too
  EXPECT_EQ(tok.vocab_size(), 802u);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 800);
  EXPECT_EQ(tok.id_to_token(801), "<x>");
  EXPECT_TRUE(tok.is_special(800));
  EXPECT_FALSE(tok.is_special(801));
  const auto ids = tok.encode("a<x>b<|im_end|>");
  EXPECT_EQ(ids.back(), 2);  // EOS, and no BOS
  EXPECT_NE(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 800), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 801), 1);
  EXPECT_EQ(tok.decode(ids), "a<x>b");
  EXPECT_EQ(tok.decode(ids, false), "a<x>b<|im_end|></s>");
}

std::string load_error(const std::string& model_path) {
  try {
    Tokenizer::from_file(model_path);
  } catch (const ferry::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(SentencePiece, DamagedFilesGiveClearErrors) {
  SKIP_WITHOUT_SENTENCEPIECE();
  ferry_test::TempDir tmp("sentencepiece_damaged");
  const std::string model = read_text(dir() + "llama_bpe.model");
  const std::string cut = tmp / "cut.model", junk = tmp / "junk.model", empty = tmp / "empty.model";
  write_text(cut, model.substr(0, model.size() / 2));
  write_text(junk, "{\"this is\": \"a tokenizer.json, not a tokenizer.model\"}");
  write_text(empty, "");
  for (const std::string& path : {cut, junk, empty}) {
    const std::string error = load_error(path);
    EXPECT_TRUE(ferry_test::has(error, path + " is not a SentencePiece model (tokenizer.model) or it is damaged"))
        << error;
    EXPECT_TRUE(ferry_test::has(error, "[load_tokenizer]")) << error;
  }
  EXPECT_TRUE(ferry_test::has(load_error(tmp / "missing.model"), "cannot open " + (tmp / "missing.model")))
      << load_error(tmp / "missing.model");
  const Tokenizer tok = Tokenizer::from_file(dir() + "llama_bpe.model");
  try {
    tok.decode({1, 5000});
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_TRUE(ferry_test::has(e.what(), "id 5000 is not in the vocabulary of")) << e.what();
  }
  EXPECT_THROW(tok.encode("abc\xff"), ferry::Error);
}

TEST(SentencePiece, UnsupportedConfigSettingsAreRefusedByName) {
  SKIP_WITHOUT_SENTENCEPIECE();
  struct Case {
    std::string config, expected;
  } cases[] = {
      {R"({"legacy": false})", "\"legacy\": false (no SentencePiece dummy prefix after special tokens) is not supported"},
      {R"({"added_tokens_decoder": {"900": {"content": "<y>", "lstrip": true}}})",
       "added token '<y>' sets lstrip, which ferry does not support"},
      {R"({"added_tokens_decoder": {"5": {"content": "<y>"}}})", "token '<y>' has id 5, which"},
      {R"({"bos_token": "<nope>"})", "bos_token '<nope>' is neither a piece of"},
      {R"({"add_bos_token": "yes"})", "\"add_bos_token\" must be true or false"},
      {R"([1])", "must hold a JSON object (a tokenizer_config.json)"},
  };
  for (const Case& c : cases) {
    ferry_test::TempDir tmp("sentencepiece_refused");
    std::filesystem::copy_file(dir() + "llama_bpe.model", tmp / "tokenizer.model");
    write_text(tmp / "tokenizer_config.json", c.config);
    std::string error = "(no error)";
    try {
      Tokenizer::from_model_dir(tmp.str());
    } catch (const ferry::Error& e) {
      error = e.what();
    }
    EXPECT_TRUE(ferry_test::has(error, c.expected)) << "expected '" << c.expected << "' in:\n  " << error;
    EXPECT_TRUE(ferry_test::has(error, tmp / "tokenizer_config.json")) << error;
  }
}

}  // namespace
