#include "ferry/hooks/layerwise_casting_hook.h"

#include "ferry/nn/layers.h"

#include <algorithm>
#include <regex>

namespace ferry {

void LayerwiseCastingHook::init_hook(Module& module) { module.to(storage_dtype); }

void LayerwiseCastingHook::pre_forward(Module& module, Args& args) {
  // The stored tensors are kept aside and put back after forward: no cast back, no rounding.
  stored_.clear();
  std::vector<std::pair<const c10::TensorImpl*, at::Tensor>> cast;  // one cast per tied tensor
  for (const auto& [prefix, m] : module.named_modules()) {
    for (const auto* slots : {&m->parameter_slots(), &m->buffer_slots()}) {
      for (const auto& [name, slot] : *slots) {
        const at::Tensor& t = slot->tensor;
        if (!t.defined() || !c10::isFloatingType(t.scalar_type()) || t.scalar_type() == compute_dtype) continue;
        at::Tensor computed;
        for (const auto& [impl, c] : cast)
          if (impl == t.unsafeGetTensorImpl()) computed = c;
        if (!computed.defined()) {
          computed = t.to(compute_dtype, non_blocking);
          cast.emplace_back(t.unsafeGetTensorImpl(), computed);
        }
        stored_.emplace_back(slot, t);
        slot->tensor = computed;
      }
    }
  }
}

c10::IValue LayerwiseCastingHook::post_forward(Module& module, c10::IValue output) {
  abort_forward(module);
  return output;
}

void LayerwiseCastingHook::abort_forward(Module& module) {
  for (auto& [slot, stored] : stored_) slot->tensor = stored;
  stored_.clear();
}

namespace {

// Accelerate's SUPPORTED_PYTORCH_LAYERS_FOR_UPCASTING, matched as isinstance does: ferry::Linear and
// its subclasses by type; the convolutions (which ferry does not define) by their PyTorch class name.
bool castable(Module& module) {
  if (dynamic_cast<Linear*>(&module) != nullptr) return true;
  static const char* kinds[] = {"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"};
  return std::find(std::begin(kinds), std::end(kinds), module.class_name()) != std::end(kinds);
}

void visit(Module& module, const std::string& name, c10::ScalarType storage, c10::ScalarType compute,
           const std::vector<std::regex>& patterns, const std::vector<std::string>& classes, bool non_blocking) {
  if (std::find(classes.begin(), classes.end(), module.class_name()) != classes.end()) return;
  for (const auto& pattern : patterns)
    if (std::regex_search(name, pattern)) return;
  if (castable(module)) {
    add_hook_to_module(module, std::make_shared<LayerwiseCastingHook>(storage, compute, non_blocking), true);
    return;
  }
  for (auto& [child_name, child] : module.named_children())
    visit(*child, join_name(name, child_name), storage, compute, patterns, classes, non_blocking);
}

}  // namespace

void attach_layerwise_casting_hooks(Module& module, c10::ScalarType storage_dtype, c10::ScalarType compute_dtype,
                                    const std::vector<std::string>& skip_modules_pattern,
                                    const std::vector<std::string>& skip_modules_classes, bool non_blocking) {
  std::vector<std::regex> patterns;
  for (const auto& p : skip_modules_pattern) patterns.emplace_back(p);
  visit(module, "", storage_dtype, compute_dtype, patterns, skip_modules_classes, non_blocking);
}

}  // namespace ferry
