#pragma once
/// \file
/// Tied parameters: one parameter object reachable under several names.
///
///     auto groups = find_tied_parameters(tree);
///     // [["lm_head.weight", "model.embed_tokens.weight"]]
///
/// Identity comes from the tree (two slots holding the same TensorId), never from data pointers.

#include "ferry/plan/device_map.h"
#include "ferry/plan/model_tree.h"

namespace ferry {
class Module;
}

#include <string>
#include <vector>

namespace ferry {

/// Accelerate's find_tied_parameters: groups of names (each sorted lexicographically) that refer
/// to one parameter object, including names reached through a module registered twice. Groups
/// come in the order their first name appears in the module walk (Accelerate's order is a set's).
std::vector<std::vector<std::string>> find_tied_parameters(const ModelTree& tree);

/// Accelerate's check_tied_parameters_on_same_device: a warning naming each tied group whose members
/// `device_map` places on different devices (each would get its own copy; the tie is lost there).
void check_tied_parameters_on_same_device(const std::vector<std::vector<std::string>>& tied_params,
                                          const DeviceMap& device_map);

/// The same for a live module: find_tied_parameters(model_tree_from_module(module)), identity by
/// TensorImpl. One implementation serves both (a shared sub-module ties all of its parameters).
std::vector<std::vector<std::string>> find_tied_parameters(Module& module);

}  // namespace ferry
