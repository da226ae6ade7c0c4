// nn/layers.h: every standard layer against the same math written with ATen directly.
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>

namespace {

using ferry_test::error_of;
using ferry_test::has;
using ferry_test::names_of;
using Names = std::vector<std::string>;

void expect_close(const at::Tensor& actual, const at::Tensor& expected, double tol = 1e-5) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(at::allclose(actual, expected, tol, tol)) << "max abs diff "
                                                         << (actual - expected).abs().max().item<double>();
}

TEST(LayersTest, LinearMatchesReference) {
  at::manual_seed(0);
  ferry::Linear fc(6, 4);
  EXPECT_EQ(names_of(fc.named_parameters()), (Names{"weight", "bias"}));
  EXPECT_EQ(fc.weight->sizes(), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(fc.bias->sizes(), (std::vector<int64_t>{4}));
  // PyTorch's default init: U(-1/sqrt(in), 1/sqrt(in)), not zeros.
  double bound = 1.0 / std::sqrt(6.0);
  EXPECT_LE(fc.weight->abs().max().item<double>(), bound);
  EXPECT_GT(fc.weight->abs().max().item<double>(), 0.0);
  EXPECT_LE(fc.bias->abs().max().item<double>(), bound);

  at::Tensor x = at::randn({2, 5, 6});
  at::Tensor expected = at::matmul(x, fc.weight->t()) + fc.bias.get();
  expect_close(fc(x), expected);

  ferry::Linear no_bias(6, 4, /*bias=*/false);
  EXPECT_FALSE(no_bias.bias.defined());
  EXPECT_TRUE(no_bias.has_parameter("bias"));  // registered as None, as in PyTorch
  EXPECT_EQ(names_of(no_bias.named_parameters()), (Names{"weight"}));
  expect_close(no_bias(x), at::matmul(x, no_bias.weight->t()));

  ferry::Linear half(6, 4, true, at::kDouble);
  EXPECT_EQ(half.weight->scalar_type(), at::kDouble);

  std::string bad = error_of([] { ferry::Linear(0, 4); });
  EXPECT_EQ(bad, "[Linear] Linear needs positive sizes, got in_features=0, out_features=4");
}

TEST(LayersTest, EmbeddingMatchesReferenceAndRejectsOutOfVocab) {
  at::manual_seed(1);
  ferry::Embedding emb(10, 3);
  EXPECT_EQ(emb.class_name(), "Embedding");
  EXPECT_EQ(emb.weight->sizes(), (std::vector<int64_t>{10, 3}));
  at::Tensor ids = at::tensor({0, 9, 4, 4, 4, 1}, at::kLong).view({2, 3});
  at::Tensor expected = emb.weight->index_select(0, ids.flatten()).view({2, 3, 3});
  expect_close(emb(ids), expected, 0);

  std::string high = error_of([&] { emb(at::tensor({3, 10}, at::kLong)); });
  EXPECT_EQ(high, "[forward] token id 10 is outside the vocabulary [0, 10)");
  std::string low = error_of([&] { emb(at::tensor({-1, 2}, at::kLong)); });
  EXPECT_EQ(low, "[forward] token id -1 is outside the vocabulary [0, 10)");
  std::string sizes = error_of([] { ferry::Embedding(0, 3); });
  EXPECT_EQ(sizes, "[Embedding] Embedding needs positive sizes, got 0 x 3");
}

TEST(LayersTest, LayerNormMatchesReference) {
  at::manual_seed(2);
  ferry::LayerNorm ln(8, 1e-5);
  EXPECT_TRUE(at::equal(ln.weight.get(), at::ones({8})));
  EXPECT_TRUE(at::equal(ln.bias.get(), at::zeros({8})));
  ln.set_parameter("weight", at::randn({8}));
  ln.set_parameter("bias", at::randn({8}));
  at::Tensor x = at::randn({3, 4, 8});
  at::Tensor mean = x.mean(-1, true);
  at::Tensor var = (x - mean).pow(2).mean(-1, true);
  at::Tensor expected = (x - mean) / at::sqrt(var + 1e-5) * ln.weight.get() + ln.bias.get();
  expect_close(ln(x), expected);

  ferry::LayerNorm plain(8, 1e-5, /*elementwise_affine=*/false);
  EXPECT_EQ(names_of(plain.named_parameters()), Names{});
  expect_close(plain(x), (x - mean) / at::sqrt(var + 1e-5));

  ferry::LayerNorm no_bias(8, 1e-5, true, /*bias=*/false);
  EXPECT_EQ(names_of(no_bias.named_parameters()), (Names{"weight"}));
}

TEST(LayersTest, RMSNormMatchesLlamaReference) {
  at::manual_seed(3);
  ferry::RMSNorm norm(8, 1e-6);
  EXPECT_EQ(norm.class_name(), "RMSNorm");
  norm.set_parameter("weight", at::randn({8}));
  at::Tensor x = at::randn({2, 3, 8});
  at::Tensor expected = norm.weight.get() * (x / at::sqrt(x.pow(2).mean(-1, true) + 1e-6));
  expect_close(norm(x), expected);

  // bfloat16 weights and input: computed in float32, cast back before the weight multiply.
  ferry::RMSNorm bf(8, 1e-6, at::kBFloat16);
  bf.set_parameter("weight", norm.weight->to(at::kBFloat16));
  at::Tensor xb = x.to(at::kBFloat16);
  at::Tensor hf = xb.to(at::kFloat);
  at::Tensor ref = bf.weight.get() * (hf * at::rsqrt(hf.pow(2).mean(-1, true) + 1e-6)).to(at::kBFloat16);
  at::Tensor out = bf(xb);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(out, ref));
}

TEST(LayersTest, Conv1DIsGpt2sTransposedLinear) {
  at::manual_seed(4);
  ferry::Conv1D conv(/*nf=*/6, /*nx=*/4);
  EXPECT_EQ(conv.weight->sizes(), (std::vector<int64_t>{4, 6}));  // [nx, nf], transposed w.r.t. Linear
  EXPECT_EQ(conv.bias->sizes(), (std::vector<int64_t>{6}));
  conv.set_parameter("bias", at::randn({6}));
  at::Tensor x = at::randn({2, 3, 4});
  at::Tensor expected = at::matmul(x, conv.weight.get()) + conv.bias.get();
  at::Tensor y = conv(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 6}));
  expect_close(y, expected);
  std::string wrong = error_of([&] { conv(at::randn({2, 6})); });
  EXPECT_EQ(wrong, "[forward] Conv1D(nf=6, nx=4) expects inputs whose last dimension is 4, got shape [2, 6]");
}

TEST(LayersTest, BatchNorm1dUsesRunningStatistics) {
  at::manual_seed(5);
  ferry::BatchNorm1d bn(4, 1e-5);
  EXPECT_EQ(names_of(bn.named_buffers()), (Names{"running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(bn.num_batches_tracked->scalar_type(), at::kLong);
  EXPECT_EQ(bn.num_batches_tracked->dim(), 0);
  bn.set_parameter("weight", at::randn({4}));
  bn.set_parameter("bias", at::randn({4}));
  bn.set_buffer("running_mean", at::randn({4}));
  bn.set_buffer("running_var", at::rand({4}) + 0.5);
  at::Tensor x = at::randn({3, 4});
  at::Tensor expected =
      (x - bn.running_mean.get()) / at::sqrt(bn.running_var.get() + 1e-5) * bn.weight.get() + bn.bias.get();
  expect_close(bn(x), expected);
  // Inference: the statistics are not updated by a call.
  at::Tensor before = bn.running_mean->clone();
  bn(at::randn({8, 4}) * 10);
  EXPECT_TRUE(at::equal(bn.running_mean.get(), before));
  // (N, C, L) input normalises per channel too.
  at::Tensor x3 = at::randn({2, 4, 5});
  at::Tensor expected3 = (x3 - bn.running_mean->view({1, 4, 1})) / at::sqrt(bn.running_var->view({1, 4, 1}) + 1e-5) *
                             bn.weight->view({1, 4, 1}) +
                         bn.bias->view({1, 4, 1});
  expect_close(bn(x3), expected3);
}

TEST(LayersTest, SequentialChainsChildren) {
  at::manual_seed(6);
  auto a = std::make_shared<ferry::Linear>(3, 4);
  auto b = std::make_shared<ferry::LayerNorm>(4);
  auto c = std::make_shared<ferry::Linear>(4, 2);
  ferry::Sequential seq({a, b, c});
  EXPECT_EQ(seq.size(), 3u);
  EXPECT_EQ(names_of(seq.named_children()), (Names{"0", "1", "2"}));
  EXPECT_EQ(names_of(seq.named_parameters()),
            (Names{"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"}));
  at::Tensor x = at::randn({5, 3});
  at::Tensor h = at::matmul(x, a->weight->t()) + a->bias.get();
  h = at::layer_norm(h, {4}, b->weight.get(), b->bias.get(), 1e-5);
  at::Tensor expected = at::matmul(h, c->weight->t()) + c->bias.get();
  expect_close(seq(x), expected);
}

TEST(LayersTest, ModuleListAndModuleDict) {
  ferry::ModuleList list;
  list.push_back(std::make_shared<ferry::Linear>(2, 2));
  list.push_back(std::make_shared<ferry::RMSNorm>(2));
  EXPECT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1].class_name(), "RMSNorm");
  EXPECT_EQ(names_of(list.named_parameters()), (Names{"0.weight", "0.bias", "1.weight"}));
  std::string range = error_of([&] { list.at(2); });
  EXPECT_EQ(range, "[at] index 2 is out of range for a ModuleList of 2 modules");

  ferry::ModuleDict dict;
  dict.insert("q_proj", std::make_shared<ferry::Linear>(2, 2, false));
  EXPECT_EQ(dict.class_name(), "ModuleDict");
  EXPECT_EQ(dict.at("q_proj")->class_name(), "Linear");
  EXPECT_EQ(names_of(dict.named_parameters()), (Names{"q_proj.weight"}));
  std::string missing = error_of([&] { dict.at("k_proj"); });
  EXPECT_EQ(missing, "[at] ModuleDict has no module named 'k_proj'");
}

TEST(LayersTest, LayersBuiltOnMetaHaveShapesAndDtypesButNoData) {
  auto guard = ferry::init_empty_weights();
  ferry::Embedding emb(128256, 8192, at::kBFloat16);
  ferry::Conv1D conv(3072, 768);
  ferry::LayerNorm ln(768);
  EXPECT_TRUE(emb.weight->is_meta());
  EXPECT_EQ(emb.weight->scalar_type(), at::kBFloat16);
  EXPECT_EQ(emb.weight->sizes(), (std::vector<int64_t>{128256, 8192}));
  EXPECT_TRUE(conv.bias->is_meta());
  EXPECT_TRUE(ln.weight->is_meta());
}

}  // namespace
