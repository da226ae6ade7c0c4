#pragma once
/// \file
/// What `ferry run` and `ferry chat` share: the flags that say how to load a model folder and how to
/// sample from it, loading with a progress display, and the generation settings those flags and the
/// folder's generation_config.json give.
///
///     LoadFlags load;  SamplingFlags sampling;
///     add_load_flags(cmd, load);  add_sampling_flags(cmd, sampling, /*default_max_new_tokens=*/20);
///     ...
///     PreparedModel prepared = prepare_model(load);             // config, meta model, checkpoint: checked
///     Session session = load_session(std::move(prepared), load, ProgressStyle::automatic);
///     GenerationConfig g = generation_settings(sampling, load.model_dir, session.loaded.model->config());

#include "ferry/hooks/weight_streamer.h"
#include "ferry/io/checkpoint.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pipeline.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace ferry::cli {

/// How to load: the model folder and where its weights go.
struct LoadFlags {
  std::string model_dir;
  std::string device_map;
  std::string max_memory;
  bool whole_layers = false;
  std::string offload_folder;
  std::string dtype;
  std::string attention;
  int64_t prefetch_bytes = -1;
  std::string disk_read = "auto";
  std::string direct_read_budget;
  std::string expert_cache;
  std::string expert_cache_policy = "frequency";
  std::string cpu_experts = "auto";
  bool quiet = false;
};

/// Registers MODEL_DIR and the placement flags (--device-map, --max-memory, --offload-folder, --dtype,
/// --attention, --prefetch-bytes, --disk-read, --direct-read-budget, --quiet).
void add_load_flags(CLI::App* cmd, LoadFlags& flags);

/// How to sample. Unset values come from the folder's generation_config.json, as in transformers.
struct SamplingFlags {
  bool greedy = false;
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::string seed = "0";
  std::optional<int64_t> max_new_tokens;
  std::vector<std::string> stop;
  int64_t prefill_chunk = 0;
};

/// Registers --greedy, --temperature, --top-k, --top-p, --seed, --max-new-tokens, --stop and --prefill-chunk.
void add_sampling_flags(CLI::App* cmd, SamplingFlags& flags, int64_t default_max_new_tokens);

/// The generation settings: generation_config.json's (load_generation_config), then the flags: any of
/// --temperature/--top-k/--top-p turns sampling on, --greedy turns it off. Checks every value.
models::GenerationConfig generation_settings(const SamplingFlags& flags, const std::string& model_dir,
                                             const models::ModelConfig& config, int64_t default_max_new_tokens);

/// "greedy" or "sampling: temperature 0.6, top-k 20, top-p 0.95, seed 0", for the info line.
std::string describe_sampling(const models::GenerationConfig& g);

/// A model folder read and checked, before any weight is: config.json, the meta model, the opened
/// checkpoint matched to it.
struct PreparedModel {
  models::ModelConfig config;
  std::shared_ptr<models::CausalLM> empty;
  io::Checkpoint checkpoint;
};

/// Reads MODEL_DIR's config (with --attention), builds the meta model in --dtype and opens the checkpoint.
PreparedModel prepare_model(const LoadFlags& flags);

/// A folder for the disk-placed weights of a checkpoint that cannot be read in place (a PyTorch
/// .bin), made under TMPDIR when the user named none, and removed with everything in it at the end.
class ScratchOffloadFolder {
 public:
  ScratchOffloadFolder();
  ~ScratchOffloadFolder();
  ScratchOffloadFolder(const ScratchOffloadFolder&) = delete;
  ScratchOffloadFolder& operator=(const ScratchOffloadFolder&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// Where loading progress goes (stderr): a bar redrawn in place on a terminal, one line per phase
/// otherwise, or nothing.
enum class ProgressStyle { automatic, lines, none };

/// A loaded model and what the run reports about it.
struct Session {
  std::unique_ptr<ScratchOffloadFolder> scratch;  ///< before `loaded`: removed after the model lets go
  models::LoadedModel loaded;
  /// The streamer of offloaded weights (null for a resident model) and how it reads disk weights.
  std::shared_ptr<WeightStreamer> streamer;
  std::optional<DiskReadPlan> disk_reads;
  /// Across several processes: this rank's stage (loaded.model is then a PipelineModel).
  std::optional<PipelineStage> stage;
  /// False on ranks other than 0 of a pipeline: every rank has the same tokens, rank 0 prints them.
  bool prints_results() const { return !stage || stage->is_first(); }
};

/// Loads the prepared model as the flags say (Ctrl-C stops between weights), showing progress.
/// `run`: what the generation will ask, when known (ferry run), so that pipeline stages are balanced
/// for it (head_work_for_run); without it (ferry chat), for decoding.
Session load_session(PreparedModel prepared, const LoadFlags& flags, ProgressStyle progress,
                     const std::optional<RunShape>& run = std::nullopt);

/// The "model: ...", "placement: ...", "device map: ..." and "disk reads: ..." lines.
void print_model_info(std::ostream& out, const Session& session, const std::string& model_dir);

/// Peak resident memory of the process, from getrusage.
int64_t peak_rss_bytes();
/// Anonymous (private) resident memory now, from /proc/self/status: peak RSS also counts the pages
/// of disk-offloaded weights mapped from the checkpoint, which are page cache, not the process's own.
int64_t rss_anon_bytes();
/// Bytes this process has caused to be read from storage so far (read_bytes of /proc/self/io, every
/// thread): page faults on mapped files and O_DIRECT reads alike, not what the page cache served.
/// -1 where the kernel does not keep the count.
int64_t storage_bytes_read();
/// The most GPU memory LibTorch's allocator held for tensors at once on cuda:0; -1 without a GPU.
int64_t peak_gpu_bytes();

}  // namespace ferry::cli
