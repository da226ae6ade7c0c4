#include "ferry/plan/model_source.h"

#include "ferry/core/error.h"
#include "ferry/plan/checkpoint_tree.h"

#include <sys/stat.h>

namespace ferry {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LoadedModelTree load_model_tree(const std::string& path) {
  struct stat info {};
  FERRY_CHECK(::stat(path.c_str(), &info) == 0, "'", path, "' does not exist");
  const bool is_dir = S_ISDIR(info.st_mode);
  if (!is_dir && ends_with(path, ".json") && !ends_with(path, ".index.json")) {
    LoadedModelTree out{ModelTree::from_json_file(path), false, "model tree JSON"};
    return out;
  }
  return load_checkpoint_tree(path);
}

NoSplitRules no_split_rules_for(const LoadedModelTree& model, const std::vector<std::string>& values) {
  NoSplitRules rules;
  for (const auto& v : values) {
    FERRY_CHECK(!v.empty(), "an empty --no-split value");
    bool pattern = model.from_checkpoint || v.find('.') != std::string::npos || v.find('*') != std::string::npos ||
                   v.find('?') != std::string::npos;
    (pattern ? rules.patterns : rules.classes).push_back(v);
  }
  return rules;
}

}  // namespace ferry
