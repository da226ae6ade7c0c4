#pragma once
/// \file
/// The streamer: prefetches offloaded weights in execution order. Callers (in ferry, the
/// offloading hooks of a dispatched model, which share one) register each offloaded
/// module once with a plain description of its weights (StreamedModule), then report every run of
/// it: on_forward() before, fetch() for each tensor, release() after. The first pass records the
/// order in which modules run; from then on, while module i computes, the weights of modules
/// i+1, i+2, ... (wrapping round to the start of the next pass) are loaded within a byte budget
/// on I/O threads, so that a forward costs max(load time, compute time) rather than their sum.
///
///     using namespace ferry;
///     auto weights = io::make_checkpoint_weights_map(io::Checkpoint::open("/models/mlp"));
///     StreamerOptions options;
///     options.prefetch_bytes = int64_t{256} << 20;   // at most this much loaded ahead
///     WeightStreamer streamer(options);
///     std::vector<StreamedModuleId> layers;
///     for (int i = 0; i < 4; ++i) {
///       std::string w = "layers." + std::to_string(i) + ".weight";
///       layers.push_back(streamer.add_module(
///           {weights, {{w, at::kFloat}}, c10::kCPU, static_cast<int64_t>(weights->info(w).nbytes)}));
///     }
///     at::Tensor h = input;
///     for (int pass = 0; pass < 3; ++pass)      // pass 0 records the order; later ones prefetch
///       for (StreamedModuleId layer : layers) {
///         streamer.on_forward(layer);            // checks the order, loads the next layers ahead
///         at::Tensor w = streamer.fetch(layer, 0, c10::kCPU);  // == weights->load(name, device, dtype)
///         h = at::relu(at::matmul(h, w.t()));
///         streamer.release(layer);               // w no longer needed: the window moves on
///       }
///     streamer.stats();   // loads served from prefetch, on demand, bytes moved, relearns
///     for (StreamedModuleId layer : layers) streamer.remove_module(layer);
///
/// dispatch_model, cpu_offload, disk_offload and load_checkpoint_and_dispatch create one per
/// dispatched model by default and hand it to the hooks they attach.
///
/// On the CPU, a disk-offloaded weight is used straight from its mapped file: prefetching brings
/// its pages in (and checks first, cheaply, whether they already are). For an accelerator, the
/// I/O threads copy weights on a copy stream of their own, from page-locked memory (CPU-offloaded
/// weights are pinned at dispatch; mapped files go through pinned staging chunks), and each copy
/// ends with an event that the compute stream waits on, on the device, just before the module runs.
///
/// Models larger than RAM: weights stored in files (disk-offloaded) are read one of two ways.
/// Mapped (the default while they fit in memory): used in place from the mapped file, their pages
/// kept by the page cache, the fastest way once warm. Direct (when they do not fit: a model larger
/// than the machine's RAM or the container's memory limit): read with O_DIRECT (io/direct_reader.h),
/// a module's adjacent tensors in one large read, into a pool of reused buffers bounded by a window
/// of memory, so the page cache is neither filled nor thrashed and the process's memory stays
/// inside the limit. StreamerOptions::disk_read chooses, or leaves it to disk_read_plan(), which
/// decides once, at the first forward, from the bytes in files and host_memory().
///
/// Correctness first: a prefetched tensor is exactly what the module would have loaded itself
/// (the same WeightsMap::load call), a fetch never returns another module's weights, and when the
/// order changes (another code path) the streamer falls back to loading on demand and relearns.

#include "ferry/core/memory_available.h"
#include "ferry/io/direct_reader.h"
#include "ferry/io/weights_map.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/ScalarType.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ferry {

class HostToDeviceCopier;

/// How weights stored in files are read (see the file comment).
enum class DiskRead {
  automatic,  ///< direct when they do not fit in the memory the process may use, else mapped
  mapped,     ///< in place from mapped files, through the page cache
  direct,     ///< O_DIRECT reads into a bounded pool of buffers, bypassing the page cache
};

/// "auto", "mapped", "direct".
const char* disk_read_name(DiskRead mode);
/// The inverse of disk_read_name (also "automatic"); throws ferry::Error naming the choices.
DiskRead parse_disk_read(const std::string& text);

/// What a streamer does with weights stored in files, and why (WeightStreamer::disk_read_plan()).
struct DiskReadPlan {
  /// mapped or direct (never automatic).
  DiskRead mode = DiskRead::mapped;
  /// Stored bytes of the registered modules' weights that live in files.
  int64_t file_bytes = 0;
  /// Host memory this process could still use when it decided (host_memory().available); -1 when
  /// it was not measured (a forced mapped mode).
  int64_t available_bytes = -1;
  /// Direct: the bytes read ahead at most (the prefetch window) and the buffer pool's bound
  /// (window + the largest module, which must fit while it runs).
  int64_t window_bytes = 0;
  int64_t buffer_bytes = 0;
  /// One sentence: why this mode.
  std::string reason;
};

/// Tuning of a WeightStreamer.
struct StreamerOptions {
  /// Prefetch at most this many bytes of upcoming modules' weights (loaded but not yet released).
  /// 0 disables prefetching: every load happens on demand, in the calling thread (dispatch then
  /// makes no streamer, unless disk_read is direct).
  int64_t prefetch_bytes = int64_t{1} << 30;
  /// I/O threads that load ahead.
  int io_threads = 2;
  /// Accelerators: bytes of each pinned staging chunk that a pageable source (a mapped file, RAM
  /// that is not page-locked) is copied through, and how many chunks there are.
  int64_t staging_chunk_bytes = int64_t{16} << 20;
  int staging_chunks = 4;
  /// Accelerators: page-lock the CPU copies of CPU-offloaded weights at dispatch, so that they
  /// reach the device at the link's full speed (read by dispatch_model, cpu_offload and
  /// load_checkpoint_and_dispatch).
  bool pin_cpu_weights = true;
  /// How weights stored in files are read.
  DiskRead disk_read = DiskRead::automatic;
  /// Direct reads: the memory their buffers may take (the window read ahead plus the module that
  /// runs). 0: what host_memory() has available less kWorkingMemoryReserveBytes.
  int64_t direct_read_budget_bytes = 0;
  /// Routed modules (a mixture of experts' experts, load_routed): after one runs, its loaded weights
  /// may stay, within this many bytes, so that the next time the router picks it nothing is read or
  /// copied. 0: no cache (every pick loads). See Note [Expert cache policy] in weight_streamer.cpp.
  int64_t expert_cache_bytes = 0;
  /// How the expert cache chooses what to keep: `frequency` (the default: most picked, with aging,
  /// and a newcomer admitted only if picked as often as what it evicts) or `recency` (plain LRU, for
  /// comparison).
  enum class ExpertCachePolicy { frequency, recency };
  ExpertCachePolicy expert_cache_policy = ExpertCachePolicy::frequency;
};

/// Counters since construction (or the last reset_stats()).
struct StreamerStats {
  int64_t prefetched_loads = 0;  ///< tensors served from a load started ahead of time
  int64_t demand_loads = 0;      ///< tensors loaded when asked for (not prefetched)
  int64_t bytes_loaded = 0;      ///< stored bytes of every tensor loaded
  int64_t relearns = 0;          ///< times the recorded order did not match and was relearned
  int64_t wait_ns = 0;           ///< time fetch() waited for a prefetch still in flight
  int64_t io_jobs = 0;           ///< loads handed to I/O threads (a warm CPU pass needs none)
  int64_t direct_reads = 0;      ///< direct reads (several adjacent tensors of a module share one)
  int64_t direct_bytes_read = 0; ///< bytes they read, alignment padding included
  int64_t read_buffers_made = 0; ///< buffers the direct reads had to allocate (not reused; since construction)
  int64_t routed_loads = 0;      ///< load_routed() calls (modules of experts picked by a router)
  int64_t expert_cache_hits = 0;    ///< routed picks served by the expert cache (nothing loaded)
  int64_t expert_cache_misses = 0;  ///< routed picks that started a load
  int64_t expert_bytes_loaded = 0;  ///< bytes (StreamedModule::bytes) of those loads: read from files or copied
  int64_t expert_bytes_cached = 0;  ///< bytes served by the cache instead
  int64_t expert_cache_evictions = 0;  ///< cached experts dropped to make room for more used ones
  int64_t expert_runs_in_place = 0;   ///< routed picks run on the CPU beside their weights (count_run_in_place)
  int64_t expert_bytes_in_place = 0;  ///< bytes of those: weights not copied
};

/// One weight of a StreamedModule.
struct StreamedTensor {
  /// Its key in the module's weights map.
  std::string name;
  /// The dtype the module uses it in: loads are `weights->load(name, device, dtype)`.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  /// false: loaded elsewhere (e.g. a tied weight shared through a cache), so never prefetched;
  /// a fetch() of it still loads it, on demand.
  bool streamed = true;
};

/// What one offloaded module needs from the streamer: where its weights live and which ones it loads.
struct StreamedModule {
  /// Where the weights are read from (shared: the streamer holds it while the module is registered).
  io::WeightsMapPtr weights;
  /// Its weights, in the order the module asks for them: fetch()'s `index` indexes this.
  std::vector<StreamedTensor> tensors;
  /// Where they are used: prefetches load them there (a fetch for another device loads on demand).
  c10::Device device = c10::kCPU;
  /// Bytes a load of all of them brings in (their stored size): what they count against
  /// StreamerOptions::prefetch_bytes.
  int64_t bytes = 0;
};

/// A module registered with a WeightStreamer (add_module); `none` is never one.
enum class StreamedModuleId : uint64_t { none = 0 };

/// Prefetches offloaded weights in execution order; see file comment. Every call may come from any
/// thread; the order it learns is the order of the on_forward() calls.
class WeightStreamer {
 public:
  /// Starts options.io_threads I/O threads (none when options.prefetch_bytes is 0).
  explicit WeightStreamer(StreamerOptions options = {});
  /// Drops every pending load and joins the I/O threads.
  ~WeightStreamer();
  WeightStreamer(const WeightStreamer&) = delete;
  WeightStreamer& operator=(const WeightStreamer&) = delete;

  /// Registers a module; the returned id names it in every other call. Does not change the
  /// learned order (a module first runs, and is recorded, at its first on_forward). Throws
  /// ferry::Error without weights, for a tensor the weights map lacks or without a dtype, or for
  /// negative bytes.
  StreamedModuleId add_module(StreamedModule module);
  /// Unregisters a module (for a hook, when it is detached): its pending loads are dropped and the
  /// order is learned afresh. An unknown (or already removed) id is ignored.
  void remove_module(StreamedModuleId module);
  /// Moves where `module`'s weights are prefetched to (from the next prefetch on). Throws
  /// ferry::Error for an unregistered module.
  void set_device(StreamedModuleId module, c10::Device device);
  /// Number of registered modules.
  size_t module_count() const;

  /// Called before `module` runs, before its fetches: records/checks the order and starts loading
  /// the modules that follow it. Does nothing when prefetching is off; otherwise throws
  /// ferry::Error for an unregistered module.
  void on_forward(StreamedModuleId module);
  /// Tensor `index` of `module` (StreamedModule::tensors) on `device`: the prefetched one if there
  /// is one for that device, else loaded now, in this thread. Equal, bit for bit, to
  /// `weights->load(name, device, dtype)` (for the CPU at the stored dtype, the same zero-copy view).
  /// For an accelerator, the current stream waits (on the device) for the copy to end. Throws
  /// ferry::Error for an unregistered module or an index past its tensors.
  at::Tensor fetch(StreamedModuleId module, size_t index, c10::Device device);
  /// Called after `module` ran: its tensors are no longer needed; the window moves on.
  void release(StreamedModuleId module);
  /// For a module that runs only when a router picks it (a mixture of experts' expert), called
  /// when it is picked, before it runs: its weights start loading now, beside the window (a token's
  /// picked experts are needed whatever the budget), and from then on it is routed: never recorded
  /// in the learned order, never loaded ahead by it (the order of experts changes every token), and
  /// its on_forward() is not an order change. Does nothing without I/O threads (no prefetching) or
  /// when its loads are already pending. Throws ferry::Error for an unregistered module.
  void load_routed(StreamedModuleId module);
  /// A routed module was picked and runs on the CPU beside its weights held in RAM (nothing to
  /// load: AlignDevicesHook::run_next_forward_on_cpu): counts it, and keeps it out of the learned
  /// order as load_routed does. Throws ferry::Error for an unregistered module.
  void count_run_in_place(StreamedModuleId module);
  /// Drops every prefetched tensor and the expert cache (keeping the learned order), releasing their
  /// memory and file mappings; prefetching resumes at the next forward.
  void drop_prefetched();
  /// Bytes the expert cache holds now (at most options().expert_cache_bytes).
  int64_t expert_cache_bytes() const;
  /// Whether `module`'s weights are in the expert cache (for tests and reports).
  bool expert_cached(StreamedModuleId module) const;

  /// What happens to weights stored in files, and why. Decided once, at the first call of this,
  /// on_forward() or fetch() (after the model is loaded, so the measure of free memory counts its
  /// resident weights), from the modules registered then.
  DiskReadPlan disk_read_plan();
  /// Direct reads: the most memory their buffers held at once (0 in mapped mode).
  int64_t read_buffer_peak_bytes() const;

  /// Counters since construction or reset_stats().
  StreamerStats stats() const;
  /// Zeroes the counters.
  void reset_stats();
  /// The options it was made with.
  const StreamerOptions& options() const { return options_; }
  /// The learned execution order (modules per pass), 0 until one pass has been recorded (the
  /// first module of a pass ran again).
  size_t learned_length() const;
  /// Bytes (StreamedModule::bytes) of the modules loaded or being loaded ahead and not yet
  /// released; never more than options().prefetch_bytes (in direct mode, the plan's window).
  int64_t prefetched_bytes() const;

 private:
  /// A loaded tensor; for an accelerator, with the event that ends its copy.
  struct Loaded {
    at::Tensor tensor;
    std::shared_ptr<c10::Event> copied;
  };
  struct Pending {
    std::vector<std::shared_future<Loaded>> tensors;
    c10::Device device = c10::kCPU;
    int64_t bytes = 0;
  };
  /// A registered module and where its tensors are stored (nullopt: not in a file).
  struct Registered {
    StreamedModule module;
    std::vector<std::optional<io::FileExtent>> extents;
    int64_t file_bytes = 0;
    bool routed = false;  // load_routed() was called for it: outside the learned order
  };
  void decide_disk_read();  // with mutex_ held
  void schedule_after(size_t position);
  void start_prefetch(StreamedModuleId id, const Registered& registered);
  /// Direct mode: reads `indices` of `registered` (tensors stored in files) with one read per run
  /// of adjacent tensors, filling their slots of `pending`.
  void start_direct_reads(const Registered& registered, const std::vector<size_t>& indices, Pending& pending);
  /// A tensor read from a file (on the CPU, stored dtype) made into what fetch() returns.
  Loaded finish_load(at::Tensor host, c10::ScalarType dtype, c10::Device device);
  /// Drops `id`'s pending loads, if any.
  void drop_pending(StreamedModuleId id);
  /// A routed module ran: keeps its loads in the expert cache if the policy admits it, else drops them.
  void cache_or_drop(StreamedModuleId id);
  /// Counts a pick of `id` for the cache policy (with aging).
  void count_use(StreamedModuleId id);
  /// Loads one weight for `device`: see the file comment.
  Loaded load_now(const io::WeightsMapPtr& weights, const std::string& name, c10::ScalarType dtype,
                  c10::Device device, bool on_io_thread, const io::FileExtent* direct_extent = nullptr);
  HostToDeviceCopier& copier();
  /// Runs `load` on an I/O thread.
  std::shared_future<Loaded> enqueue(std::function<Loaded()> load);
  void submit(std::function<void()> job);
  void worker();

  StreamerOptions options_;
  mutable std::mutex mutex_;
  std::unordered_map<StreamedModuleId, Registered> modules_;  // registered modules
  bool decided_ = false;
  DiskReadPlan plan_;
  int64_t window_bytes_ = 0;                   // prefetch budget in use (options or the plan's window)
  std::unique_ptr<io::DirectReader> reader_;   // direct mode only
  io::DirectReadStats direct_baseline_;        // reader_'s counters at the last reset_stats()
  uint64_t next_id_ = 1;
  std::vector<StreamedModuleId> order_;      // learned order of one pass
  std::vector<StreamedModuleId> recording_;  // order being recorded
  bool learned_ = false;
  size_t cursor_ = 0;                        // position of the next expected module in order_
  std::unordered_map<StreamedModuleId, Pending> pending_;
  int64_t pending_bytes_ = 0;
  /// The expert cache: routed modules' loads kept after they ran, and the use counts that rank them.
  struct ExpertUse {
    double count = 0;       // picks, halved every kAgingPicks picks of all experts
    uint64_t last_pick = 0;  // when last picked (the tie-break: least recent goes first)
  };
  std::unordered_map<StreamedModuleId, Pending> expert_cache_;
  std::unordered_map<StreamedModuleId, ExpertUse> expert_use_;
  int64_t expert_cache_used_ = 0;
  uint64_t picks_ = 0;
  StreamerStats stats_;

  std::once_flag copier_once_;
  std::unique_ptr<HostToDeviceCopier> copier_;

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry
