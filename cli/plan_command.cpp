// ferry plan: device maps for people (a table) and for programs (--json, --cases).
#include "commands.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/plan/conformance.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/model_source.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/pipeline_stages.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

namespace ferry::cli {
namespace {

struct PlanArgs {
  std::string model;
  std::string cases;
  std::string max_memory;
  std::string dtype;
  std::vector<std::string> no_split;
  std::string strategy = "auto";
  bool json = false;
  bool verbose = false;
  bool offload_buffers = false;
  bool fallback = false;
  bool whole_layers = false;
  int64_t experts_per_token = 0;
  int nproc = 0;
  std::string rank_memory;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FERRY_CHECK(in, "cannot open cases file '", path, "'");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string pad(const std::string& s, size_t width) { return s.size() >= width ? s : s + std::string(width - s.size(), ' '); }
std::string lpad(const std::string& s, size_t width) { return s.size() >= width ? s : std::string(width - s.size(), ' ') + s; }

// `--nproc N`: the decoder layers each of N pipeline ranks would hold (models/pipeline.h), in
// proportion to --rank-memory or evenly.
void print_stages(const ModelTree& tree, const ModuleSizes& sizes, const PlanArgs& args) {
  std::string prefix;
  for (const char* candidate : {"model.layers", "transformer.h", "model.decoder.layers"})
    if (sizes.contains(std::string(candidate) + ".0")) prefix = candidate;
  FERRY_CHECK(!prefix.empty(), "--nproc: this model has no decoder layers named model.layers.N or transformer.h.N");
  int64_t layers = 0;
  while (sizes.contains(prefix + "." + std::to_string(layers))) ++layers;
  std::vector<double> shares(static_cast<size_t>(args.nproc), 1.0);
  if (!args.rank_memory.empty()) {
    shares.clear();
    std::stringstream list(args.rank_memory);
    for (std::string item; std::getline(list, item, ',');) shares.push_back(static_cast<double>(parse_byte_size(item)));
    FERRY_CHECK(static_cast<int>(shares.size()) == args.nproc, "--rank-memory gives ", shares.size(),
                " budgets for --nproc ", args.nproc, "; give one per rank, e.g. 8GiB,16GiB");
  }
  // The head's matmul is work for the last stage (its weight is the embeddings' when tied).
  std::string head = "lm_head";
  for (const char* tied : {"model.embed_tokens", "transformer.wte"})
    if (!sizes.contains(head) && sizes.contains(tied)) head = tied;
  const double head_layers = sizes.contains(head) ? static_cast<double>(sizes.bits(head)) /
                                                        static_cast<double>(std::max<int64_t>(sizes.bits(prefix + ".0"), 1))
                                                  : 0.0;
  const auto stages = split_stages(layers, shares, head_layers);
  std::cout << "\nPipeline over " << args.nproc << " ranks ("
            << (args.rank_memory.empty() ? "even shares" : "shares from --rank-memory " + args.rank_memory)
            << "; the first also holds the embeddings, the last the final norm and head, worth "
            << std::to_string(head_layers).substr(0, 4) << " layers of work in decoding; ferry run weighs it for its prompt):\n";
  std::cout << pad("rank", 4) << "  " << pad("decoder layers", 20) << "  " << lpad("their size", 10) << '\n';
  for (const auto& st : stages) {
    int64_t bits = 0;
    for (int64_t i = st.first_layer; i < st.end_layer; ++i) bits += sizes.bits(prefix + "." + std::to_string(i));
    std::cout << pad(std::to_string(st.rank), 4) << "  "
              << pad(prefix + "." + std::to_string(st.first_layer) + "-" + std::to_string(st.end_layer - 1), 20) << "  "
              << lpad(format_bytes(static_cast<double>(bits) / 8.0), 10) << '\n';
  }
}

void run_plan(const PlanArgs& args) {
  if (!args.cases.empty()) {
    FERRY_CHECK(args.model.empty(), "give either a model or --cases, not both");
    std::cout << run_conformance_cases(read_text(args.cases)) << '\n';
    return;
  }
  FERRY_CHECK(!args.model.empty(), "no model given: pass a checkpoint folder, a safetensors file or a model tree JSON "
              "file (or --cases FILE)");
  PlanOptions options;
  if (!args.max_memory.empty()) options.max_memory = parse_max_memory(args.max_memory);
  if (!args.dtype.empty()) options.sizes.dtype = parse_dtype(args.dtype);
  const Strategy strategy = parse_strategy(args.strategy);
  options.offload_buffers = args.offload_buffers;
  options.fallback_allocation = args.fallback;
  options.plan_by_expert = !args.whole_layers;
  options.experts_per_token = args.experts_per_token;
  if (args.verbose) options.verbose = [](const std::string& line) { std::cerr << line << '\n'; };

  LoadedModelTree loaded = load_model_tree(args.model);
  options.no_split = no_split_rules_for(loaded, args.no_split);
  options.max_memory = get_max_memory(options.max_memory);
  DeviceMap map = plan_device_map(loaded.tree, strategy, options);
  if (args.json) {
    std::cout << map.to_json(2) << '\n';
    finish_now();
  }

  const ModuleSizes sizes = compute_module_sizes(loaded.tree, options.sizes);
  size_t width = 6;
  for (const auto& e : map) width = std::max(width, e.first.size());
  width = std::min<size_t>(width, 72);
  std::cout << "Model: " << args.model << " (" << loaded.description << "), " << format_bytes(sizes.bytes(""))
            << ", strategy " << to_string(strategy) << "\n\n";
  std::cout << pad("module", width) << "  " << pad("placement", 9) << "  " << lpad("size", 10) << '\n';
  std::map<Placement, int64_t> used;
  for (const auto& [name, placement] : map) {
    int64_t bits = sizes.bits(name);
    used[placement] += bits;
    std::cout << pad(name.empty() ? "(whole model)" : name, width) << "  " << pad(placement.hf_str(), 9) << "  "
              << lpad(format_bytes(static_cast<double>(bits) / 8.0), 10) << '\n';
  }
  std::cout << '\n' << pad("device", 9) << "  " << lpad("used", 10) << "  " << lpad("budget", 10) << "  "
            << lpad("left", 10) << '\n';
  for (const auto& b : options.max_memory) {
    int64_t bits = used.count(b.device) ? used[b.device] : 0;
    std::cout << pad(b.device.hf_str(), 9) << "  " << lpad(format_bytes(static_cast<double>(bits) / 8.0), 10) << "  "
              << lpad(format_bytes(static_cast<double>(b.bytes)), 10) << "  "
              << lpad(format_bytes(static_cast<double>(b.bytes) - static_cast<double>(bits) / 8.0), 10) << '\n';
  }
  if (used.count(Placement::disk()) && budget_of(options.max_memory, Placement::disk()) < 0)
    std::cout << pad("disk", 9) << "  " << lpad(format_bytes(static_cast<double>(used[Placement::disk()]) / 8.0), 10)
              << "  " << lpad("-", 10) << "  " << lpad("-", 10) << '\n';
  if (args.nproc > 0) print_stages(loaded.tree, sizes, args);
  finish_now();
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto args = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand("plan", "Plan where each part of a model goes (GPU, CPU, disk)");
  cmd->add_option("model", args->model,
                  "Checkpoint folder (safetensors or PyTorch .bin, sharded or not), a .safetensors/.bin file, or a model tree JSON file");
  cmd->add_option("--cases", args->cases, "Run the planner conformance cases of FILE and print the results as JSON");
  cmd->add_option("--max-memory", args->max_memory,
                  "Budgets, e.g. 0=20GiB,1=20GiB,cpu=64GiB (default: free GPU memory and available RAM)");
  cmd->add_option("--dtype", args->dtype, "Plan for floating weights in this dtype (float16, bfloat16, ...)");
  cmd->add_option("--no-split", args->no_split,
                  "Module class or name pattern that must not be split (repeatable), e.g. LlamaDecoderLayer or "
                  "'model.layers.*'");
  cmd->add_option("--strategy", args->strategy, "auto | balanced | balanced_low_0 | sequential (default: auto)");
  cmd->add_flag("--json", args->json, "Print the hf_device_map JSON instead of a table");
  cmd->add_flag("--verbose", args->verbose, "Explain every decision on stderr");
  cmd->add_flag("--offload-buffers", args->offload_buffers, "Buffers of offloaded modules are offloaded too");
  cmd->add_flag("--fallback-allocation", args->fallback, "Fill a device with a smaller module when the next does not fit");
  cmd->add_flag("--whole-layers", args->whole_layers,
                "Plan a mixture of experts' layers whole, as Accelerate does (default: dense parts first, then each "
                "routed expert where room remains)");
  cmd->add_option("--experts-per-token", args->experts_per_token,
                  "A mixture of experts' top-k, for the room kept to stream experts in (default 2)");
  cmd->add_option("--nproc", args->nproc, "Also show the decoder layers each of N pipeline ranks holds (ferry launch)");
  cmd->add_option("--rank-memory", args->rank_memory,
                  "With --nproc: each rank's budget, comma-separated (e.g. 8GiB,16GiB); layers go in proportion");
  cmd->callback([args]() { run_plan(*args); });
}

}  // namespace ferry::cli
