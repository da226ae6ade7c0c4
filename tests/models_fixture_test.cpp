// ferry's models against transformers' own outputs on the fixtures in tests/data (see FIXTURES.md).

#include "ferry/io/safetensors.h"
#include "ferry/models/causal_lm.h"
#include "ferry/models/generate.h"
#include "ferry/models/llama.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>

using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

void expect_matches_transformers(const std::string& name) {
  std::string dir = fixture(name);
  Reference ref = read_reference(dir);
  auto model = load_pretrained(dir, {at::kFloat});
  at::Tensor logits;
  {
    c10::NoGradGuard no_grad;
    logits = model->logits(ref.input_ids);
  }
  ASSERT_EQ(logits.sizes(), ref.logits.sizes());
  double diff = max_abs_diff(logits, ref.logits);
  std::cout << "[ " << name << " ] max abs logit diff vs transformers: " << diff << "\n";
  EXPECT_LT(diff, 1e-4);

  GenerationConfig g;
  g.max_new_tokens = ref.generated.size(1) - ref.input_ids.size(1);
  g.return_prompt_logits = true;
  GenerationOutput out = generate(*model, ref.input_ids, g);
  EXPECT_TRUE(at::equal(out.sequences, ref.generated)) << "ferry:\n" << out.sequences << "\ntransformers:\n" << ref.generated;
  EXPECT_LT(max_abs_diff(out.prompt_logits, ref.logits), 1e-4);
}

}  // namespace

TEST(ModelsFixture, TinyLlamaMatchesTransformers) { expect_matches_transformers("tiny_llama"); }

TEST(ModelsFixture, TinyQwen2MatchesTransformers) { expect_matches_transformers("tiny_qwen2"); }

// The prompt in chunks (GenerationConfig::prefill_chunk), each attending to the cache of the ones
// before: transformers' greedy tokens and prompt logits still, for every architecture's fixture.
TEST(ModelsFixture, PrefillInChunksMatchesTransformers) {
  for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"}) {
    const Reference ref = read_reference(fixture(name));
    auto model = load_pretrained(fixture(name), {at::kFloat});
    GenerationConfig g;
    g.max_new_tokens = ref.generated.size(1) - ref.input_ids.size(1);
    g.return_prompt_logits = true;
    for (int64_t chunk : {2, 5}) {
      g.prefill_chunk = chunk;
      const GenerationOutput out = generate(*model, ref.input_ids, g);
      EXPECT_TRUE(at::equal(out.sequences, ref.generated)) << name << ", chunks of " << chunk;
      EXPECT_LT(max_abs_diff(out.prompt_logits, ref.logits), 1e-4) << name << ", chunks of " << chunk;
    }
  }
  auto model = load_pretrained(fixture("tiny_llama"), {at::kFloat});
  GenerationConfig bad;
  bad.prefill_chunk = -1;
  const std::string message = error_of([&] { generate(*model, at::ones({1, 3}, at::kLong), bad); });
  EXPECT_NE(message.find("prefill_chunk must be >= 0 (0: the whole prompt in one forward), got -1"), std::string::npos)
      << message;
}

TEST(ModelsFixture, NamesAndClassesAreTransformers) {
  auto model = create_empty_model(fixture("tiny_llama"));
  EXPECT_EQ(model->class_name(), "LlamaForCausalLM");
  EXPECT_EQ(model->submodule("model").class_name(), "LlamaModel");
  EXPECT_EQ(model->submodule("model.layers.2").class_name(), "LlamaDecoderLayer");
  EXPECT_EQ(model->submodule("model.layers.2.self_attn").class_name(), "LlamaAttention");
  EXPECT_EQ(model->submodule("model.layers.2.mlp").class_name(), "LlamaMLP");
  EXPECT_EQ(model->submodule("model.layers.0.input_layernorm").class_name(), "LlamaRMSNorm");
  EXPECT_EQ(model->submodule("model.norm").class_name(), "LlamaRMSNorm");
  EXPECT_EQ(model->submodule("model.rotary_emb").class_name(), "LlamaRotaryEmbedding");
  EXPECT_EQ(model->submodule("lm_head").class_name(), "Linear");
  EXPECT_EQ(model->no_split_module_classes(), std::vector<std::string>{"LlamaDecoderLayer"});
  // Every name in the checkpoint's index is a model tensor, and vice versa.
  std::ifstream in(fixture("tiny_llama") + "/model.safetensors.index.json");
  std::string index((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto sd = model->state_dict();
  EXPECT_EQ(sd.size(), 3u * 9 + 3);
  for (const auto& [name, t] : sd) {
    EXPECT_NE(index.find("\"" + name + "\""), std::string::npos) << name;
    EXPECT_TRUE(t.is_meta()) << name;
  }
  // The rotary frequencies are a non-persistent CPU buffer, as in transformers.
  EXPECT_TRUE(model->submodule("model.rotary_emb").is_non_persistent_buffer("inv_freq"));
  EXPECT_FALSE(model->submodule("model.rotary_emb").buffer("inv_freq").is_meta());
}

TEST(ModelsFixture, Qwen2TiesLmHeadToEmbeddingsByIdentity) {
  auto empty = create_empty_model(fixture("tiny_qwen2"));
  EXPECT_EQ(empty->submodule("model.layers.1").class_name(), "Qwen2DecoderLayer");
  EXPECT_TRUE(empty->submodule("model.layers.0.self_attn.q_proj").parameter("bias").defined());
  EXPECT_FALSE(empty->submodule("model.layers.0.self_attn.o_proj").parameter("bias").defined());
  auto groups = ferry::find_tied_parameters(*empty);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0], (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight"}));
  EXPECT_EQ(empty->tied_weight_names(), (std::vector<std::string>{"model.embed_tokens.weight", "lm_head.weight"}));

  auto model = load_pretrained(fixture("tiny_qwen2"), {at::kFloat});
  EXPECT_TRUE(model->submodule("lm_head").parameter("weight").is_same(
      model->submodule("model.embed_tokens").parameter("weight")));
  EXPECT_EQ(model->submodule("lm_head").parameter("weight").scalar_type(), at::kFloat);
}

TEST(ModelsFixture, Bfloat16RunIsCloseToFloat32) {
  // Run in bf16 on the CPU (both LibTorch builds can): stored bf16 (tiny_qwen2, the config's dtype)
  // or stored float32 and cast on load (tiny_llama): the logits track the float32 reference to bf16
  // precision.
  for (const char* name : {"tiny_qwen2", "tiny_llama"}) {
    std::string dir = fixture(name);
    Reference ref = read_reference(dir);
    auto model = load_pretrained(dir, {at::kBFloat16});
    EXPECT_EQ(model->submodule("model.embed_tokens").parameter("weight").scalar_type(), at::kBFloat16) << name;
    c10::NoGradGuard no_grad;
    at::Tensor logits = model->logits(ref.input_ids);
    EXPECT_EQ(logits.scalar_type(), at::kBFloat16) << name;
    double diff = max_abs_diff(logits, ref.logits);
    EXPECT_LT(diff, 0.1) << name;
    EXPECT_GT(diff, 0.0) << name;
  }
}

TEST(ModelsFixture, ConfigThatDisagreesWithTheCheckpointIsRefused) {
  TempDir dir("mismatch");
  for (const auto& e : std::filesystem::directory_iterator(fixture("tiny_llama")))
    std::filesystem::copy(e.path(), dir.path() / e.path().filename());
  std::ifstream in(dir.path() / "config.json");
  std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  config.replace(config.find("\"intermediate_size\": 344"), 24, "\"intermediate_size\": 300");
  std::ofstream(dir.path() / "config.json", std::ios::trunc) << config;
  std::string msg = error_of([&] { load_pretrained(dir.str()); });
  EXPECT_NE(msg.find("does not match its config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'model.layers.0.mlp.gate_proj.weight' has shape [344, 128] in the checkpoint but [300, 128]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("(and 8 more)"), std::string::npos) << msg;
}

TEST(ModelsFixture, FolderWithoutWeightsOrConfigIsRefused) {
  TempDir dir("noweights");
  std::filesystem::copy(fixture("tiny_llama") + "/config.json", dir.path() / "config.json");
  std::string msg = error_of([&] { load_pretrained(dir.str()); });
  EXPECT_NE(msg.find("holds no weights"), std::string::npos) << msg;
  TempDir empty("noconfig");
  msg = error_of([&] { load_pretrained(empty.str()); });
  EXPECT_NE(msg.find("has no config.json"), std::string::npos) << msg;
}

TEST(ModelsFixture, IdsOutsideTheVocabularyAreRefused) {
  auto model = load_pretrained(fixture("tiny_llama"));
  at::Tensor ids = at::tensor({1, 2, 1000}, at::kLong).view({1, 3});
  std::string msg = error_of([&] { generate(*model, ids, {}); });
  EXPECT_NE(msg.find("token id 1000 (prompt 0, position 2) is outside the vocabulary [0, 1000)"), std::string::npos)
      << msg;
  msg = error_of([&] { generate(*model, at::tensor({-1}, at::kLong).view({1, 1}), {}); });
  EXPECT_NE(msg.find("token id -1"), std::string::npos) << msg;
}
