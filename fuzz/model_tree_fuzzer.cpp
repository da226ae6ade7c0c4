// libFuzzer target: the model-tree JSON reader (ModelTree::from_json) and the planner behind it.
// Any input must end in a tree or a ferry::Error: no crash, no hang (a deep, wide or doubly shared
// tree is refused by the reader's depth limit or the planner's name budget), no sanitizer report.

#include "ferry/core/error.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/model_tree.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const ferry::ModelTree tree = ferry::ModelTree::from_json(text);
    ferry::PlanOptions options;
    options.max_memory = ferry::parse_max_memory("0=1KiB,cpu=64KiB");
    (void)ferry::plan_device_map(tree, ferry::Strategy::Auto, options);
  } catch (const ferry::Error&) {
  }
  return 0;
}
