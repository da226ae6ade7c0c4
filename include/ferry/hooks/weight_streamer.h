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
/// Correctness first: a prefetched tensor is exactly what the hook would have loaded itself
/// (same WeightsMap call), a fetch never returns another module's weights, and when the order
/// changes (another code path) the streamer falls back to loading on demand and relearns.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ferry {

class AlignDevicesHook;

/// Tuning of a WeightStreamer.
struct StreamerOptions {
  /// Prefetch at most this many bytes of upcoming modules' weights (loaded but not yet used).
  /// 0 disables prefetching: every load happens on demand, in the calling thread.
  int64_t prefetch_bytes = int64_t{1} << 30;
  /// I/O threads that load ahead.
  int io_threads = 2;
};

/// Counters since construction (or the last reset_stats()).
struct StreamerStats {
  int64_t prefetched_loads = 0;  ///< tensors served from a load started ahead of time
  int64_t demand_loads = 0;      ///< tensors loaded when asked for (not prefetched)
  int64_t bytes_loaded = 0;      ///< stored bytes of every tensor loaded
  int64_t relearns = 0;          ///< times the recorded order did not match and was relearned
  int64_t wait_ns = 0;           ///< time fetch() waited for a prefetch still in flight
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
  struct Pending {
    std::vector<std::shared_future<at::Tensor>> tensors;
    c10::Device device = c10::kCPU;
    int64_t bytes = 0;
  };
  void schedule_after(size_t position);
  void start_prefetch(AlignDevicesHook* hook, c10::Device device);
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

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry
