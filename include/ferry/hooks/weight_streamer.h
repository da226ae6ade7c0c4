#pragma once
/// \file
/// The streamer: one per dispatched model, shared by its offloading hooks. It learns the order
/// in which offloaded modules execute (the first forward records it) and, while module i
/// computes, loads the weights of modules i+1, i+2, ... within a byte budget on I/O threads, so
/// that a forward costs max(load time, compute time) rather than their sum.
///
///     auto streamer = std::make_shared<ferry::WeightStreamer>(StreamerOptions{});
///     // dispatch_model / load_checkpoint_and_dispatch create and attach one by default;
///     // hooks call on_forward(), fetch() and release() around each offloaded module.
///     streamer->stats();   // loads served from prefetch, on demand, bytes moved, relearns
///
/// On the CPU, a disk-offloaded weight is used straight from its mapped file: prefetching brings
/// its pages in (and checks first, cheaply, whether they already are). For an accelerator, the
/// I/O threads copy weights on a copy stream of their own, from page-locked memory (CPU-offloaded
/// weights are pinned at dispatch; mapped files go through pinned staging chunks), and each copy
/// ends with an event that the compute stream waits on, on the device, just before the module runs.
///
/// Correctness first: a prefetched tensor is exactly what the hook would have loaded itself
/// (same WeightsMap call), a fetch never returns another module's weights, and when the order
/// changes (another code path) the streamer falls back to loading on demand and relearns.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ferry {

class AlignDevicesHook;
class HostToDeviceCopier;
namespace io {
class WeightsMap;
}

/// Tuning of a WeightStreamer.
struct StreamerOptions {
  /// Prefetch at most this many bytes of upcoming modules' weights (loaded but not yet used).
  /// 0 disables prefetching: every load happens on demand, in the calling thread.
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
};

/// Counters since construction (or the last reset_stats()).
struct StreamerStats {
  int64_t prefetched_loads = 0;  ///< tensors served from a load started ahead of time
  int64_t demand_loads = 0;      ///< tensors loaded when asked for (not prefetched)
  int64_t bytes_loaded = 0;      ///< stored bytes of every tensor loaded
  int64_t relearns = 0;          ///< times the recorded order did not match and was relearned
  int64_t wait_ns = 0;           ///< time fetch() waited for a prefetch still in flight
  int64_t io_jobs = 0;           ///< loads handed to I/O threads (a warm CPU pass needs none)
};

/// Prefetches offloaded weights in execution order; see file comment.
class WeightStreamer {
 public:
  explicit WeightStreamer(StreamerOptions options = {});
  ~WeightStreamer();
  WeightStreamer(const WeightStreamer&) = delete;
  WeightStreamer& operator=(const WeightStreamer&) = delete;

  /// Called by `hook` in pre_forward, before it fetches: records/checks the order and starts
  /// loading the modules that follow it.
  void on_forward(AlignDevicesHook* hook);
  /// Tensor `index` of `hook` (AlignDevicesHook::offloaded_tensors()) on `device`: a prefetched one
  /// if there is, else loaded now.
  at::Tensor fetch(AlignDevicesHook* hook, size_t index, c10::Device device);
  /// Called by `hook` after forward: its tensors are no longer needed; the window moves on.
  void release(AlignDevicesHook* hook);
  /// Forgets a hook (when it is detached): its pending loads are dropped.
  void forget(AlignDevicesHook* hook);
  /// Drops every prefetched tensor (keeping the learned order), releasing their memory and
  /// file mappings; prefetching resumes at the next forward.
  void drop_prefetched();

  StreamerStats stats() const;
  void reset_stats();
  const StreamerOptions& options() const { return options_; }
  /// The learned execution order (hooks), empty until one forward has completed.
  size_t learned_length() const;

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
  void schedule_after(size_t position);
  void start_prefetch(AlignDevicesHook* hook, c10::Device device);
  /// Loads one weight for `device`: see the file comment.
  Loaded load_now(const std::shared_ptr<const io::WeightsMap>& weights, const std::string& name,
                  c10::ScalarType dtype, c10::Device device, bool on_io_thread);
  HostToDeviceCopier& copier();
  /// Runs `load` on an I/O thread.
  std::shared_future<Loaded> enqueue(std::function<Loaded()> load);
  void submit(std::function<void()> job);
  void worker();

  StreamerOptions options_;
  mutable std::mutex mutex_;
  std::vector<AlignDevicesHook*> order_;      // learned order of one pass
  std::vector<AlignDevicesHook*> recording_;  // order being recorded
  bool learned_ = false;
  size_t cursor_ = 0;                         // position of the next expected hook in order_
  std::unordered_map<AlignDevicesHook*, Pending> pending_;
  int64_t pending_bytes_ = 0;
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
