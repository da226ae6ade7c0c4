#pragma once
/// \file
/// Where `ferry plan` gets a model tree from: a model tree JSON file (the conformance format) or a
/// checkpoint (a folder, a `.safetensors` file or a sharded index), read from its headers alone.
///
///     LoadedModelTree m = load_model_tree("/models/llama");       // headers only, no tensor bytes
///     NoSplitRules rules = no_split_rules_for(m, {"model.layers.*"});

#include "ferry/plan/model_tree.h"
#include "ferry/plan/module_sizes.h"

#include <string>
#include <vector>

namespace ferry {

/// A tree and what it came from.
struct LoadedModelTree {
  ModelTree tree;
  bool from_checkpoint = false;  ///< class names are unknown: no-split rules must be patterns
  std::string description;       ///< "model tree JSON", "checkpoint of 3 files, 291 tensors"
};

/// Loads a model tree JSON file (a path ending in ".json" that is not a safetensors index) or a
/// checkpoint. Throws ferry::Error saying what is wrong and where (missing path, folder without
/// checkpoint, corrupt header).
LoadedModelTree load_model_tree(const std::string& path);

/// Splits `--no-split` values into rules: for a checkpoint every value is a name pattern; for a
/// tree with class names, a value containing '.' or '*' is a pattern and anything else a class.
NoSplitRules no_split_rules_for(const LoadedModelTree& model, const std::vector<std::string>& values);

}  // namespace ferry
