#include "model_session.h"

#include "interrupt.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/models/pretrained.h"
#include "ferry/plan/max_memory.h"

#include <ATen/Context.h>
#if defined(FERRY_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <iomanip>
#include <sstream>

namespace ferry::cli {
namespace {

using Clock = std::chrono::steady_clock;

// --seed as an unsigned 64-bit integer: out of range is an error, not a silent wrap.
uint64_t parse_seed(const std::string& text) {
  size_t used = 0;
  unsigned long long v = 0;
  try {
    FERRY_CHECK(!text.empty() && text[0] != '-', "");
    v = std::stoull(text, &used, 10);
  } catch (const std::exception&) {
    used = 0;
  }
  FERRY_CHECK(used == text.size() && used > 0, "--seed must be an integer from 0 to 18446744073709551615, got '", text, "'");
  return static_cast<uint64_t>(v);
}

// Loading progress on stderr. On a terminal, a bar redrawn in place at most ten times a second:
//   loading [##########..........]  52%  1.40 GiB / 2.69 GiB  shard 2/3  57/123 tensors  1.9 GiB/s
// Elsewhere (a log, a pipe), one line when loading starts and one when it ends.
class ProgressDisplay {
 public:
  ProgressDisplay(ProgressStyle style, std::string what) : what_(std::move(what)) {
    if (style == ProgressStyle::automatic) style = isatty(STDERR_FILENO) ? ProgressStyle::automatic : ProgressStyle::lines;
    style_ = style;
  }

  void update(const LoadProgress& p) {
    if (style_ == ProgressStyle::none) return;
    const auto now = Clock::now();
    if (p.tensors_done == 0) {
      start_ = last_draw_ = now;
      if (style_ == ProgressStyle::lines) std::fprintf(stderr, "loading %s\n", what_.c_str());
    }
    const bool done = p.tensors_done == p.tensors_total;
    if (style_ == ProgressStyle::automatic && (done || p.tensors_done == 0 || now - last_draw_ > std::chrono::milliseconds(100))) {
      last_draw_ = now;
      draw_bar(p, now);
    }
    if (done) {
      const double s = std::chrono::duration<double>(now - start_).count();
      const std::string rate = s > 0 ? ", " + format_bytes(static_cast<double>(p.bytes_done) / s) + "/s" : "";
      std::fprintf(stderr, "%sloaded %s (%zu tensors, %zu shard(s)) in %.2f s%s\n",
                   style_ == ProgressStyle::automatic ? "\r\033[K" : "", format_bytes(static_cast<double>(p.bytes_done)).c_str(),
                   p.tensors_total, p.shards, s, rate.c_str());
    }
    std::fflush(stderr);
  }

 private:
  void draw_bar(const LoadProgress& p, Clock::time_point now) {
    const double fraction = p.bytes_total > 0 ? static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 1.0;
    constexpr int kWidth = 20;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(kWidth - filled), '.');
    const double s = std::chrono::duration<double>(now - start_).count();
    const std::string rate = s > 0.05 ? "  " + format_bytes(static_cast<double>(p.bytes_done) / s) + "/s" : "";
    std::fprintf(stderr, "\r\033[Kloading [%s] %3d%%  %s / %s  shard %zu/%zu  %zu/%zu tensors%s", bar.c_str(),
                 static_cast<int>(fraction * 100), format_bytes(static_cast<double>(p.bytes_done)).c_str(),
                 format_bytes(static_cast<double>(p.bytes_total)).c_str(), p.shard, p.shards, p.tensors_done,
                 p.tensors_total, rate.c_str());
  }

  ProgressStyle style_;
  std::string what_;
  Clock::time_point start_, last_draw_;
};

// The number on the first line of a /proc file that `format` (one %lld) matches; -1 if none does.
long long proc_number(const char* path, const char* format) {
  FILE* f = std::fopen(path, "r");
  if (!f) return -1;
  char line[256];
  long long value = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, format, &value) == 1) break;
  std::fclose(f);
  return value;
}
}  // namespace

void add_load_flags(CLI::App* cmd, LoadFlags& f) {
  cmd->add_option("model_dir", f.model_dir, "Folder with config.json and safetensors weights")->required();
  cmd->add_option("--device-map", f.device_map,
                  "auto | balanced | balanced_low_0 | sequential | MAP.json (default: resident on the CPU)");
  cmd->add_option("--max-memory", f.max_memory, "Budgets for the planner, e.g. 0=4GiB,cpu=8GiB");
  cmd->add_flag("--whole-layers", f.whole_layers,
                "Plan a mixture of experts' layers whole, as Accelerate does (default: dense parts first, then "
                "each routed expert where room remains)");
  cmd->add_option("--offload-folder", f.offload_folder,
                  "Write disk-placed weights to this folder first, as Accelerate does (default: read them in place "
                  "from the checkpoint)");
  cmd->add_option("--dtype", f.dtype, "float32 | bfloat16 | float16 (default: the config's)");
  cmd->add_option("--attention", f.attention,
                  "sdpa | eager: fused at::scaled_dot_product_attention (the default with LibTorch 2.x) or the explicit math");
  cmd->add_option("--prefetch-bytes", f.prefetch_bytes, "Weight streamer prefetch budget in bytes (0: load on demand)");
  cmd->add_option("--disk-read", f.disk_read,
                  "How disk-placed weights are read: auto (direct when they do not fit in free memory or the "
                  "cgroup limit), mapped (in place, through the page cache) or direct (O_DIRECT into bounded buffers)")
      ->check(CLI::IsMember({"auto", "mapped", "direct"}));
  cmd->add_option("--direct-read-budget", f.direct_read_budget,
                  "Memory direct reads may hold, e.g. 1GiB (default: what is free less 512 MiB)");
  cmd->add_option("--expert-cache", f.expert_cache,
                  "Mixtures of experts: keep up to this much of offloaded experts' weights loaded after they run, "
                  "e.g. 2GiB (most-picked kept; default none)");
  cmd->add_option("--expert-cache-policy", f.expert_cache_policy,
                  "frequency (most picked kept, with aging; default) or recency (LRU, for comparison)")
      ->check(CLI::IsMember({"frequency", "recency"}));
  cmd->add_option("--cpu-experts", f.cpu_experts,
                  "Mixtures of experts on a GPU, experts in CPU RAM: compute (run them on the CPU, moving only their "
                  "tokens), copy (copy their weights to the GPU, as Accelerate) or auto (per call, by a measured cost "
                  "model; default)")
      ->check(CLI::IsMember({"auto", "compute", "copy"}));
  cmd->add_flag("--quiet,-q", f.quiet, "No progress or model information on stderr (errors and warnings only)");
}

void add_sampling_flags(CLI::App* cmd, SamplingFlags& f, int64_t default_max_new_tokens) {
  cmd->add_option("--max-new-tokens", f.max_new_tokens,
                  "Tokens to generate per prompt (default: generation_config.json's max_new_tokens, else " +
                      std::to_string(default_max_new_tokens) + ")");
  cmd->add_flag("--greedy", f.greedy, "Greedy decoding, whatever generation_config.json says");
  cmd->add_option("--temperature", f.temperature, "Sampling temperature (turns sampling on)");
  cmd->add_option("--top-k", f.top_k, "Sample among the k most likely tokens (0: all; default 50 or generation_config.json's)");
  cmd->add_option("--top-p", f.top_p, "Nucleus sampling threshold (turns sampling on)");
  cmd->add_option("--seed", f.seed, "Seed of the sampling generator (default 0)");
  cmd->add_option("--stop", f.stop, "Stop when the text contains this string (not printed); may be given several times");
  cmd->add_option("--prefill-chunk", f.prefill_chunk,
                  "Run the prompt through the model N positions at a time (default 0: all at once): bounds the "
                  "prefill's memory, and across ranks the chunks flow through the stages one behind the other");
}

models::GenerationConfig generation_settings(const SamplingFlags& f, const std::string& model_dir,
                                             const models::ModelConfig& config, int64_t default_max_new_tokens) {
  models::GenerationConfig g = models::load_generation_config(model_dir, config);
  // generation_config.json's max_new_tokens when it sets one (anything but the default), else the command's.
  const bool file_sets_length = g.max_new_tokens != models::GenerationConfig{}.max_new_tokens;
  g.max_new_tokens = f.max_new_tokens.value_or(file_sets_length ? g.max_new_tokens : default_max_new_tokens);
  FERRY_CHECK(g.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got ", g.max_new_tokens);
  if (f.temperature) g.temperature = *f.temperature;
  if (f.top_k) g.top_k = *f.top_k;
  if (f.top_p) g.top_p = *f.top_p;
  if (f.temperature || f.top_k || f.top_p) g.do_sample = true;
  if (f.greedy) g.do_sample = false;
  g.seed = parse_seed(f.seed);
  if (g.do_sample) {
    FERRY_CHECK(g.temperature > 0, "--temperature must be > 0, got ", g.temperature,
                f.temperature ? "" : " (from generation_config.json); give --greedy or a --temperature");
    FERRY_CHECK(g.top_p > 0 && g.top_p <= 1, "--top-p must be in (0, 1], got ", g.top_p);
    FERRY_CHECK(g.top_k >= 0, "--top-k must be >= 0, got ", g.top_k);
  }
  for (const std::string& s : f.stop) FERRY_CHECK(!s.empty(), "--stop needs a non-empty string");
  FERRY_CHECK(f.prefill_chunk >= 0, "--prefill-chunk must be >= 0 (0: the whole prompt at once), got ", f.prefill_chunk);
  g.prefill_chunk = f.prefill_chunk;
  return g;
}

std::string describe_sampling(const models::GenerationConfig& g) {
  if (!g.do_sample) return "greedy";
  std::ostringstream s;
  s << "sampling: temperature " << g.temperature << ", top-k " << g.top_k << ", top-p " << g.top_p << ", seed " << g.seed;
  return s.str();
}

PreparedModel prepare_model(const LoadFlags& f) {
  using namespace ferry::models;
  // config.json is read once, the meta model built once and the checkpoint opened once (shards
  // mapped, headers parsed), then all three are handed down.
  ModelConfig config = load_config(f.model_dir);
  if (!f.attention.empty()) config.attn_implementation = f.attention;
  const c10::optional<c10::ScalarType> weight_dtype =
      f.dtype.empty() ? c10::nullopt : c10::optional<c10::ScalarType>(parse_dtype(f.dtype));
  std::shared_ptr<CausalLM> empty = create_empty_model(config, weight_dtype);
  io::Checkpoint checkpoint = check_checkpoint_matches(*empty, open_model_checkpoint(f.model_dir));
  const int64_t positions = config.max_position_embeddings;
  FERRY_CHECK(positions > 0, f.model_dir, "/config.json: max_position_embeddings must be positive, got ", positions);
  return PreparedModel{std::move(config), std::move(empty), std::move(checkpoint)};
}

ScratchOffloadFolder::ScratchOffloadFolder() {
  std::string pattern = (std::filesystem::temp_directory_path() / "ferry-offload-XXXXXX").string();
  FERRY_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot make a folder for the disk-placed weights under ",
              std::filesystem::temp_directory_path().string(), ": ", std::strerror(errno),
              ". Give one with --offload-folder");
  path_ = pattern;
}

ScratchOffloadFolder::~ScratchOffloadFolder() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Session load_session(PreparedModel prepared, const LoadFlags& f, ProgressStyle progress_style,
                     const std::optional<RunShape>& run) {
  using namespace ferry::models;
  Session session;
  LoadModelOptions lo;
  lo.device_map = f.device_map;
  lo.max_memory = f.max_memory;
  lo.plan_by_expert = !f.whole_layers;
  lo.offload_folder = f.offload_folder;
  if (prepared.checkpoint.format() == io::CheckpointFormat::torch && !f.device_map.empty() && f.offload_folder.empty()) {
    session.scratch = std::make_unique<ScratchOffloadFolder>();
    lo.offload_folder = session.scratch->path();
    if (!f.quiet)
      std::cerr << "note: a PyTorch .bin checkpoint cannot be read in place: any disk-placed weights are written to "
                << session.scratch->path() << " (removed at the end; --offload-folder to keep them)\n";
  }
  if (!f.dtype.empty()) lo.dtype = parse_dtype(f.dtype);
  if (f.prefetch_bytes >= 0) lo.prefetch_bytes = f.prefetch_bytes;
  lo.disk_read = parse_disk_read(f.disk_read);
  if (!f.direct_read_budget.empty()) {
    lo.direct_read_budget_bytes = parse_byte_size(f.direct_read_budget);
    FERRY_CHECK(lo.direct_read_budget_bytes > 0, "--direct-read-budget must be more than 0, got '",
                f.direct_read_budget, "'");
  }
  if (!f.expert_cache.empty()) {
    lo.expert_cache_bytes = parse_byte_size(f.expert_cache);
    FERRY_CHECK(lo.expert_cache_bytes >= 0, "--expert-cache must not be negative, got '", f.expert_cache, "'");
  }
  lo.expert_cache_policy = f.expert_cache_policy == "recency" ? StreamerOptions::ExpertCachePolicy::recency
                                                               : StreamerOptions::ExpertCachePolicy::frequency;
  lo.cpu_experts = parse_cpu_experts(f.cpu_experts);
  // Several processes (RANK/WORLD_SIZE, as torchrun or `ferry launch` set them): this one joins the
  // group first (a missing peer is reported before minutes of loading), then loads its stage only.
  const std::optional<DistributedEnv> env = DistributedEnv::from_environment();
  const bool pipeline = env && env->world_size > 1;
  std::shared_ptr<ProcessGroup> group;  // held by the PipelineModel once loaded
  FERRY_CHECK(pipeline || f.max_memory.empty() || !f.device_map.empty(), "--max-memory needs --device-map (e.g. auto)");
  if (pipeline) {
    // A strategy plans this rank's stage over its own budget (offload inside the stage); a map file
    // names one process's placement of the whole model, which no rank holds.
    const std::optional<Strategy> strategy = f.device_map.empty() ? std::nullopt : find_strategy(f.device_map);
    FERRY_CHECK(f.device_map.empty() || strategy, "--device-map across ", env->world_size, " ranks takes a strategy "
                "(auto, balanced, balanced_low_0, sequential) that each rank applies to its own stage over its own "
                "--max-memory, not a map file ('", f.device_map, "')");
    group = std::make_shared<ProcessGroup>(ProcessGroup::connect(*env));
    const ModelConfig& c = prepared.config;
    const std::string model = c.architecture + ", " + std::to_string(c.num_hidden_layers) + " layers, hidden " +
                              std::to_string(c.hidden_size);
    const std::vector<std::string> models = group->exchange("model", model);
    for (size_t r = 0; r < models.size(); ++r)
      FERRY_CHECK(models[r] == model, "rank ", r, " runs ", models[r], " but rank ", env->rank, " runs ", model,
                  ": every rank must run the same model");
    // A rank's share of the layers is its memory budget: --max-memory, else its part of what this host
    // has free (its GPU(s) and 1 / LOCAL_WORLD_SIZE of the RAM: the host's ranks share it).
    const MaxMemory budgets = f.max_memory.empty()
                                  ? local_rank_budget(get_max_memory(), env->local_rank, env->local_world_size)
                                  : parse_max_memory(f.max_memory);
    double mine = 0;
    for (const auto& b : budgets)
      if (!b.device.is_disk()) mine += static_cast<double>(b.bytes);
    std::vector<double> shares;
    for (const std::string& text : group->exchange("layer_share", std::to_string(mine)))
      shares.push_back(std::stod(text));
    // The last stage's head costs a matmul of vocab x hidden per position it runs: that many layers'
    // worth of work less for it, so that the stages take equally long. In a decoding step it runs
    // every prompt's position as the layers do; in a prefill only the last of each prompt
    // (head_work_for_run weighs the two for this run). Rank 0's figure is every rank's.
    int64_t layer_parameters = 0;
    for (const auto& [name, t] : prepared.empty->submodule(prepared.empty->decoder_layer_names().front()).named_parameters())
      layer_parameters += t.numel();
    double head_layers = static_cast<double>(c.vocab_size * c.hidden_size) /
                         static_cast<double>(std::max<int64_t>(layer_parameters, 1));
    if (run) {
      bool gpu = false;
      for (const auto& b : budgets) gpu = gpu || b.device.is_accelerator();
      head_layers = head_work_for_run(head_layers, *run, gpu ? kGpuWeightReadPositions : kCpuWeightReadPositions);
    }
    head_layers = std::stod(group->exchange("head_work", detail::concat(head_layers)).front());
    session.stage = split_stages(c.num_hidden_layers, shares, head_layers)[static_cast<size_t>(env->rank)];
    if (strategy) {
      PlanOptions plan;
      plan.max_memory = budgets;
      plan.plan_by_expert = lo.plan_by_expert;
      lo.device_map_entries = plan_stage_device_map(*prepared.empty, *session.stage, *strategy, plan);
    } else {
      lo.device_map_entries = stage_device_map(*prepared.empty, *session.stage);
    }
    if (!f.quiet)
      std::cerr << "rank " << env->rank << " of " << env->world_size << ": decoder layers " << session.stage->first_layer
                << "-" << session.stage->end_layer - 1 << " of " << c.num_hidden_layers << " (budget "
                << format_bytes(mine) << (strategy ? ", planned " + f.device_map + " within it" : std::string())
                << "; the head worth " << detail::concat(std::setprecision(2), head_layers) << " layers of work "
                << (run ? "for this run" : "in decoding") << ")\n";
  }
  ProgressDisplay progress(f.quiet ? ProgressStyle::none : progress_style,
                           format_bytes(static_cast<double>(prepared.checkpoint.total_bytes())) + " in " +
                               std::to_string(prepared.checkpoint.files().size()) + " shard(s) from " + f.model_dir);
  // Ctrl-C while loading stops after the weight being loaded (a large model takes minutes).
  install_interrupt_handlers();
  lo.on_progress = [&](const LoadProgress& p) {
    progress.update(p);
    throw_if_interrupted();
  };
  session.loaded = load_model(std::move(prepared.empty), prepared.checkpoint, lo);
  if (session.stage) {
    auto pipeline = std::make_shared<PipelineModel>(session.loaded.model, group, *session.stage);
    pipeline->set_stop_request(interrupt_signal);  // Ctrl-C on any rank stops every rank after the same step
    session.loaded.model = pipeline;
  }
  // Decided now, with the model loaded: the free memory it measures counts the resident weights.
  session.streamer = session.loaded.dispatch ? session.loaded.dispatch->streamer : nullptr;
  if (session.streamer) session.disk_reads = session.streamer->disk_read_plan();
  return session;
}

void print_model_info(std::ostream& info, const Session& session, const std::string& model_dir) {
  const models::ModelConfig& c = session.loaded.model->config();
  info << "model: " << c.architecture << " (" << c.num_hidden_layers << " layers, hidden " << c.hidden_size
       << ", vocab " << c.vocab_size << ") " << dtype_name(c.dtype) << " from " << model_dir << "\n";
  info << "placement:";
  for (const auto& [p, b] : session.loaded.bytes_per_placement) info << "  " << p.str() << " " << format_bytes(static_cast<double>(b));
  info << "\n";
  const DeviceMap& map = session.loaded.device_map;
  if (map.size() > 16) {  // a mixture of experts planned by the expert: thousands of keys
    std::map<Placement, int64_t> keys;
    for (const auto& entry : map) ++keys[entry.second];
    info << "device map: " << map.size() << " keys:";
    for (const auto& [p, n] : keys) info << " " << n << " on " << p.hf_str() << ",";
    info << " listed by `ferry plan`\n";
  } else if (map.size() > 1 || !map.contains("")) {
    info << "device map: " << map.to_json() << "\n";
  }
  if (session.disk_reads && session.disk_reads->file_bytes > 0) info << "disk reads: " << session.disk_reads->reason << "\n";
  if (!session.loaded.cpu_experts.explanation.empty()) info << "experts: " << session.loaded.cpu_experts.explanation << "\n";
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

int64_t rss_anon_bytes() {
  const long long kb = proc_number("/proc/self/status", "RssAnon: %lld kB");
  return kb < 0 ? -1 : kb * 1024;
}

int64_t storage_bytes_read() { return proc_number("/proc/self/io", "read_bytes: %lld"); }

int64_t peak_gpu_bytes() {
#if defined(FERRY_WITH_CUDA)
  if (at::hasCUDA()) return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;  // [0]: all pools
#endif
  return -1;
}

}  // namespace ferry::cli
