#include "ferry/plan/checkpoint_tree.h"

#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"

#include <optional>

namespace ferry {

LoadedModelTree load_checkpoint_tree(const std::string& path) {
  std::optional<io::Checkpoint> opened;
  try {
    opened.emplace(io::Checkpoint::open(path));
  } catch (const Error& e) {
    FERRY_FAIL("cannot plan from '", path, "': ", e.what());
  }
  const io::Checkpoint& checkpoint = *opened;
  const auto& tensors = checkpoint.tensors();
  LoadedModelTree out{model_tree_from_names(
                          tensors.size(), [&](size_t i) { return std::string_view(tensors[i].name); },
                          [&](size_t i) { return TreeTensor{tensors[i].shape, tensors[i].dtype}; }),
                      true, ""};
  out.description = "checkpoint of " + std::to_string(checkpoint.files().size()) + " file" +
                    (checkpoint.files().size() == 1 ? "" : "s") + ", " + std::to_string(checkpoint.tensors().size()) +
                    " tensors";
  return out;
}

}  // namespace ferry
