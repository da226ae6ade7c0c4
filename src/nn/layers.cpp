#include "ferry/nn/layers.h"

#include "ferry/core/error.h"
#include "ferry/nn/init_on_device.h"

#include <ATen/ATen.h>

#include <cmath>

namespace ferry {
namespace {

// PyTorch's default for Linear/Conv1D-like weights: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), ..).
void init_uniform(const at::Tensor& t, int64_t fan_in) {
  if (t.defined() && !t.is_meta() && fan_in > 0) {
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    t.uniform_(-bound, bound);
  }
}

void init_fill(const at::Tensor& t, double value) {
  if (t.defined() && !t.is_meta()) t.fill_(value);
}

}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, c10::ScalarType dtype)
    : Module("Linear"), in_features(in_features), out_features(out_features) {
  FERRY_CHECK(in_features > 0 && out_features > 0, "Linear needs positive sizes, got in_features=", in_features,
              ", out_features=", out_features);
  weight = register_parameter("weight", new_parameter_tensor({out_features, in_features}, dtype));
  bias = register_parameter("bias", with_bias ? new_parameter_tensor({out_features}, dtype) : at::Tensor());
  init_uniform(*weight, in_features);
  if (bias.defined()) init_uniform(*bias, in_features);
}

c10::IValue Linear::forward(Args& args) {
  return at::linear(args.tensor(0), *weight, bias.defined() ? c10::optional<at::Tensor>(*bias) : c10::nullopt);
}

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, c10::ScalarType dtype)
    : Module("Embedding"), num_embeddings(num_embeddings), embedding_dim(embedding_dim) {
  FERRY_CHECK(num_embeddings > 0 && embedding_dim > 0, "Embedding needs positive sizes, got ", num_embeddings, " x ",
              embedding_dim);
  weight = register_parameter("weight", new_parameter_tensor({num_embeddings, embedding_dim}, dtype));
  if (!weight->is_meta()) weight->normal_();
}

c10::IValue Embedding::forward(Args& args) {
  at::Tensor ids = args.tensor(0);
  if (ids.numel() > 0 && ids.device().is_cpu()) {  // a GPU check would sync every call
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    FERRY_CHECK(lo >= 0 && hi < num_embeddings, "token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ",
                num_embeddings, ")");
  }
  return at::embedding(*weight, ids);
}

LayerNorm::LayerNorm(int64_t dim, double eps, bool elementwise_affine, bool with_bias, c10::ScalarType dtype)
    : Module("LayerNorm"), dim(dim), eps(eps) {
  weight = register_parameter("weight", elementwise_affine ? new_parameter_tensor({dim}, dtype) : at::Tensor());
  bias = register_parameter("bias", elementwise_affine && with_bias ? new_parameter_tensor({dim}, dtype) : at::Tensor());
  init_fill(*weight, 1.0);
  init_fill(*bias, 0.0);
}

c10::IValue LayerNorm::forward(Args& args) {
  auto opt = [](const TensorRef& r) { return r.defined() ? c10::optional<at::Tensor>(*r) : c10::nullopt; };
  return at::layer_norm(args.tensor(0), {dim}, opt(weight), opt(bias), eps);
}

RMSNorm::RMSNorm(int64_t dim, double eps, c10::ScalarType dtype) : Module("RMSNorm"), dim(dim), eps(eps) {
  weight = register_parameter("weight", new_parameter_tensor({dim}, dtype));
  init_fill(*weight, 1.0);
}

c10::IValue RMSNorm::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  auto input_dtype = x.scalar_type();
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return *weight * h.to(input_dtype);
}

Conv1D::Conv1D(int64_t nf, int64_t nx, c10::ScalarType dtype) : Module("Conv1D"), nf(nf), nx(nx) {
  weight = register_parameter("weight", new_parameter_tensor({nx, nf}, dtype));
  bias = register_parameter("bias", new_parameter_tensor({nf}, dtype));
  if (!weight->is_meta()) weight->normal_(0.0, 0.02);
  init_fill(*bias, 0.0);
}

c10::IValue Conv1D::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  // Checked here: the reshape below would otherwise fold a wrong width into the rows and fail
  // later with a message about views.
  FERRY_CHECK(x.dim() >= 1 && x.size(-1) == nx, "Conv1D(nf=", nf, ", nx=", nx,
              ") expects inputs whose last dimension is ", nx, ", got shape ", x.sizes());
  auto out_shape = x.sizes().vec();
  out_shape.back() = nf;
  return at::addmm(*bias, x.reshape({-1, nx}), *weight).view(out_shape);
}

BatchNorm1d::BatchNorm1d(int64_t num_features, double eps, double momentum)
    : Module("BatchNorm1d"), num_features(num_features), eps(eps), momentum(momentum) {
  weight = register_parameter("weight", new_parameter_tensor({num_features}));
  bias = register_parameter("bias", new_parameter_tensor({num_features}));
  init_fill(*weight, 1.0);
  init_fill(*bias, 0.0);
  running_mean = register_buffer("running_mean", new_buffer_tensor({num_features}, at::kFloat, 0.0));
  running_var = register_buffer("running_var", new_buffer_tensor({num_features}, at::kFloat, 1.0));
  num_batches_tracked = register_buffer("num_batches_tracked", new_buffer_tensor({}, at::kLong, 0.0));
}

c10::IValue BatchNorm1d::forward(Args& args) {
  return at::batch_norm(args.tensor(0), *weight, *bias, *running_mean, *running_var, /*training=*/false, momentum, eps,
                        /*cudnn_enabled=*/true);
}

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) : Module("Sequential") {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> module) {
  register_child(std::to_string(children().size()), std::move(module));
}

c10::IValue Sequential::forward(Args& args) {
  c10::IValue value = args.positional.empty() ? c10::IValue() : args.positional[0];
  bool first = true;
  for (const auto& [name, module] : children()) {
    if (first) {
      value = (*module)(args);
      first = false;
    } else {
      value = (*module)(Args{value});
    }
  }
  return value;
}

void ModuleList::push_back(std::shared_ptr<Module> module) {
  register_child(std::to_string(children().size()), std::move(module));
}

std::shared_ptr<Module> ModuleList::at(size_t i) const {
  FERRY_CHECK(i < children().size(), "index ", i, " is out of range for a ModuleList of ", children().size(),
              " modules");
  return children()[i].second;
}

Module& ModuleList::operator[](size_t i) const { return *at(i); }

std::shared_ptr<Module> ModuleDict::at(const std::string& name) const {
  auto module = child(name);
  FERRY_CHECK(module, "ModuleDict has no module named '", name, "'");
  return module;
}

}  // namespace ferry
