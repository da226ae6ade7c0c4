// ferry run MODEL_DIR --ids "1 2 3;4 5 6": load (resident or dispatched), generate, report.

#include "commands.h"
#include "interrupt.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/io_counters.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"
#include "ferry/tokenizers/stream_decoder.h"
#include "ferry/tokenizers/tokenizer.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <nlohmann/json.hpp>
#if defined(FERRY_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

namespace ferry::cli {
namespace {

struct RunOptions {
  std::string model_dir;
  std::string ids;
  int64_t max_new_tokens = 20;
  std::string device_map;
  std::string max_memory;
  std::string offload_folder;
  std::string dtype;
  std::string attention;
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  std::string seed = "0";
  bool json = false;
  std::string logits_out;
  int64_t prefetch_bytes = -1;
  std::string prompt;
  bool keep_special = false;
  std::string disk_read = "auto";
  std::string direct_read_budget;
};

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

// "1 2 3;4 5 6" -> [2, 3] int64; every prompt the same length.
at::Tensor parse_ids(const std::string& text) {
  std::vector<std::vector<int64_t>> prompts(1);
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FERRY_CHECK(used == token.size(), "--ids: '", token, "' is not an integer token id");
    prompts.back().push_back(v);
    token.clear();
  };
  for (char c : text) {
    if (c == ';') {
      flush();
      prompts.emplace_back();
    } else if (c == ' ' || c == ',' || c == '\t') {
      flush();
    } else {
      token += c;
    }
  }
  flush();
  for (size_t i = 0; i < prompts.size(); ++i) {
    FERRY_CHECK(!prompts[i].empty(), "--ids: prompt ", i, " is empty; give ids like \"1 2 3;4 5 6\"");
    FERRY_CHECK(prompts[i].size() == prompts[0].size(), "--ids: prompts must have equal lengths (no padding yet); prompt 0 has ",
                prompts[0].size(), " ids, prompt ", i, " has ", prompts[i].size());
  }
  std::vector<int64_t> flat;
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  return at::tensor(flat, at::kLong).view({static_cast<int64_t>(prompts.size()), static_cast<int64_t>(prompts[0].size())});
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

// The most GPU memory LibTorch's allocator held for tensors at once on cuda:0; -1 without a GPU.
int64_t peak_gpu_bytes() {
#if defined(FERRY_WITH_CUDA)
  if (at::hasCUDA()) return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;  // [0]: all pools
#endif
  return -1;
}

// A loading status line on stderr, only when stderr is a terminal: load_checkpoint_in_model reports
// only its start and end, so this shows what is being loaded and then how long it took.
class ProgressLine {
 public:
  ProgressLine(bool enabled, std::string what) : enabled_(enabled), what_(std::move(what)) {}
  void update(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    if (done == 0) {
      start_ = std::chrono::steady_clock::now();
      std::fprintf(stderr, "loading %s ...", what_.c_str());
    } else if (done == total) {
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      std::fprintf(stderr, "\rloading %s ... done in %.2f s\n", what_.c_str(), s);
    }
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string what_;
  std::chrono::steady_clock::time_point start_;
};

// Anonymous (private) resident memory now, from /proc/self/status: peak RSS also counts the pages
// of disk-offloaded weights mapped from the checkpoint, which are page cache, not the process's own.
int64_t rss_anon_bytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long long kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "RssAnon: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

std::string join_ids(const at::Tensor& row) {
  std::ostringstream s;
  for (int64_t i = 0; i < row.size(0); ++i) s << (i ? " " : "") << row[i].item<int64_t>();
  return s.str();
}

// A folder for the disk-placed weights of a checkpoint that cannot be read in place (a PyTorch
// .bin), made under TMPDIR when the user named none, and removed with everything in it at the end.
class ScratchOffloadFolder {
 public:
  ScratchOffloadFolder() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ferry-offload-XXXXXX").string();
    FERRY_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot make a folder for the disk-placed weights under ",
                std::filesystem::temp_directory_path().string(), ": ", std::strerror(errno),
                ". Give one with --offload-folder");
    path_ = pattern;
  }
  ~ScratchOffloadFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void run(const RunOptions& o) {
  using namespace ferry::models;
  // Text in, text out: the prompt is encoded with the model's tokenizer.json and the tokens are
  // decoded as they come (UTF-8 safe across tokens); with --ids, ids in and ids out.
  FERRY_CHECK(o.prompt.empty() != o.ids.empty(), o.ids.empty() ? "give --prompt \"text\" or --ids \"1 2 3\""
                                                                 : "give --prompt or --ids, not both");
  std::optional<tokenizers::Tokenizer> tokenizer;
  at::Tensor ids;
  if (!o.prompt.empty()) {
    tokenizer = tokenizers::Tokenizer::from_model_dir(o.model_dir);
    std::vector<int64_t> encoded = tokenizer->encode(o.prompt);
    FERRY_CHECK(!encoded.empty(), "--prompt encodes to no tokens with ", tokenizer->source());
    ids = at::tensor(encoded, at::kLong).unsqueeze(0);
  } else {
    ids = parse_ids(o.ids);
  }
  const bool text_mode = tokenizer && !o.json;
  // With text, stdout carries the text alone; what ferry says about the run goes to stderr.
  std::ostream& info = text_mode ? std::cerr : std::cout;
  // Everything the user can get wrong is checked before any weight is read.
  // config.json is read once, the meta model built once and the checkpoint opened once (shards
  // mapped, headers parsed), then all three are handed down.
  ModelConfig config = load_config(o.model_dir);
  if (!o.attention.empty()) config.attn_implementation = o.attention;
  const c10::optional<c10::ScalarType> weight_dtype =
      o.dtype.empty() ? c10::nullopt : c10::optional<c10::ScalarType>(parse_dtype(o.dtype));
  std::shared_ptr<CausalLM> empty = create_empty_model(config, weight_dtype);
  check_input_ids(*empty, ids);
  const io::Checkpoint checkpoint = check_checkpoint_matches(*empty, open_model_checkpoint(o.model_dir));
  GenerationConfig g;
  g.max_new_tokens = o.max_new_tokens;
  g.do_sample = !o.greedy && (o.temperature != 1.0 || o.top_k != 0 || o.top_p != 1.0);
  g.temperature = o.temperature;
  g.top_k = o.top_k;
  g.top_p = o.top_p;
  g.seed = parse_seed(o.seed);
  g.eos_token_ids = config.eos_token_ids;
  g.pad_token_id = config.pad_token_id;
  g.return_prompt_logits = !o.logits_out.empty();
  FERRY_CHECK(o.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got ", o.max_new_tokens);
  // Past the model's positions a run is slow and meaningless; far past them it is a typo.
  const int64_t positions = config.max_position_embeddings;
  FERRY_CHECK(positions > 0, o.model_dir, "/config.json: max_position_embeddings must be positive, got ", positions);
  FERRY_CHECK(o.max_new_tokens <= 16 * positions, "--max-new-tokens ", o.max_new_tokens, " is more than 16 times the ",
              positions, " positions this model was trained for; ask for fewer");
  if (ids.size(1) + o.max_new_tokens > positions)
    log_warning(detail::concat("a prompt of ", ids.size(1), " tokens plus ", o.max_new_tokens,
                               " new ones goes past the model's max_position_embeddings (", positions,
                               "): text beyond it is usually degraded"));
  if (g.do_sample) {
    FERRY_CHECK(g.temperature > 0, "--temperature must be > 0, got ", g.temperature);
    FERRY_CHECK(g.top_p > 0 && g.top_p <= 1, "--top-p must be in (0, 1], got ", g.top_p);
    FERRY_CHECK(g.top_k >= 0, "--top-k must be >= 0, got ", g.top_k);
  }

  LoadModelOptions lo;
  lo.device_map = o.device_map;
  lo.max_memory = o.max_memory;
  lo.offload_folder = o.offload_folder;
  std::unique_ptr<ScratchOffloadFolder> scratch;
  if (checkpoint.format() == io::CheckpointFormat::torch && !o.device_map.empty() && o.offload_folder.empty()) {
    scratch = std::make_unique<ScratchOffloadFolder>();
    lo.offload_folder = scratch->path();
    std::cerr << "note: a PyTorch .bin checkpoint cannot be read in place: any disk-placed weights are written to "
              << scratch->path() << " (removed at the end; --offload-folder to keep them)\n";
  }
  lo.dtype = weight_dtype;
  if (o.prefetch_bytes >= 0) lo.prefetch_bytes = o.prefetch_bytes;
  lo.disk_read = parse_disk_read(o.disk_read);
  if (!o.direct_read_budget.empty()) {
    lo.direct_read_budget_bytes = parse_byte_size(o.direct_read_budget);
    FERRY_CHECK(lo.direct_read_budget_bytes > 0, "--direct-read-budget must be more than 0, got '",
                o.direct_read_budget, "'");
  }
  FERRY_CHECK(!(!o.max_memory.empty() && o.device_map.empty()), "--max-memory needs --device-map (e.g. auto)");
  ProgressLine progress(isatty(STDERR_FILENO) && !o.json,
                        format_bytes(static_cast<double>(checkpoint.total_bytes())) + " in " +
                            std::to_string(checkpoint.files().size()) + " shard(s) from " + o.model_dir);
  // Ctrl-C while loading stops after the weight being loaded (a large model takes minutes).
  install_interrupt_handlers();
  lo.on_progress = [&](uint64_t done, uint64_t total) {
    progress.update(done, total);
    throw_if_interrupted();
  };
  LoadedModel loaded = load_model(std::move(empty), checkpoint, lo);

  const ModelConfig& c = loaded.model->config();
  std::string dtype = dtype_name(c.dtype);
  // Decided now, with the model loaded: the free memory it measures counts the resident weights.
  std::shared_ptr<WeightStreamer> streamer = loaded.dispatch ? loaded.dispatch->streamer : nullptr;
  const std::optional<DiskReadPlan> disk_reads =
      streamer ? std::optional<DiskReadPlan>(streamer->disk_read_plan()) : std::nullopt;
  if (!o.json) {
    info << "model: " << c.architecture << " (" << c.num_hidden_layers << " layers, hidden " << c.hidden_size
         << ", vocab " << c.vocab_size << ") " << dtype << " from " << o.model_dir << "\n";
    info << "placement:";
    for (const auto& [p, b] : loaded.bytes_per_placement) info << "  " << p.str() << " " << format_bytes(static_cast<double>(b));
    info << "\n";
    if (loaded.device_map.size() > 1 || !loaded.device_map.contains(""))
      info << "device map: " << loaded.device_map.to_json() << "\n";
    if (disk_reads && disk_reads->file_bytes > 0) info << "disk reads: " << disk_reads->reason << "\n";
    if (!text_mode) info << "generated:\n";
    info << std::flush;
  }
  // Tokens are written as they are produced (one prompt: on its line; several: each line at the
  // end); Ctrl-C stops after the current token and keeps what was generated.
  const int64_t batch = ids.size(0);
  const bool stream = !o.json && batch == 1 && !text_mode;
  std::vector<std::vector<int64_t>> produced(static_cast<size_t>(batch));
  if (stream) std::cout << "  [" << join_ids(ids[0]) << "] ->" << std::flush;
  std::optional<tokenizers::StreamDecoder> decoder;
  if (text_mode) decoder.emplace(*tokenizer, /*skip_special_tokens=*/!o.keep_special);
  // A model's vocabulary may be larger than its tokenizer's (padded for speed): ids the tokenizer
  // does not know have no text; they are left out of it, as transformers' decode does, and counted.
  int64_t unknown_ids = 0;
  auto known = [&](int64_t id) {
    const bool ok = tokenizer->id_to_token(id).has_value();
    if (!ok) ++unknown_ids;
    return ok;
  };
  g.on_step = [&](int64_t, const at::Tensor& next) {
    for (int64_t b = 0; b < batch; ++b) produced[static_cast<size_t>(b)].push_back(next[b].item<int64_t>());
    if (stream) std::cout << ' ' << produced[0].back() << std::flush;
    if (decoder && known(produced[0].back())) std::cout << decoder->push(produced[0].back()) << std::flush;
    throw_if_interrupted();
  };
  int64_t streamed_before = loaded.dispatch && loaded.dispatch->streamer ? loaded.dispatch->streamer->stats().bytes_loaded : 0;
  GenerationOutput out;
  try {
    out = generate(*loaded.model, ids, g);
  } catch (const Interrupted&) {
    if (o.json) {
      nlohmann::json j;
      j["model"] = o.model_dir;
      j["interrupted"] = true;
      j["generated"] = produced;
      std::cout << j.dump() << std::endl;
    } else if (stream || decoder) {
      if (decoder) std::cout << decoder->finish();
      std::cout << '\n';
    } else {
      for (int64_t b = 0; b < batch; ++b) {
        std::cout << "  [" << join_ids(ids[b]) << "] ->";
        for (int64_t t : produced[static_cast<size_t>(b)]) std::cout << ' ' << t;
        std::cout << '\n';
      }
    }
    throw;
  } catch (const c10::Error& e) {
    // E.g. float16 matmuls, which LibTorch 1.13 lacks on the CPU.
    FERRY_FAIL("LibTorch could not run this ", loaded.model->config().architecture, " in ",
               dtype_name(loaded.model->config().dtype), ": ", e.what_without_backtrace(),
               ". Try --dtype float32 or bfloat16");
  }
  int64_t streamed = loaded.dispatch && loaded.dispatch->streamer
                         ? loaded.dispatch->streamer->stats().bytes_loaded - streamed_before
                         : 0;
  int64_t forwards = out.new_tokens > 0 ? out.new_tokens : (g.return_prompt_logits ? 1 : 0);
  double moved_per_token = forwards > 0 ? static_cast<double>(streamed) / static_cast<double>(forwards) : 0.0;
  if (moved_per_token == 0 && loaded.offloaded_bytes_per_forward > 0) moved_per_token = static_cast<double>(loaded.offloaded_bytes_per_forward);
  double decode_ms = out.decode_steps > 0 ? 1000.0 * out.decode_seconds / static_cast<double>(out.decode_steps) : 0.0;

  if (!o.logits_out.empty())
    io::save_safetensors(o.logits_out, {{"logits", out.prompt_logits.contiguous()}}, {{"format", "pt"}});

  if (o.json) {
    nlohmann::json j;
    j["model"] = o.model_dir;
    j["architecture"] = c.architecture;
    j["dtype"] = dtype;
    j["attention"] = c.attn_implementation;
    j["libtorch"] = torch_version();
    j["device_map"] = nlohmann::json::parse(loaded.device_map.to_json());
    nlohmann::json per = nlohmann::json::object();
    for (const auto& [p, b] : loaded.bytes_per_placement) per[p.str()] = b;
    j["bytes_per_placement"] = per;
    j["prompt"] = nlohmann::json::array();
    j["generated"] = nlohmann::json::array();
    for (int64_t b = 0; b < out.sequences.size(0); ++b) {
      std::vector<int64_t> prompt, gen;
      for (int64_t i = 0; i < out.sequences.size(1); ++i)
        (i < ids.size(1) ? prompt : gen).push_back(out.sequences[b][i].item<int64_t>());
      j["prompt"].push_back(prompt);
      j["generated"].push_back(gen);
    }
    j["new_tokens"] = out.new_tokens;
    if (tokenizer) {
      std::vector<int64_t> generated;
      for (int64_t id : j["generated"][0].get<std::vector<int64_t>>())
        if (known(id)) generated.push_back(id);
      j["prompt_text"] = o.prompt;
      j["text"] = tokenizer->decode(generated, !o.keep_special);
      j["ids_without_text"] = unknown_ids;
    }
    const int64_t gpu_peak = peak_gpu_bytes();
    j["timings"] = {{"load_s", loaded.load_seconds},
                    {"prefill_s", out.prefill_seconds},
                    {"decode_ms_per_token", decode_ms},
                    {"decode_steps", out.decode_steps},
                    {"peak_rss_bytes", peak_rss_bytes()},
                    {"peak_gpu_bytes", gpu_peak >= 0 ? nlohmann::json(gpu_peak) : nlohmann::json()},
                    {"rss_anon_bytes", rss_anon_bytes()},
                    {"offloaded_bytes_per_token", moved_per_token}};
    if (disk_reads) {
      const StreamerStats s = streamer->stats();
      j["disk_read"] = {{"mode", disk_read_name(disk_reads->mode)},
                        {"reason", disk_reads->reason},
                        {"file_bytes", disk_reads->file_bytes},
                        {"available_bytes", disk_reads->available_bytes},
                        {"window_bytes", disk_reads->window_bytes},
                        {"buffer_bytes", disk_reads->buffer_bytes},
                        {"buffer_peak_bytes", streamer->read_buffer_peak_bytes()},
                        {"direct_reads", s.direct_reads},
                        {"direct_bytes_read", s.direct_bytes_read},
                        {"read_buffers_made", s.read_buffers_made}};
    }
    j["io"] = {{"files_mapped", io::io_counters().files_mapped.load()},
               {"safetensors_headers_parsed", io::io_counters().safetensors_headers_parsed.load()}};
    if (!o.logits_out.empty()) j["logits_out"] = o.logits_out;
    std::cout << j.dump() << std::endl;
    return;
  }
  if (decoder) {
    std::cout << decoder->finish() << '\n' << std::flush;
    if (unknown_ids > 0)
      std::cerr << "note: " << unknown_ids << " generated id(s) are not in " << tokenizer->source() << " ("
                << tokenizer->vocab_size() << " tokens; the model's vocab_size is " << c.vocab_size
                << "): they have no text and were left out of it\n";
  } else if (stream) {
    std::cout << '\n';
  } else {
    for (int64_t b = 0; b < out.sequences.size(0); ++b)
      std::cout << "  [" << join_ids(ids[b]) << "] -> "
                << join_ids(out.sequences[b].narrow(0, ids.size(1), out.sequences.size(1) - ids.size(1))) << "\n";
  }
  std::fprintf(text_mode ? stderr : stdout,
              "timings: load %.3f s, prefill %.3f s, decode %.2f ms/token (%lld steps), peak RSS %s (anonymous now %s), "
              "offloaded bytes moved per token %s\n",
              loaded.load_seconds, out.prefill_seconds, decode_ms, static_cast<long long>(out.decode_steps),
              format_bytes(static_cast<double>(peak_rss_bytes())).c_str(),
              format_bytes(static_cast<double>(rss_anon_bytes())).c_str(), format_bytes(moved_per_token).c_str());
  if (!o.logits_out.empty()) info << "prompt logits written to " << o.logits_out << "\n";
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", kRunDescription);
  cmd->add_option("model_dir", o->model_dir, "Folder with config.json and safetensors weights")->required();
  cmd->add_option("--prompt", o->prompt,
                  "Prompt text, encoded with the model's tokenizer.json; the answer is decoded to text as it comes "
                  "(timings and the rest on stderr)");
  cmd->add_option("--ids", o->ids, "Prompt token ids instead of text: \"1 2 3\" or several equal-length prompts \"1 2 3;4 5 6\"");
  cmd->add_flag("--keep-special", o->keep_special, "With --prompt: keep special tokens (EOS, ...) in the text");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate per prompt (default 20)");
  cmd->add_option("--device-map", o->device_map,
                  "auto | balanced | balanced_low_0 | sequential | MAP.json (default: resident on the CPU)");
  cmd->add_option("--max-memory", o->max_memory, "Budgets for the planner, e.g. 0=4GiB,cpu=8GiB");
  cmd->add_option("--offload-folder", o->offload_folder, "Write disk-placed weights to this folder first, as Accelerate does (default: read them in place from the checkpoint)");
  cmd->add_option("--dtype", o->dtype, "float32 | bfloat16 | float16 (default: the config's)");
  cmd->add_option("--attention", o->attention,
                  "sdpa | eager: fused at::scaled_dot_product_attention (the default with LibTorch 2.x) or the explicit math");
  cmd->add_flag("--greedy", o->greedy, "Greedy decoding (the default unless sampling options are given)");
  cmd->add_option("--temperature", o->temperature, "Sampling temperature");
  cmd->add_option("--top-k", o->top_k, "Sample among the k most likely tokens");
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling threshold");
  cmd->add_option("--seed", o->seed, "Seed of the sampling generator");
  cmd->add_flag("--json", o->json, "Print one JSON object instead of text");
  cmd->add_option("--logits-out", o->logits_out, "Write the prompt's float32 logits (key \"logits\") to this .safetensors file");
  cmd->add_option("--prefetch-bytes", o->prefetch_bytes, "Weight streamer prefetch budget in bytes (0: load on demand)");
  cmd->add_option("--disk-read", o->disk_read,
                  "How disk-placed weights are read: auto (direct when they do not fit in free memory or the "
                  "cgroup limit), mapped (in place, through the page cache) or direct (O_DIRECT into bounded buffers)")
      ->check(CLI::IsMember({"auto", "mapped", "direct"}));
  cmd->add_option("--direct-read-budget", o->direct_read_budget,
                  "Memory direct reads may hold, e.g. 1GiB (default: what is free less 512 MiB)");
  cmd->callback([o] { run(*o); });
}

}  // namespace ferry::cli
