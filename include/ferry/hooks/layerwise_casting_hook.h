#pragma once
/// \file
/// Layerwise casting: weights stored in a small dtype (bfloat16, float16, float8 where LibTorch
/// has it) and cast to the compute dtype for each layer's forward only, so a model takes half (or
/// a quarter) of its float32 memory while computing in float32.
///
///     ferry::attach_layerwise_casting_hooks(model, at::kBFloat16, at::kFloat,
///                                           /*skip_modules_pattern=*/{"norm", "lm_head"});

#include "ferry/hooks/model_hook.h"

#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

namespace ferry {

/// Casts the module's floating tensors to `compute_dtype` around forward, `storage_dtype` otherwise.
class LayerwiseCastingHook : public ModelHook {
 public:
  LayerwiseCastingHook(c10::ScalarType storage_dtype, c10::ScalarType compute_dtype, bool non_blocking = false)
      : storage_dtype(storage_dtype), compute_dtype(compute_dtype), non_blocking(non_blocking) {}
  void init_hook(Module& module) override;
  void pre_forward(Module& module, Args& args) override;
  c10::IValue post_forward(Module& module, c10::IValue output) override;
  void abort_forward(Module& module) override;

  c10::ScalarType storage_dtype, compute_dtype;
  bool non_blocking;

 private:
  std::vector<std::pair<std::shared_ptr<TensorSlot>, at::Tensor>> stored_;  // storage tensors during forward
};

/// Hooks the modules Accelerate casts: every ferry::Linear (subclasses included, as isinstance
/// matches) and every module whose class is Conv1d/2d/3d or ConvTranspose1d/2d/3d, skipping subtrees
/// whose qualified name matches a regex of `skip_modules_pattern` (std::regex_search) or whose
/// class is in `skip_modules_classes`. Embeddings and norms keep their dtype, as in Accelerate.
void attach_layerwise_casting_hooks(Module& module, c10::ScalarType storage_dtype, c10::ScalarType compute_dtype,
                                    const std::vector<std::string>& skip_modules_pattern = {},
                                    const std::vector<std::string>& skip_modules_classes = {},
                                    bool non_blocking = false);

}  // namespace ferry
