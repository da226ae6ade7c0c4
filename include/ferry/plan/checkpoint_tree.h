#pragma once
/// \file
/// A model tree from a checkpoint's headers alone (safetensors file, folder or sharded index):
/// names become modules by their dotted prefixes, shapes and dtypes come from the headers, no
/// tensor byte is read. Class names are unknown, so blocks that must stay whole are named by
/// pattern (NoSplitRules::patterns, e.g. "model.layers.*").
///
///     LoadedModelTree m = load_checkpoint_tree("/models/llama");
///     PlanOptions options;
///     options.no_split.patterns = {"model.layers.*"};
///     DeviceMap map = infer_auto_device_map(m.tree, options);

#include "ferry/plan/model_source.h"

#include <string>

namespace ferry {

/// Reads the checkpoint at `path` (see ferry::io::Checkpoint::open for the rules). Throws
/// ferry::Error naming the path for a folder without checkpoint, a missing shard or a corrupt header.
LoadedModelTree load_checkpoint_tree(const std::string& path);

}  // namespace ferry
