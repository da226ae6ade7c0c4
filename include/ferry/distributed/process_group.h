#pragma once
/// \file
/// Processes that run one model together, over torch.distributed's c10d (the engine PyTorch users
/// already run; no network protocol of ferry's own): the torchrun environment, a TCPStore
/// rendezvous at the master, and a Gloo process group for tensors between ranks.
///
///     // RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 (what torchrun and `ferry launch` set)
///     std::optional<DistributedEnv> env = DistributedEnv::from_environment();
///     if (env) {
///       ProcessGroup group = ProcessGroup::connect(*env);      // waits for every rank (env->timeout)
///       at::Tensor h = at::empty({1, 4, 64});
///       if (group.rank() == 1) group.recv(h, /*src=*/0, /*tag=*/0);  // rank 0 calls group.send(h, 1, 0)
///     }
///
/// Every call that waits for another rank waits at most `timeout`; a rank that died or cannot be
/// reached becomes a ferry::Error naming it, the message (tag) and the address, never a hang.

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// Where this process stands among the ranks: torchrun's environment variables.
struct DistributedEnv {
  int rank = 0;        ///< RANK: 0 .. world_size - 1
  int world_size = 1;  ///< WORLD_SIZE
  /// LOCAL_RANK and LOCAL_WORLD_SIZE (torchrun and `ferry launch` set both): this rank among the
  /// host's ranks, and how many there are; without them, a rank alone on its host (0 of 1). A rank
  /// plans over its part of the host (local_rank_budget): its GPUs and 1 / local_world_size of the RAM.
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  ///< MASTER_ADDR: the host of rank 0, which holds the rendezvous store
  int master_port = 0;      ///< MASTER_PORT
  /// FERRY_DIST_TIMEOUT (seconds, default 300): the longest wait for the rendezvous and for any
  /// tensor from another rank.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};

  /// Reads the variables; std::nullopt when WORLD_SIZE is not set (a single process). Throws
  /// ferry::Error naming the variable and its value when one is missing or malformed.
  static std::optional<DistributedEnv> from_environment();
};

/// A send under way (ProcessGroup::send_async): it goes in the background while this rank works on;
/// wait() returns once it has gone. The tensor stays alive until then.
class PendingSend {
 public:
  PendingSend(PendingSend&&) noexcept;
  PendingSend& operator=(PendingSend&&) noexcept;
  /// Waits for the send if wait() was not called (an error is then dropped: call wait() to see it).
  ~PendingSend();
  /// Returns when the tensor has been sent; throws ferry::Error, as ProcessGroup::send does, when
  /// the receiver stopped or did not take it within the group's timeout.
  void wait();

 private:
  friend class ProcessGroup;
  struct Impl;
  explicit PendingSend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A c10d Gloo process group: point-to-point tensors between ranks, with timeouts.
class ProcessGroup {
 public:
  /// Rendezvous at env.master_addr:master_port (rank 0 serves the TCPStore) and joins the group.
  /// Throws ferry::Error saying which address this rank tried when the master cannot be reached.
  static ProcessGroup connect(const DistributedEnv& env);

  ProcessGroup(ProcessGroup&&) noexcept;
  ProcessGroup& operator=(ProcessGroup&&) noexcept;
  ~ProcessGroup();

  int rank() const;
  int size() const;
  /// Sends `tensor` (any dtype; made contiguous) to rank `dst`; returns when it has been sent.
  void send(const at::Tensor& tensor, int dst, int tag);
  /// Starts sending `tensor` to rank `dst` and returns at once: a pipeline stage goes on with its
  /// next input instead of waiting for the next stage to take this one.
  PendingSend send_async(const at::Tensor& tensor, int dst, int tag);
  /// Receives into `tensor` (contiguous, its size and dtype as the sender's) from rank `src`.
  void recv(at::Tensor& tensor, int src, int tag);
  /// Every rank's `value` for `key`, in rank order, through the rendezvous store (small values:
  /// budgets, checks that all ranks run the same model). Every rank must call it with the same key.
  std::vector<std::string> exchange(const std::string& key, const std::string& value);

 private:
  struct Impl;
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
