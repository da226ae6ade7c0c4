#include "host_to_device_copier.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace ferry {
namespace {

// Blocks the calling (I/O) thread until `event` has happened on its device. c10::Event has no
// host-side wait in every LibTorch version, so poll; a staging chunk drains in well under a
// millisecond at link speed, so the sleep is short.
void wait_on_host(const c10::Event& event) {
  while (!event.query()) std::this_thread::sleep_for(std::chrono::microseconds(20));
}

}  // namespace

HostToDeviceCopier::HostToDeviceCopier(int64_t chunk_bytes, int chunks)
    : chunk_bytes_(std::max<int64_t>(chunk_bytes, 1 << 20)), chunk_count_(std::max(chunks, 2)) {}

HostToDeviceCopier::~HostToDeviceCopier() {
  // The copy engine may still read a chunk: let it finish before the pinned memory goes.
  for (const auto& chunk : chunks_)
    if (chunk.drained) wait_on_host(*chunk.drained);
}

c10::Stream HostToDeviceCopier::stream_for(c10::Device device) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(device);
  if (it != streams_.end()) return it->second;
  c10::impl::VirtualGuardImpl impl(device.type());
  c10::Stream stream = impl.getStreamFromGlobalPool(device, /*isHighPriority=*/false);
  streams_.emplace(device, stream);
  return stream;
}

size_t HostToDeviceCopier::take_chunk() {
  size_t index = 0;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (chunks_.empty()) {
      chunks_.resize(static_cast<size_t>(chunk_count_));
      for (size_t i = 0; i < chunks_.size(); ++i) {
        chunks_[i].buffer = at::empty({chunk_bytes_}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
        free_chunks_.push_back(i);
      }
    }
    chunk_free_.wait(lock, [this] { return !free_chunks_.empty(); });
    index = free_chunks_.back();
    free_chunks_.pop_back();
  }
  // Taken: only this thread touches the chunk until give_back_chunk.
  if (chunks_[index].drained) wait_on_host(*chunks_[index].drained);
  return index;
}

void HostToDeviceCopier::give_back_chunk(size_t index) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    free_chunks_.push_back(index);
  }
  chunk_free_.notify_one();
}

HostToDeviceCopier::Copy HostToDeviceCopier::copy(const at::Tensor& host_tensor, c10::Device device,
                                                  c10::ScalarType dtype) {
  FERRY_CHECK(host_tensor.device().is_cpu(), "the copier copies from host memory, not from ", host_tensor.device());
  FERRY_CHECK(!device.is_cpu(), "the copier copies to an accelerator, not to the CPU");
  at::Tensor host = host_tensor.contiguous();
  c10::Stream stream = stream_for(device);
  c10::StreamGuard on_copy_stream(stream);  // allocations and copies below are ordered on it
  at::Tensor stored = at::empty(host.sizes(), host.options().device(device));
  const int64_t nbytes = static_cast<int64_t>(host.numel()) * static_cast<int64_t>(host.element_size());
  if (nbytes > 0 && host.is_pinned()) {
    stored.copy_(host, /*non_blocking=*/true);
  } else if (nbytes > 0) {
    // Pageable source: fill a pinned chunk, let the copy engine drain it, fill the next one.
    const auto* source = static_cast<const uint8_t*>(host.data_ptr());
    auto* target = static_cast<uint8_t*>(stored.data_ptr());
    const auto bytes_on_device = at::TensorOptions().dtype(at::kByte).device(device);
    for (int64_t offset = 0; offset < nbytes; offset += chunk_bytes_) {
      const int64_t n = std::min(chunk_bytes_, nbytes - offset);
      size_t index = take_chunk();
      Chunk& chunk = chunks_[index];
      std::memcpy(chunk.buffer.data_ptr(), source + offset, static_cast<size_t>(n));
      at::from_blob(target + offset, {n}, bytes_on_device).copy_(chunk.buffer.narrow(0, 0, n), /*non_blocking=*/true);
      chunk.drained = std::make_unique<c10::Event>(device.type());
      chunk.drained->record(stream);
      give_back_chunk(index);
    }
  }
  Copy out;
  out.tensor = stored.scalar_type() == dtype ? stored : stored.to(dtype);  // cast on the device
  out.done = std::make_shared<c10::Event>(device.type());
  out.done->record(stream);
  return out;
}

void HostToDeviceCopier::wait_on_current_stream(const Copy& copy) {
  if (!copy.done || !copy.tensor.defined()) return;
  const c10::Device device = copy.tensor.device();
  c10::impl::VirtualGuardImpl impl(device.type());
  c10::Stream current = impl.getStream(device);
  copy.done->block(current);
  impl.recordDataPtrOnStream(copy.tensor.storage().data_ptr(), current);
}

}  // namespace ferry
