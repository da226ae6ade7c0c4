#pragma once
/// \file
/// Standard layers with PyTorch's class and parameter names, so that checkpoints load by name and
/// device maps read the same as in Python. Parameters are created through new_parameter_tensor,
/// so nothing is allocated (and no initialisation runs) under init_empty_weights.
///
///     auto fc = std::make_shared<ferry::Linear>(768, 3072);    // weight [3072, 768], bias [3072]
///     at::Tensor y = (*fc)(x);

#include "ferry/nn/module.h"

#include <cstdint>
#include <vector>

namespace ferry {

/// y = x W^T + b. Parameters "weight" [out, in] and "bias" [out] (None without bias).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  int64_t in_features, out_features;
  TensorRef weight, bias;
};

/// Lookup table. Parameter "weight" [num_embeddings, embedding_dim].
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  int64_t num_embeddings, embedding_dim;
  TensorRef weight;
};

/// Layer normalisation over the last dimension. "weight" and "bias" [dim].
class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps = 1e-5, bool elementwise_affine = true, bool bias = true,
            c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  int64_t dim;
  double eps;
  TensorRef weight, bias;
};

/// Root-mean-square normalisation as Llama defines it: computed in float32, then
/// weight * normalised.to(input dtype). "weight" [dim].
class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps = 1e-6, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  int64_t dim;
  double eps;
  TensorRef weight;
};

/// GPT-2's transposed linear: y = x W + b with "weight" [nx, nf] and "bias" [nf].
class Conv1D : public Module {
 public:
  Conv1D(int64_t nf, int64_t nx, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  int64_t nf, nx;
  TensorRef weight, bias;
};

/// Batch normalisation for inference (running statistics): "weight", "bias"; buffers
/// "running_mean", "running_var", "num_batches_tracked" (int64 scalar).
class BatchNorm1d : public Module {
 public:
  BatchNorm1d(int64_t num_features, double eps = 1e-5, double momentum = 0.1);
  c10::IValue forward(Args& args) override;
  int64_t num_features;
  double eps, momentum;
  TensorRef weight, bias, running_mean, running_var, num_batches_tracked;
};

/// Children "0", "1", ... called in order, each on the previous output.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  /// Appends a module under the next index.
  void push_back(std::shared_ptr<Module> module);
  size_t size() const { return children().size(); }
  c10::IValue forward(Args& args) override;
};

/// An indexed list of modules ("0", "1", ...), without forward.
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  void push_back(std::shared_ptr<Module> module);
  size_t size() const { return children().size(); }
  /// The i-th module; throws ferry::Error when out of range.
  Module& operator[](size_t i) const;
  std::shared_ptr<Module> at(size_t i) const;
};

/// Named modules, without forward.
class ModuleDict : public Module {
 public:
  ModuleDict() : Module("ModuleDict") {}
  void insert(const std::string& name, std::shared_ptr<Module> module) { register_child(name, std::move(module)); }
  std::shared_ptr<Module> at(const std::string& name) const;
};

}  // namespace ferry
