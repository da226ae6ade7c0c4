#include "ferry/core/error.h"
#include "ferry/models/config.h"
#include "models_test_util.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

using namespace ferry::models;

namespace {

std::string llama_json(const std::string& extra = "") {
  return R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000, "hidden_size": 128,
    "intermediate_size": 344, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2)" +
         extra + "}";
}

using ferry::models::testing::error_of;

}  // namespace

TEST(ModelsConfig, ReadsTheLlamaFixture) {
  ModelConfig c = load_config(std::string(FERRY_TEST_DATA_DIR) + "/tiny_llama");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], 2);
}

TEST(ModelsConfig, ReadsTheQwen2Fixture) {
  ModelConfig c = load_config(std::string(FERRY_TEST_DATA_DIR) + "/tiny_qwen2");
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.dtype, c10::kBFloat16);
  EXPECT_FALSE(c.sliding_window.has_value());
}

TEST(ModelsConfig, LegacyRopeThetaAndRopeScaling) {
  ModelConfig c = parse_config(llama_json(R"(, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.head_dim, 32);  // hidden / heads when absent
}

TEST(ModelsConfig, RoundTripsThroughConfigToJson) {
  ModelConfig c = parse_config(llama_json(R"(, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
      "tie_word_embeddings": true, "eos_token_id": [2, 7])"));
  ModelConfig d = parse_config(config_to_json(c));
  EXPECT_EQ(d.rope.type, "llama3");
  EXPECT_EQ(d.rope.original_max_position_embeddings, 64);
  EXPECT_TRUE(d.tie_word_embeddings);
  EXPECT_EQ(d.eos_token_ids, (std::vector<int64_t>{2, 7}));
}

TEST(ModelsConfig, MistralSlidingWindow) {
  std::string j = R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 1, "sliding_window": 5, "head_dim": null})";
  ModelConfig c = parse_config(j);
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_EQ(*c.sliding_window, 5);
  EXPECT_EQ(c.sliding_layers, (std::vector<bool>{true, true}));
  EXPECT_EQ(c.head_dim, 16);
}

TEST(ModelsConfig, Gpt2Names) {
  ModelConfig c = parse_config(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50,
    "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_inner": null})");
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, "gelu_new");
}

TEST(ModelsConfig, RefusesWhatItCannotRun) {
  EXPECT_NE(error_of([] { parse_config(R"({"architectures": ["BertModel"], "model_type": "bert"})"); })
                .find("architecture 'BertModel' is not supported"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_config(llama_json(R"(, "rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn"})")); })
                .find("rope type 'yarn' is not supported"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_config(llama_json(R"(, "hidden_act": "gelu")")); }).find("hidden_act 'gelu'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_config(llama_json(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})")); })
                .find("needs 'low_freq_factor'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_config(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})"); })
                .find("has no 'hidden_size'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_config("{not json"); }).find("is not valid JSON"), std::string::npos);
  std::string three_kv_heads = llama_json();
  const std::string two = "\"num_key_value_heads\": 2";
  three_kv_heads.replace(three_kv_heads.find(two), two.size(), "\"num_key_value_heads\": 3");
  EXPECT_NE(error_of([&] { parse_config(three_kv_heads); }).find("not a multiple"), std::string::npos);
  // A key given twice is ambiguous (Python keeps the last one silently): refused, naming the key.
  EXPECT_NE(error_of([] { parse_config(llama_json(R"(, "num_key_value_heads": 3)")); })
                .find("names 'num_key_value_heads' twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_config("/nonexistent/model"); }).find("does not exist"), std::string::npos);
  EXPECT_NE(error_of([] { load_config(FERRY_TEST_DATA_DIR); }).find("has no config.json"), std::string::npos);
}

// Issue 13: numbers that would cost before they could be checked (a billion layers hung; a
// 2-billion head_dim allocated 15.8 GB; 2^63-1 layers crashed in vector<bool>) are refused at once.
TEST(ModelsConfig, SizesBeyondAnyModelAreRefusedBeforeAnythingIsBuilt) {
  auto with = [](const std::string& key, const std::string& value) {
    std::string text = llama_json();
    const size_t at = text.find("\"" + key + "\"");
    if (at == std::string::npos) return text.substr(0, text.size() - 1) + ", \"" + key + "\": " + value + "}";
    const size_t colon = text.find(':', at), end = text.find_first_of(",}", colon);
    return text.substr(0, colon + 1) + " " + value + text.substr(end);
  };
  const auto start = std::chrono::steady_clock::now();
  EXPECT_NE(error_of([&] { parse_config(with("num_hidden_layers", "1000000000")); }).find("'num_hidden_layers' is 1000000000, beyond any model"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_config(with("num_hidden_layers", "9223372036854775807")); }).find("beyond any model"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_config(with("head_dim", "2000000000")); }).find("'head_dim' is 2000000000"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_config(with("vocab_size", "100000000000")); }).find("'vocab_size'"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_config(with("max_position_embeddings", "0")); }).find("'max_position_embeddings' must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_config(with("num_hidden_layers", "1e9")); }).find("must be an integer"), std::string::npos);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  EXPECT_NO_THROW(parse_config(with("num_hidden_layers", "80")));
}
