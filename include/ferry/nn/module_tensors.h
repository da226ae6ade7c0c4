#pragma once
/// \file
/// Tensor-level operations on a module tree, with Accelerate's names and semantics: moving one
/// named tensor (between meta and real memory too), walking tensors, and tied parameters.
/// Ties are found and kept by tensor identity (`TensorImpl`), never by `data_ptr()`: every meta
/// tensor has data_ptr 0, which is how Accelerate's tied-weight bugs happen.
///
///     ferry::set_module_tensor_to_device(model, "linear1.weight", at::kMeta);       // offload
///     ferry::set_module_tensor_to_device(model, "linear1.weight", at::kCPU, w);     // bring back
///     ferry::retie_parameters(model, groups);            // one tensor object per group again

#include "ferry/core/shape.h"
#include "ferry/nn/module.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Optional.h>

#include <set>
#include <string>
#include <vector>

namespace ferry {

/// Puts tensor `name` (dotted, relative to `module`) on `device`. Without `value` the current
/// tensor is moved (a meta tensor cannot be: that is an error); with `value` the slot gets
/// `value` on `device`, after a shape check, cast to `dtype` if given (floating values only) or
/// else to the current dtype. Moving to meta with `dtype` gives a meta tensor of that dtype.
/// The slot is replaced, so a tie through this slot breaks (retie_parameters restores it).
/// A CPU value of the right dtype placed on the CPU is used as is, without a copy.
void set_module_tensor_to_device(Module& module, const std::string& name, c10::Device device,
                                 const c10::optional<at::Tensor>& value = c10::nullopt,
                                 c10::optional<c10::ScalarType> dtype = c10::nullopt, bool non_blocking = false);

/// Parameters (de-duplicated), then buffers if `include_buffers` (non-persistent ones left out
/// with `remove_non_persistent`). Non-persistence is judged per slot, by qualified name; Accelerate
/// compares unqualified names here and can drop a root buffer that shares a child's name.
NamedTensors named_module_tensors(Module& module, bool include_buffers = true, bool recurse = false,
                                  bool remove_non_persistent = false);

/// Names of non-persistent buffers: unqualified (Accelerate's default) or fully qualified.
/// Always a fresh set; the modules are not touched.
std::set<std::string> get_non_persistent_buffers(Module& module, bool recurse = false, bool fqns = false);

/// Makes every name of each group refer to one tensor: the first in the group that is not on
/// the meta device. Groups whose tensors are all on meta are left alone.
void retie_parameters(Module& module, const std::vector<std::vector<std::string>>& tied_groups);

/// The module owning tensor `name` and the tensor's leaf name ("a.b.weight" -> (a.b, "weight")).
std::pair<Module*, std::string> resolve_tensor_owner(Module& module, const std::string& name);

}  // namespace ferry
