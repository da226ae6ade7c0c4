#include "ferry/nn/module_tensors.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace ferry {

std::pair<Module*, std::string> resolve_tensor_owner(Module& module, const std::string& name) {
  auto dot = name.rfind('.');
  Module* owner = &module;
  std::string leaf = name;
  if (dot != std::string::npos) {
    owner = &module.submodule(name.substr(0, dot));
    leaf = name.substr(dot + 1);
  }
  FERRY_CHECK(owner->has_parameter(leaf) || owner->has_buffer(leaf), "'", name, "': the ", owner->class_name(),
              dot == std::string::npos ? std::string() : " at '" + name.substr(0, dot) + "'",
              " has no parameter or buffer named '", leaf, "'");
  return {owner, leaf};
}

void set_module_tensor_to_device(Module& module, const std::string& name, c10::Device device,
                                 const c10::optional<at::Tensor>& value, c10::optional<c10::ScalarType> dtype,
                                 bool non_blocking) {
  auto [owner, leaf] = resolve_tensor_owner(module, name);
  bool is_buffer = owner->has_buffer(leaf);
  at::Tensor old = is_buffer ? owner->buffer(leaf) : owner->parameter(leaf);
  FERRY_CHECK(old.defined() || value, "'", name, "' is registered as None; give a value to set it");

  // Conversions are not recorded by autograd (Accelerate runs them under torch.no_grad()); a
  // parameter's requires_grad is the old one's, whatever the value's (a value that requires grad
  // must not make a frozen slot trainable, nor a recorded copy make a parameter a non-leaf).
  c10::NoGradGuard no_grad;
  at::Tensor fresh;
  if (value) {
    at::Tensor v = *value;
    FERRY_CHECK(!old.defined() || v.sizes() == old.sizes(), "Trying to set a tensor of shape ", shape_str(v.sizes()),
                " in \"", name, "\" (which has shape ", shape_str(old.sizes()), "), this looks incorrect.");
    if (!dtype) {
      if (old.defined() && v.scalar_type() != old.scalar_type()) v = v.to(old.scalar_type());
    } else if (is_floating_dtype(v.scalar_type()) && v.scalar_type() != *dtype) {
      v = v.to(*dtype);
    }
    fresh = v.device() == device ? v : v.to(device, non_blocking);
  } else {
    FERRY_CHECK(!old.is_meta() || device.type() == c10::kMeta, "'", name,
                "' is on the meta device; a value is needed to put it on ", device,
                " (load it from the checkpoint or the offload folder)");
    fresh = old.device() == device ? old : old.to(device, non_blocking);
    if (dtype && device.type() == c10::kMeta && is_floating_dtype(old.scalar_type())) fresh = fresh.to(*dtype);
    if (!is_buffer && fresh.is_same(old)) return;  // already there: keep the object (and its ties)
  }
  if (!is_buffer) {
    bool requires_grad = old.defined() && old.requires_grad() && is_floating_dtype(fresh.scalar_type());
    if (fresh.requires_grad() != requires_grad) fresh = fresh.detach().set_requires_grad(requires_grad);
  }
  if (is_buffer) owner->set_buffer(leaf, std::move(fresh));
  else owner->set_parameter(leaf, std::move(fresh));
}

NamedTensors named_module_tensors(Module& module, bool include_buffers, bool recurse, bool remove_non_persistent) {
  NamedTensors out = module.named_parameters(recurse);
  if (!include_buffers) return out;
  if (!remove_non_persistent) {
    for (auto& named : module.named_buffers(recurse)) out.push_back(std::move(named));
    return out;
  }
  std::unordered_set<std::string> non_persistent;
  for (const auto& name : get_non_persistent_buffers(module, recurse, /*fqns=*/true)) non_persistent.insert(name);
  for (auto& named : module.named_buffers(recurse))
    if (!non_persistent.count(named.first)) out.push_back(std::move(named));
  return out;
}

std::set<std::string> get_non_persistent_buffers(Module& module, bool recurse, bool fqns) {
  std::set<std::string> names;
  std::vector<std::pair<std::string, Module*>> modules;
  if (recurse) modules = module.named_modules();
  else modules.emplace_back("", &module);
  for (const auto& [prefix, m] : modules)
    for (const auto& leaf : m->non_persistent_buffer_names()) names.insert(fqns ? join_name(prefix, leaf) : leaf);
  return names;
}

void retie_parameters(Module& module, const std::vector<std::vector<std::string>>& tied_groups) {
  for (const auto& group : tied_groups) {
    at::Tensor source;
    for (const auto& name : group) {
      auto [owner, leaf] = resolve_tensor_owner(module, name);
      at::Tensor t = owner->parameter(leaf);
      if (t.defined() && !t.is_meta()) {
        source = t;
        break;
      }
    }
    if (!source.defined()) continue;
    for (const auto& name : group) {
      auto [owner, leaf] = resolve_tensor_owner(module, name);
      owner->set_parameter(leaf, source);
    }
  }
}

}  // namespace ferry
