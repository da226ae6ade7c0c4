// ferry estimate-memory MODEL: Accelerate's `accelerate estimate-memory` for inference, from
// config.json alone (the model is built on the meta device; no weight is read or needed).

#include "commands.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/io/regular_file.h"
#include "ferry/models/causal_lm.h"
#include "ferry/models/config.h"
#include "ferry/models/pretrained.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/module_tree.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace ferry::cli {
namespace {

struct EstimateOptions {
  std::string model;
  bool json = false;
};

// The dtypes people run in, with the 1-byte ones sized alike (float8 and int8 weights).
struct Row {
  const char* name;
  c10::ScalarType sized_as;
};
constexpr Row kRows[] = {{"float32", c10::kFloat}, {"bfloat16", c10::kBFloat16}, {"float16", c10::kHalf},
                         {"float8", c10::kChar}, {"int8", c10::kChar}};

void estimate(const EstimateOptions& o) {
  namespace fs = std::filesystem;
  const std::string config_path = fs::is_directory(o.model) ? (fs::path(o.model) / "config.json").string() : o.model;
  FERRY_CHECK(fs::is_regular_file(config_path), o.model, ": expected a model folder with config.json or a config.json file");
  const models::ModelConfig config = models::parse_config(io::read_regular_file(config_path, "estimate-memory"), config_path);
  auto model = models::create_empty_model(config, c10::kFloat);  // meta: sizes only
  const ModelTree tree = model_tree_from_module(*model);
  NoSplitRules no_split;
  no_split.classes = model->no_split_module_classes();
  int64_t parameters = 0;
  for (const auto& [name, t] : model->named_parameters()) parameters += t.numel();

  nlohmann::json rows = nlohmann::json::array();
  for (const Row& r : kRows) {
    SizeOptions sizes;
    sizes.dtype = r.sized_as;
    const double total = compute_module_sizes(tree, sizes).bytes("");
    const MaxLayer largest = get_max_layer_size(tree, no_split, sizes);
    rows.push_back({{"dtype", r.name}, {"total_bytes", total}, {"largest_layer_bytes", largest.bytes()},
                    {"largest_layer", largest.names.empty() ? "" : largest.names.front()}});
  }
  if (o.json) {
    nlohmann::json j = {{"model", o.model}, {"architecture", config.architecture}, {"parameters", parameters},
                        {"layers", config.num_hidden_layers}, {"dtypes", rows}};
    std::cout << j.dump() << '\n';
    return;
  }
  std::printf("%s, %d layers, %.3g parameters (from %s)\n\n", config.architecture.c_str(),
              static_cast<int>(config.num_hidden_layers), static_cast<double>(parameters), config_path.c_str());
  std::printf("| dtype | weights: to run resident | largest layer: to run offloaded, at least |\n|---|---:|---:|\n");
  for (const auto& r : rows)
    std::printf("| %s | %s | %s |\n", r["dtype"].get<std::string>().c_str(), format_bytes(r["total_bytes"].get<double>()).c_str(),
                format_bytes(r["largest_layer_bytes"].get<double>()).c_str());
  std::printf("\nResident, a model needs its weights plus activations and the KV cache (small at short context). "
              "Offloaded (ferry run --device-map auto), the executing device needs at least the largest layer "
              "(%s here); the rest can wait in CPU RAM or on disk.\n",
              rows[0]["largest_layer"].get<std::string>().c_str());
}

}  // namespace

void add_estimate_memory_command(CLI::App& app) {
  auto o = std::make_shared<EstimateOptions>();
  CLI::App* cmd = app.add_subcommand("estimate-memory", kEstimateMemoryDescription);
  cmd->add_option("model", o->model, "A model folder with config.json, or a config.json file (no weights needed)")->required();
  cmd->add_flag("--json", o->json, "Print one JSON object instead of a table");
  cmd->callback([o] { estimate(*o); });
}

}  // namespace ferry::cli
