// What LibTorch 2.x makes possible (core/torch_compat.h), each tested where the build has it and
// refused with a clear message where it does not (Debian's LibTorch 1.13): float16 compute on the
// CPU, float8 storage under layerwise casting, attention through at::scaled_dot_product_attention.

#include "ferry/core/dtype.h"
#include "ferry/core/torch_compat.h"
#include "ferry/hooks/layerwise_casting_hook.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/causal_lm.h"
#include "ferry/models/generate.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module_tensors.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

at::Tensor logits_of(const std::string& name, const PretrainedOptions& options) {
  auto model = load_pretrained(fixture(name), options);
  c10::NoGradGuard no_grad;
  return model->logits(read_reference(fixture(name)).input_ids);
}

void expect_needs_torch2(const std::string& message, const std::string& what) {
  EXPECT_NE(message.find(what + " needs LibTorch 2.1 or later"), std::string::npos) << message;
  EXPECT_NE(message.find("built against LibTorch " + ferry::torch_version()), std::string::npos) << message;
  EXPECT_NE(message.find("FERRY_TORCH=pypi"), std::string::npos) << message;
}

// Three Linear layers, as a diffusers transformer block's projections.
class LinearStack : public ferry::Module {
 public:
  LinearStack() : Module("LinearStack") {
    for (int i = 0; i < 3; ++i) layers.push_back(register_module(std::to_string(i), std::make_shared<ferry::Linear>(16, 16)));
  }
  c10::IValue forward(ferry::Args& args) override {
    at::Tensor x = args.tensor(0);
    for (auto& l : layers) x = at::relu((*l)(x));
    return x;
  }
  std::vector<std::shared_ptr<ferry::Linear>> layers;
};

}  // namespace

TEST(TorchFeatures, ScaledDotProductAttentionMatchesTransformers) {
  for (const char* name : {"tiny_llama", "tiny_qwen2"}) {
    Reference ref = read_reference(fixture(name));
    double eager = max_abs_diff(logits_of(name, {at::kFloat, "eager"}), ref.logits);
    EXPECT_LT(eager, 1e-4) << name;
    if (!ferry::torch_has(ferry::TorchFeature::ScaledDotProductAttention)) {
      EXPECT_EQ(default_attn_implementation(), "eager");
      expect_needs_torch2(error_of([&] { logits_of(name, {at::kFloat, "sdpa"}); }), "attn_implementation 'sdpa'");
      continue;
    }
    EXPECT_EQ(default_attn_implementation(), "sdpa");
    double sdpa = max_abs_diff(logits_of(name, {at::kFloat, "sdpa"}), ref.logits);
    std::cout << "[ " << name << " ] max abs logit diff vs transformers: eager " << eager << ", sdpa " << sdpa << "\n";
    EXPECT_LT(sdpa, 1e-4) << name;
    // Greedy decoding through the KV cache (one query at a time, no mask) gives transformers' tokens.
    auto model = load_pretrained(fixture(name), {at::kFloat, "sdpa"});
    GenerationConfig g;
    g.max_new_tokens = ref.generated.size(1) - ref.input_ids.size(1);
    EXPECT_TRUE(at::equal(generate(*model, ref.input_ids, g).sequences, ref.generated)) << name;
  }
}

TEST(TorchFeatures, UnknownAttentionImplementationIsRefused) {
  std::string msg = error_of([] { load_pretrained(fixture("tiny_llama"), {at::kFloat, "flash_attention_2"}); });
  EXPECT_NE(msg.find("attn_implementation 'flash_attention_2' is not known; choose sdpa or eager"), std::string::npos) << msg;
}

TEST(TorchFeatures, Float16ComputeOnTheCpu) {
#if defined(FERRY_HAS_CPU_FLOAT16)
  // Stored float32, run in float16: the logits track transformers' float32 ones to half precision,
  // and greedy decoding runs.
  Reference ref = read_reference(fixture("tiny_llama"));
  auto model = load_pretrained(fixture("tiny_llama"), {at::kHalf});
  EXPECT_EQ(model->submodule("model.layers.0.mlp.up_proj").parameter("weight").scalar_type(), at::kHalf);
  c10::NoGradGuard no_grad;
  at::Tensor logits = model->logits(ref.input_ids);
  EXPECT_EQ(logits.scalar_type(), at::kHalf);
  double diff = max_abs_diff(logits, ref.logits);
  std::cout << "[ tiny_llama ] float16 max abs logit diff vs transformers float32: " << diff << "\n";
  EXPECT_LT(diff, 2e-2);
  EXPECT_GT(diff, 0.0);
  GenerationConfig g;
  g.max_new_tokens = 4;
  at::Tensor tokens = generate(*model, ref.input_ids, g).sequences;
  EXPECT_TRUE(at::equal(tokens, ref.generated.narrow(1, 0, tokens.size(1))));
#else
  expect_needs_torch2(error_of([] { load_pretrained(fixture("tiny_llama"), {at::kHalf}); }),
                      "computing a LlamaForCausalLM in float16 (bfloat16 and float32 work with this build)");
#endif
}

TEST(TorchFeatures, Float8StorageUnderLayerwiseCasting) {
#if defined(FERRY_HAS_FLOAT8)
  // diffusers' enable_layerwise_casting(storage_dtype=float8, compute_dtype=bfloat16 or float32):
  // weights take a quarter of float32, and forward equals the same math on the float8 values.
  for (auto storage : {c10::ScalarType::Float8_e4m3fn, c10::ScalarType::Float8_e5m2}) {
    for (auto compute : {at::kBFloat16, at::kFloat}) {
      at::manual_seed(21);
      LinearStack model;
      model.to(compute);
      at::Tensor x = at::randn({4, 16}).to(compute);
      int64_t before = 0, after = 0;
      for (auto& [name, t] : model.named_parameters()) before += t.numel() * t.element_size();
      ferry::attach_layerwise_casting_hooks(model, storage, compute);
      for (auto& [name, t] : model.named_parameters()) {
        after += t.numel() * t.element_size();
        EXPECT_EQ(t.scalar_type(), storage) << name;
      }
      EXPECT_EQ(after * (compute == at::kFloat ? 4 : 2), before);

      LinearStack reference;  // the stored float8 values, widened once
      reference.to(compute);
      for (auto& [name, t] : model.named_parameters()) ferry::set_module_tensor_to_device(reference, name, at::kCPU, t.to(compute));
      at::Tensor out = model(x);
      EXPECT_EQ(out.scalar_type(), compute);
      EXPECT_TRUE(at::equal(out, reference(x))) << ferry::dtype_name(storage) << " -> " << ferry::dtype_name(compute);
      EXPECT_EQ(model.layers[0]->weight->scalar_type(), storage) << "storage tensors are put back after forward";
    }
  }
  EXPECT_EQ(ferry::parse_dtype("torch.float8_e4m3fn"), c10::ScalarType::Float8_e4m3fn);
#else
  expect_needs_torch2(error_of([] { ferry::parse_dtype("float8_e4m3fn"); }), "dtype 'float8_e4m3fn'");
  expect_needs_torch2(error_of([] { ferry::parse_dtype("torch.float8_e5m2"); }), "dtype 'torch.float8_e5m2'");
#endif
}
