#pragma once
/// \file
/// The accelerator half of the streamer: host-to-device copies that overlap compute. A copy runs
/// on a stream of its own (one per device, from the device's stream pool), from page-locked
/// memory, and ends with an event, so that compute waits on the device for exactly the weights
/// it is about to use, never on the host.
///
///     HostToDeviceCopier copier(16 << 20, 4);         // 4 pinned staging chunks of 16 MiB
///     auto copy = copier.copy(host_weight, c10::Device("cuda:0"), at::kBFloat16);  // I/O thread
///     HostToDeviceCopier::wait_on_current_stream(copy);                            // compute thread
///     use(copy.tensor);
///
/// Sources that are already page-locked (CPU-offloaded weights, pinned at dispatch) are copied
/// straight from where they are. Any other source (a mapped file, pageable RAM) goes through the
/// staging chunks: the I/O thread fills one chunk while the copy engine drains the previous one.
///
/// Written against c10's device-generic stream and event interfaces, so it builds with a
/// CPU-only LibTorch; it runs only for an accelerator device.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/ScalarType.h>
#include <c10/core/Stream.h>

#include <condition_variable>
#include <cstdint>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <vector>

namespace ferry {

class HostToDeviceCopier {
 public:
  /// A copy in flight: `tensor` is complete on the device once `done` has happened.
  struct Copy {
    at::Tensor tensor;
    std::shared_ptr<c10::Event> done;
  };

  /// `chunk_bytes` per staging chunk, `chunks` of them (allocated on first use of a pageable source).
  HostToDeviceCopier(int64_t chunk_bytes, int chunks);
  ~HostToDeviceCopier();
  HostToDeviceCopier(const HostToDeviceCopier&) = delete;
  HostToDeviceCopier& operator=(const HostToDeviceCopier&) = delete;

  /// Starts copying `host` (a CPU tensor) to `device`, cast to `dtype` there. Returns at once for a
  /// page-locked source; for another one, once its last chunk is staged. Thread-safe.
  Copy copy(const at::Tensor& host, c10::Device device, c10::ScalarType dtype);

  /// Makes the calling thread's current stream on the copy's device wait for the copy (on the
  /// device, not the host), and tells the caching allocator that the tensor is used on that stream,
  /// so that its memory is not handed out again while compute still reads it.
  static void wait_on_current_stream(const Copy& copy);

 private:
  struct Chunk {
    at::Tensor buffer;                   // pinned host bytes
    std::unique_ptr<c10::Event> drained; // recorded after the copy that last read the buffer
  };
  c10::Stream stream_for(c10::Device device);
  size_t take_chunk();
  void give_back_chunk(size_t index);

  const int64_t chunk_bytes_;
  std::mutex mutex_;
  std::condition_variable chunk_free_;
  std::unordered_map<c10::Device, c10::Stream> streams_;
  std::vector<Chunk> chunks_;
  std::vector<size_t> free_chunks_;
  int chunk_count_;
};

}  // namespace ferry
