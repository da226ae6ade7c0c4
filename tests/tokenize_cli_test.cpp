// `ferry tokenize`: text to ids and pieces, --json, --ids, --decode, and its errors, through the built
// program (it runs in `ferry` itself, without LibTorch).

#include "cli_runner.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

namespace {

using ferry::test::run_ferry;
using ferry_test::has;

class TokenizeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(FERRY_CLI_PATH).empty()) GTEST_SKIP() << "the ferry CLI is not built";
  }
  static std::string fixture(const std::string& family) {
    return "'" + std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/" + family + ".tokenizer.json'";
  }
};

TEST_F(TokenizeCliTest, JsonMatchesTheReferenceIds) {
  std::ifstream in(std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/qwen2.reference.json");
  const auto ref = nlohmann::json::parse(in);
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    if (text.empty() || text.find('\'') != std::string::npos) continue;  // (shell quoting)
    const auto r = run_ferry("tokenize " + fixture("qwen2") + " --json --text '" + text + "'");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto out = nlohmann::json::parse(r.output);
    EXPECT_EQ(out["ids"], c["ids"]) << text;
    EXPECT_EQ(out["tokens"], c["tokens"]) << text;
    std::string joined;
    for (const auto& p : out["pieces"]) joined += p.get<std::string>();
    EXPECT_EQ(joined, c["decoded_with_special"].get<std::string>()) << text;
  }
}

TEST_F(TokenizeCliTest, TableShowsIdsPiecesAndSpecialTokens) {
  const auto r = run_ferry("tokenize " + fixture("llama2") + " --text 'Hi 😀'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(has(r.output, "       1 -> '<s>'  (special)")) << r.output;
  EXPECT_TRUE(has(r.output, "-> ''  (<0xF0>)")) << r.output;     // a byte of the emoji...
  EXPECT_TRUE(has(r.output, "-> '😀'  (<0x80>)")) << r.output;  // ...whose last byte carries it
  EXPECT_TRUE(has(r.output, "9 tokens")) << r.output;
  const auto plain = run_ferry("tokenize " + fixture("llama2") + " --ids --no-add-special --text 'Hi'");
  EXPECT_EQ(plain.status, 0);
  EXPECT_EQ(plain.output.find("1 "), std::string::npos) << plain.output;  // no BOS
}

TEST_F(TokenizeCliTest, DecodeAndModelFolders) {
  ferry_test::TempDir dir("tokenize_cli");
  std::filesystem::copy_file(std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/llama3.tokenizer.json",
                             dir.file("tokenizer.json"));
  const auto ids = run_ferry("tokenize '" + dir.str() + "' --ids --text 'Hello world'");
  ASSERT_EQ(ids.status, 0) << ids.output;
  const std::string id_text = ids.output.substr(0, ids.output.find('\n'));
  const auto text = run_ferry("tokenize '" + dir.str() + "' --decode '" + id_text + "'");
  EXPECT_EQ(text.status, 0);
  EXPECT_EQ(text.output, "Hello world\n");
  const auto special = run_ferry("tokenize '" + dir.str() + "' --keep-special --json --decode '" + id_text + "'");
  EXPECT_EQ(nlohmann::json::parse(special.output)["text"], "<|begin_of_text|>Hello world");
}

TEST_F(TokenizeCliTest, ErrorsSayWhatToDo) {
  ferry_test::TempDir dir("tokenize_cli");
  auto r = run_ferry("tokenize '" + dir.str() + "' --text hi");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(has(r.output, "has no tokenizer.json")) << r.output;
  r = run_ferry("tokenize " + fixture("gpt2") + " --decode '1 x'");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(has(r.output, "'x' is not a non-negative integer")) << r.output;
  r = run_ferry("tokenize " + fixture("gpt2"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(has(r.output, "give exactly one of --text")) << r.output;
  r = run_ferry("tokenize " + fixture("gpt2") + " --text \"$(printf 'a\\377b')\"");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(has(r.output, "not valid UTF-8: byte 1")) << r.output;
}

}  // namespace
