#include "ferry/plan/checkpoint_tree.h"

#include "ferry/core/error.h"

namespace ferry {

LoadedModelTree load_checkpoint_tree(const std::string& path) {
  FERRY_FAIL("'", path, "' is not a model tree JSON file, and reading checkpoints needs ferry's io layer, which this "
             "build lacks");
}

}  // namespace ferry
