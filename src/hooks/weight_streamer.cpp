#include "ferry/hooks/weight_streamer.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/core/host_memory.h"
#include "ferry/core/memory_available.h"
#include "host_to_device_copier.h"

#include <ATen/ATen.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>

namespace ferry {
namespace {

// Whether every page under a CPU tensor is in memory (mincore; for a mapped file, whether the page
// cache holds it). A few microseconds per hundred megabytes.
bool pages_resident(const at::Tensor& tensor) {
  if (!tensor.defined() || !tensor.device().is_cpu() || tensor.numel() == 0) return true;
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t size = tensor.numel() * tensor.element_size();
  auto begin = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  uintptr_t aligned = begin & ~(uintptr_t(page) - 1);
  size_t length = size + (begin - aligned);
  thread_local std::vector<unsigned char> resident;  // called per tensor per forward: reuse it
  resident.resize((length + page - 1) / page);
  return mincore(reinterpret_cast<void*>(aligned), length, resident.data()) == 0 &&
         std::all_of(resident.begin(), resident.end(), [](unsigned char r) { return r & 1; });
}

// Brings the pages of a file-backed CPU tensor into memory from an I/O thread, so that the
// compute thread does not wait for the disk: every page is touched, and each fault reads a whole
// 2 MiB huge page of the file (the mapping asks for huge pages, io/mapped_file.h); two I/O threads
// on two tensors keep two reads in flight. Pages already in memory are skipped (the warm case).
// (An MADV_WILLNEED first, as this did before, made cold forwards slower here, not faster.)
void touch_pages(const at::Tensor& tensor) {
  if (pages_resident(tensor)) return;
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t size = tensor.numel() * tensor.element_size();
  const auto* bytes = static_cast<const volatile unsigned char*>(tensor.data_ptr());
  unsigned char sink = 0;
  for (size_t offset = 0; offset < size; offset += page) sink ^= bytes[offset];
  sink ^= bytes[size - 1];
  (void)sink;
}

}  // namespace

const char* disk_read_name(DiskRead mode) {
  switch (mode) {
    case DiskRead::automatic: return "auto";
    case DiskRead::mapped: return "mapped";
    case DiskRead::direct: return "direct";
  }
  return "?";
}

DiskRead parse_disk_read(const std::string& text) {
  if (text == "auto" || text == "automatic") return DiskRead::automatic;
  if (text == "mapped") return DiskRead::mapped;
  if (text == "direct") return DiskRead::direct;
  FERRY_FAIL("unknown disk read mode '", text, "'; expected auto, mapped or direct");
}

WeightStreamer::WeightStreamer(StreamerOptions options) : options_(options), window_bytes_(options.prefetch_bytes) {
  if (options_.prefetch_bytes > 0)
    for (int i = 0; i < std::max(1, options_.io_threads); ++i) threads_.emplace_back([this] { worker(); });
}

WeightStreamer::~WeightStreamer() {
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    stopping_ = true;
    queue_.clear();  // dropped jobs break their promises; nobody waits on them any more
  }
  queue_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void WeightStreamer::worker() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(queue_mutex_);
      queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

std::shared_future<WeightStreamer::Loaded> WeightStreamer::enqueue(std::function<Loaded()> load) {
  ++stats_.io_jobs;  // called with mutex_ held, from start_prefetch
  auto task = std::make_shared<std::packaged_task<Loaded()>>(std::move(load));
  std::shared_future<Loaded> future = task->get_future().share();
  submit([task] { (*task)(); });
  return future;
}

void WeightStreamer::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    queue_.push_back(std::move(job));
  }
  queue_cv_.notify_one();
}

HostToDeviceCopier& WeightStreamer::copier() {
  std::call_once(copier_once_, [this] {
    copier_ = std::make_unique<HostToDeviceCopier>(options_.staging_chunk_bytes, options_.staging_chunks);
  });
  return *copier_;
}

WeightStreamer::Loaded WeightStreamer::finish_load(at::Tensor host, c10::ScalarType dtype, c10::Device device) {
  if (device.is_cpu()) {
    if (host.scalar_type() == dtype) return {std::move(host), nullptr};
    return {copy_to_host(host, dtype), nullptr};
  }
  HostToDeviceCopier::Copy copy = copier().copy(host, device, dtype);
  return {std::move(copy.tensor), std::move(copy.done)};
}

WeightStreamer::Loaded WeightStreamer::load_now(const io::WeightsMapPtr& weights, const std::string& name,
                                                c10::ScalarType dtype, c10::Device device, bool on_io_thread,
                                                const io::FileExtent* direct_extent) {
  if (direct_extent != nullptr) return finish_load(reader_->read_tensor(*direct_extent), dtype, device);
  if (device.is_cpu()) {
    // Loaded ahead, a mapped weight's pages are brought in here; loaded on demand, compute's own
    // faults do it (OpenBLAS's threads fault in parallel, which beats one thread touching).
    at::Tensor value = weights->load(name, device, dtype);
    if (on_io_thread) touch_pages(value);
    return {std::move(value), nullptr};
  }
  at::Tensor host = weights->load(name, c10::kCPU);  // as stored: a mapped file's bytes, or RAM
  HostToDeviceCopier::Copy copy = copier().copy(host, device, dtype);
  return {std::move(copy.tensor), std::move(copy.done)};
}

void WeightStreamer::start_direct_reads(const Registered& registered, const std::vector<size_t>& indices,
                                        Pending& pending) {
  const c10::Device device = registered.module.device;
  std::vector<io::FileExtent> extents;
  for (size_t i : indices) extents.push_back(*registered.extents[i]);
  for (io::ReadRun& run : io::coalesce_reads(extents)) {
    struct Job {
      io::ReadRun run;
      std::vector<io::FileExtent> extents;
      std::vector<c10::ScalarType> dtypes;
      std::vector<std::promise<Loaded>> promises;
    };
    auto job = std::make_shared<Job>();
    for (size_t k : run.extents) {
      const size_t i = indices[k];
      job->extents.push_back(extents[k]);
      job->dtypes.push_back(registered.module.tensors[i].dtype);
      job->promises.emplace_back();
      pending.tensors[i] = job->promises.back().get_future().share();
    }
    job->run = std::move(run);
    ++stats_.io_jobs;
    submit([this, job, device] {
      size_t done = 0;
      try {
        const io::ReadRun& r = job->run;
        io::DirectReader::Bytes bytes = reader_->read(r.path, r.begin, r.end - r.begin);
        for (; done < job->extents.size(); ++done)
          job->promises[done].set_value(
              finish_load(io::DirectReader::tensor_in(bytes, r.begin, job->extents[done]), job->dtypes[done], device));
      } catch (...) {  // every tensor of the run not delivered gets the error; fetch() rethrows it
        for (; done < job->promises.size(); ++done) job->promises[done].set_exception(std::current_exception());
      }
    });
  }
}

void WeightStreamer::start_prefetch(StreamedModuleId id, const Registered& registered) {
  const StreamedModule& module = registered.module;
  Pending pending;
  pending.device = module.device;
  pending.bytes = module.bytes;
  pending.tensors.resize(module.tensors.size());
  const c10::Device device = module.device;
  const io::WeightsMapPtr& weights = module.weights;
  const bool direct = plan_.mode == DiskRead::direct;
  std::vector<size_t> direct_reads;
  for (size_t i = 0; i < module.tensors.size(); ++i) {
    const StreamedTensor& t = module.tensors[i];
    if (!t.streamed) continue;  // loaded elsewhere (tied tensors go through a shared cache at fetch time)
    if (direct && registered.extents[i]) {
      direct_reads.push_back(i);
      continue;
    }
    const c10::ScalarType dtype = t.dtype;
    if (device.is_cpu() && weights->info(t.name).dtype == dtype) {
      // A zero-copy view (or the RAM tensor itself) costs microseconds on this thread; an I/O
      // thread is woken only when its pages must be read in, so a warm pass wakes none (on a
      // small machine, every wake-up can preempt a compute thread).
      at::Tensor view = weights->load(t.name, device, dtype);
      if (pages_resident(view)) {
        std::promise<Loaded> ready;
        ready.set_value(Loaded{std::move(view), nullptr});
        pending.tensors[i] = ready.get_future().share();
      } else {
        pending.tensors[i] = enqueue([view] {
          touch_pages(view);
          return Loaded{view, nullptr};
        });
      }
      continue;
    }
    // The job holds what it needs by value: the module may be removed while it runs.
    pending.tensors[i] =
        enqueue([this, weights, name = t.name, dtype, device] { return load_now(weights, name, dtype, device, true); });
  }
  if (!direct_reads.empty()) start_direct_reads(registered, direct_reads, pending);
  pending_bytes_ += pending.bytes;
  pending_.emplace(id, std::move(pending));
}

void WeightStreamer::drop_pending(StreamedModuleId id) {
  auto it = pending_.find(id);
  if (it != pending_.end()) {
    pending_bytes_ -= it->second.bytes;
    pending_.erase(it);
  }
}

void WeightStreamer::schedule_after(size_t position) {
  const size_t n = order_.size();
  for (size_t step = 1; step < n; ++step) {
    StreamedModuleId next = order_[(position + step) % n];
    if (pending_.count(next)) continue;
    auto module = modules_.find(next);
    if (module == modules_.end()) continue;  // not reached: removing a module clears the order
    if (pending_bytes_ + module->second.module.bytes > window_bytes_) break;
    start_prefetch(next, module->second);
  }
}

StreamedModuleId WeightStreamer::add_module(StreamedModule module) {
  FERRY_CHECK(module.weights, "a module needs a weights map");
  FERRY_CHECK(module.bytes >= 0, "bytes must be non-negative, got ", module.bytes);
  for (const auto& t : module.tensors) {
    FERRY_CHECK(t.dtype != c10::ScalarType::Undefined, "no dtype for '", t.name, "'");
    FERRY_CHECK(module.weights->contains(t.name), "the weights map has no '", t.name, "'");
  }
  Registered registered;
  for (const auto& t : module.tensors) {
    registered.extents.push_back(module.weights->file_extent(t.name));
    if (registered.extents.back()) registered.file_bytes += static_cast<int64_t>(registered.extents.back()->length);
  }
  registered.module = std::move(module);
  std::lock_guard<std::mutex> lock(mutex_);
  const auto id = static_cast<StreamedModuleId>(next_id_++);
  modules_.emplace(id, std::move(registered));
  return id;
}

void WeightStreamer::remove_module(StreamedModuleId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (modules_.erase(id) == 0) return;
  drop_pending(id);
  if (auto cached = expert_cache_.find(id); cached != expert_cache_.end()) {
    expert_cache_used_ -= cached->second.bytes;
    expert_cache_.erase(cached);
  }
  expert_use_.erase(id);
  learned_ = false;
  order_.clear();
  recording_.clear();
  cursor_ = 0;
}

void WeightStreamer::set_device(StreamedModuleId id, c10::Device device) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = modules_.find(id);
  FERRY_CHECK(it != modules_.end(), "module ", static_cast<uint64_t>(id), " is not registered");
  it->second.module.device = device;
}

size_t WeightStreamer::module_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return modules_.size();
}

void WeightStreamer::on_forward(StreamedModuleId id) {
  if (options_.prefetch_bytes <= 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto registered = modules_.find(id);
  FERRY_CHECK(registered != modules_.end(), "module ", static_cast<uint64_t>(id), " is not registered");
  if (!decided_) decide_disk_read();
  if (registered->second.routed) return;  // loaded when picked, not by the order
  if (!learned_) {
    if (recording_.empty() || recording_.front() != id) {
      recording_.push_back(id);
      return;
    }
    order_ = std::move(recording_);  // the first module came round again: one pass is recorded
    recording_.clear();
    learned_ = true;
    cursor_ = 0;
  }
  if (cursor_ >= order_.size() || order_[cursor_] != id) {
    if (order_.front() == id) {
      cursor_ = 0;  // a new pass
    } else {
      // Another code path: drop the prefetched weights and relearn from here.
      ++stats_.relearns;
      pending_.clear();
      pending_bytes_ = 0;
      learned_ = false;
      order_.clear();
      recording_.assign(1, id);
      return;
    }
  }
  schedule_after(cursor_);
  ++cursor_;
}

at::Tensor WeightStreamer::fetch(StreamedModuleId id, size_t index, c10::Device device) {
  std::shared_future<Loaded> ready;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!decided_) decide_disk_read();
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.device == device && index < it->second.tensors.size())
      ready = it->second.tensors[index];
  }
  Loaded loaded;
  int64_t waited_ns = 0;
  if (ready.valid()) {
    auto start = std::chrono::steady_clock::now();
    try {
      loaded = ready.get();
    } catch (...) {
      // The load ahead failed (a file that went bad, perhaps since fixed): load it now, which
      // throws the error as it stands.
      ready = {};
    }
    waited_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  }
  if (!ready.valid()) {
    // What a load now needs, copied under the lock (the module may be removed meanwhile): only
    // here, not for the prefetched tensors of every forward.
    io::WeightsMapPtr weights;
    StreamedTensor tensor;
    std::optional<io::FileExtent> direct_extent;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto module = modules_.find(id);
      FERRY_CHECK(module != modules_.end(), "module ", static_cast<uint64_t>(id), " is not registered");
      const Registered& r = module->second;
      FERRY_CHECK(index < r.module.tensors.size(), "no tensor ", index, " in module ", static_cast<uint64_t>(id),
                  ", which has ", r.module.tensors.size());
      weights = r.module.weights;
      tensor = r.module.tensors[index];
      if (plan_.mode == DiskRead::direct) direct_extent = r.extents[index];
    }
    loaded = load_now(weights, tensor.name, tensor.dtype, device, /*on_io_thread=*/false,
                      direct_extent ? &*direct_extent : nullptr);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++(ready.valid() ? stats_.prefetched_loads : stats_.demand_loads);
    stats_.wait_ns += waited_ns;
    stats_.bytes_loaded += loaded.tensor.numel() * loaded.tensor.element_size();
  }
  // An accelerator copy: the compute stream waits for it on the device, not this thread.
  if (loaded.copied) HostToDeviceCopier::wait_on_current_stream({loaded.tensor, loaded.copied});
  return loaded.tensor;
}

void WeightStreamer::release(StreamedModuleId id) {
  if (options_.prefetch_bytes <= 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto module = modules_.find(id);
  if (module != modules_.end() && module->second.routed && options_.expert_cache_bytes > 0)
    cache_or_drop(id);
  else
    drop_pending(id);
  if (learned_ && cursor_ > 0) schedule_after(cursor_ - 1);
}

// Note [Expert cache policy]
// A mixture of experts' router picks a few experts per layer and token, with a skewed and slowly
// shifting popularity: some experts of a layer are picked far more than others, and which ones
// drifts with the text. Recency alone (LRU) lets a burst of one-off picks flush the hot experts, and
// with top-k over many layers every token brings k new entries per layer. So the cache ranks experts
// by how often they were picked, with aging: each pick adds 1 to the expert's count, and every
// kAgingPicks picks (of all experts) every count is halved, so that yesterday's favourites fade
// (LFU with decay, as in frequency sketches like TinyLFU). Eviction takes the lowest count, the
// least recently picked on a tie; admission asks the newcomer to be picked at least as often as the
// expert it would evict, so a one-off pick never pushes out a hot expert. A hit moves the entry back
// to the streamer's loads for the module to use; release() puts it back.
namespace {
constexpr uint64_t kAgingPicks = 1024;
}  // namespace

void WeightStreamer::count_use(StreamedModuleId id) {
  ExpertUse& use = expert_use_[id];
  use.count += 1;
  use.last_pick = ++picks_;
  if (picks_ % kAgingPicks == 0)
    for (auto& [other, u] : expert_use_) u.count /= 2;
}

void WeightStreamer::cache_or_drop(StreamedModuleId id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending loads = std::move(it->second);
  pending_bytes_ -= loads.bytes;
  pending_.erase(it);
  const int64_t budget = options_.expert_cache_bytes;
  if (loads.bytes > budget) return;
  const ExpertUse mine = expert_use_[id];
  const bool recency = options_.expert_cache_policy == StreamerOptions::ExpertCachePolicy::recency;
  while (expert_cache_used_ + loads.bytes > budget) {
    auto victim = expert_cache_.end();
    for (auto c = expert_cache_.begin(); c != expert_cache_.end(); ++c) {
      if (victim == expert_cache_.end()) {
        victim = c;
        continue;
      }
      const ExpertUse &a = expert_use_[c->first], &b = expert_use_[victim->first];
      if (recency ? a.last_pick < b.last_pick : a.count < b.count || (a.count == b.count && a.last_pick < b.last_pick))
        victim = c;
    }
    if (victim == expert_cache_.end()) return;
    if (!recency && expert_use_[victim->first].count > mine.count) return;  // not admitted: the cached ones are used more
    expert_cache_used_ -= victim->second.bytes;
    expert_cache_.erase(victim);
    ++stats_.expert_cache_evictions;
  }
  expert_cache_used_ += loads.bytes;
  expert_cache_[id] = std::move(loads);
}

void WeightStreamer::load_routed(StreamedModuleId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = modules_.find(id);
  FERRY_CHECK(it != modules_.end(), "module ", static_cast<uint64_t>(id), " is not registered");
  if (!decided_) decide_disk_read();
  it->second.routed = true;
  ++stats_.routed_loads;
  if (threads_.empty() || pending_.count(id)) return;
  count_use(id);
  auto cached = expert_cache_.find(id);
  if (cached != expert_cache_.end() && cached->second.device == it->second.module.device) {
    ++stats_.expert_cache_hits;
    stats_.expert_bytes_cached += cached->second.bytes;
    expert_cache_used_ -= cached->second.bytes;
    pending_bytes_ += cached->second.bytes;
    pending_[id] = std::move(cached->second);
    expert_cache_.erase(cached);
    return;
  }
  if (cached != expert_cache_.end()) {  // cached for another device: stale
    expert_cache_used_ -= cached->second.bytes;
    expert_cache_.erase(cached);
  }
  ++stats_.expert_cache_misses;
  stats_.expert_bytes_loaded += it->second.module.bytes;
  start_prefetch(id, it->second);
}

void WeightStreamer::count_run_in_place(StreamedModuleId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = modules_.find(id);
  FERRY_CHECK(it != modules_.end(), "module ", static_cast<uint64_t>(id), " is not registered");
  it->second.routed = true;
  count_use(id);
  ++stats_.expert_runs_in_place;
  stats_.expert_bytes_in_place += it->second.module.bytes;
}

void WeightStreamer::drop_prefetched() {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.clear();
  pending_bytes_ = 0;
  expert_cache_.clear();
  expert_cache_used_ = 0;
}

int64_t WeightStreamer::expert_cache_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return expert_cache_used_;
}

bool WeightStreamer::expert_cached(StreamedModuleId id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return expert_cache_.count(id) > 0;
}

void WeightStreamer::decide_disk_read() {
  decided_ = true;
  DiskReadPlan plan;
  int64_t largest = 0;
  for (const auto& [id, r] : modules_) {
    plan.file_bytes += r.file_bytes;
    largest = std::max(largest, r.module.bytes);
  }
  const std::string in_files = format_bytes(static_cast<double>(plan.file_bytes)) + " of weights in files";
  HostMemory memory;
  if (options_.disk_read != DiskRead::mapped && plan.file_bytes > 0) {
    try {
      memory = host_memory();
      plan.available_bytes = memory.available;
    } catch (const Error& e) {
      if (options_.disk_read == DiskRead::automatic) {
        plan_ = plan;
        plan_.reason = "mapped: the free memory could not be measured (" + e.message() + ")";
        return;
      }
    }
  }
  if (options_.disk_read == DiskRead::mapped) {
    plan.reason = "mapped, as asked";
  } else if (options_.disk_read == DiskRead::direct) {
    plan.mode = DiskRead::direct;
    plan.reason = "direct, as asked";
  } else if (plan.file_bytes == 0) {
    plan.reason = "mapped: no weights are read from files";
  } else if (plan.file_bytes + kWorkingMemoryReserveBytes <= plan.available_bytes) {
    plan.reason = "mapped: the " + in_files + " fit in memory with room to spare (" + memory.describe() + ")";
  } else {
    plan.mode = DiskRead::direct;
    plan.reason = "direct: the " + in_files + " do not fit in memory beside " +
                  format_bytes(static_cast<double>(kWorkingMemoryReserveBytes)) + " for the rest (" + memory.describe() + ")";
  }
  if (plan.mode == DiskRead::direct) {
    // The buffers hold the window read ahead and the module that runs: the window is what the
    // budget leaves after one module, and never less than one module (or nothing could be read ahead).
    int64_t budget = options_.direct_read_budget_bytes;  // -1: none known
    if (budget <= 0)
      budget = plan.available_bytes >= 0 ? std::max<int64_t>(plan.available_bytes - kWorkingMemoryReserveBytes, 0) : -1;
    int64_t window = options_.prefetch_bytes;
    if (budget >= 0) window = std::min(window, budget - largest);
    if (options_.prefetch_bytes > 0) window = std::max(window, largest);
    plan.window_bytes = std::max<int64_t>(window, 0);
    plan.buffer_bytes = plan.window_bytes + largest;
    window_bytes_ = plan.window_bytes;
    reader_ = std::make_unique<io::DirectReader>(io::ReadBufferPool::create(plan.buffer_bytes));
    plan.reason += "; reading ahead at most " + format_bytes(static_cast<double>(plan.window_bytes));
  }
  plan_ = std::move(plan);
}

DiskReadPlan WeightStreamer::disk_read_plan() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!decided_) decide_disk_read();
  return plan_;
}

int64_t WeightStreamer::read_buffer_peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return reader_ ? reader_->pool()->peak_bytes_held() : 0;
}

StreamerStats WeightStreamer::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  StreamerStats s = stats_;
  if (reader_) {
    const io::DirectReadStats d = reader_->stats();
    s.direct_reads = d.reads - direct_baseline_.reads;
    s.direct_bytes_read = d.bytes_read - direct_baseline_.bytes_read;
    s.read_buffers_made = reader_->pool()->allocations();
  }
  return s;
}

void WeightStreamer::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = StreamerStats{};
  if (reader_) direct_baseline_ = reader_->stats();
}

size_t WeightStreamer::learned_length() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return learned_ ? order_.size() : 0;
}

int64_t WeightStreamer::prefetched_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_bytes_;
}

}  // namespace ferry
