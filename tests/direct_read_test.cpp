// Reading weights without the page cache (models larger than RAM): the direct reader reads exactly
// the bytes asked for at any offset, through O_DIRECT or, where the file system refuses it, through
// the page cache and out again; its buffer pool reuses and bounds memory; weights maps say where
// their weights are stored; the streamer in direct mode gives the same bits as the mapped path,
// reads a module's adjacent tensors together, decides by the memory it may use, and fails clearly
// when a file goes bad under it. The free-memory measure honours a real cgroup limit.

#include "ferry/core/error.h"
#include "ferry/core/memory_available.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/io/direct_reader.h"
#include "ferry/io/offload.h"
#include "ferry/io/safetensors.h"
#include "ferry/io/weights_map.h"
#include "ferry/plan/max_memory.h"
#include "dispatch_models.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

using namespace ferry;
using ferry_test::error_of;
using ferry_test::TempDir;
namespace fs = std::filesystem;

namespace {

// A file of `size` pseudo-random bytes; returns them.
std::vector<uint8_t> write_random_file(const std::string& path, size_t size, uint32_t seed = 7) {
  std::vector<uint8_t> bytes(size);
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(size));
  return bytes;
}

bool same_bytes(const io::DirectReader::Bytes& got, const std::vector<uint8_t>& file, uint64_t offset) {
  return std::equal(got.data, got.data + got.size, file.begin() + static_cast<std::ptrdiff_t>(offset));
}

}  // namespace

// ---- the reader and its pool -----------------------------------------------------------------

TEST(DirectReaderTest, ReadsExactlyTheBytesAskedForAtAnyOffset) {
  TempDir dir("direct");
  const std::string path = dir / "data.bin";
  const size_t size = 3 * 4096 * 64 + 1234;  // not a multiple of the block size
  auto file = write_random_file(path, size);
  io::DirectReader reader(io::ReadBufferPool::create(int64_t{64} << 20));
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {
      {0, 4096}, {1, 1}, {4095, 2}, {12345, 100000}, {8192, 4096 * 10}, {size - 7, 7}, {size - 5000, 5000}, {0, size}, {77, 0}};
  for (auto [offset, length] : ranges) {
    io::DirectReader::Bytes got = reader.read(path, offset, length);
    ASSERT_EQ(got.size, length);
    EXPECT_TRUE(same_bytes(got, file, offset)) << offset << "+" << length;
    // The data sits where the file's byte would in an aligned block: element alignment as mapped.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data) % 4096, offset % 4096);
  }
  io::DirectReadStats s = reader.stats();
  EXPECT_EQ(s.reads, static_cast<int64_t>(ranges.size()));
  EXPECT_EQ(s.direct_reads + s.buffered_reads, s.reads);
  EXPECT_GE(s.bytes_read, static_cast<int64_t>(size));
}

namespace {

// Pages of the first `length` bytes of `path` that are in the page cache (mincore on a mapping).
size_t cached_pages(const std::string& path, size_t length) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  void* map = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return SIZE_MAX;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((length + page - 1) / page);
  ::mincore(map, length, resident.data());
  ::munmap(map, length);
  return static_cast<size_t>(std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return r & 1; }));
}

}  // namespace

TEST(DirectReaderTest, WithoutODirectReadsLeaveNothingInThePageCache) {
  // What the reader does where a file system refuses O_DIRECT: an ordinary read, then the range is
  // dropped from the page cache.
  TempDir dir("direct");
  const std::string path = dir / "data.bin";
  auto file = write_random_file(path, 1 << 20, 3);
  {  // a file as a checkpoint is: on disk, not in the page cache
    ::sync();
    const int fd = ::open(path.c_str(), O_RDONLY);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  ASSERT_EQ(cached_pages(path, 500333), 0u);
  io::DirectReader reader(io::ReadBufferPool::create(1 << 20), /*use_o_direct=*/false);
  io::DirectReader::Bytes got = reader.read(path, 333, 500000);
  EXPECT_TRUE(same_bytes(got, file, 333));
  EXPECT_EQ(reader.stats().buffered_reads, 1);
  EXPECT_EQ(reader.stats().direct_reads, 0);
  EXPECT_EQ(cached_pages(path, 500333), 0u);
}

TEST(DirectReaderTest, AFileThatShrankOrIsMissingIsAClearError) {
  TempDir dir("direct");
  const std::string path = dir / "shard.safetensors";
  write_random_file(path, 50000);
  io::DirectReader reader(io::ReadBufferPool::create(1 << 20));
  (void)reader.read(path, 40000, 10000);  // opened and read while whole
  fs::resize_file(path, 30000);
  std::string message = error_of([&] { reader.read(path, 40000, 10000); });
  EXPECT_NE(message.find("cannot read bytes 40000..50000 of " + path), std::string::npos) << message;
  EXPECT_NE(message.find("the file ends at byte 30000."), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  message = error_of([&] { reader.read(dir / "gone.safetensors", 0, 10); });
  EXPECT_NE(message.find("cannot open " + (dir / "gone.safetensors")), std::string::npos) << message;
  EXPECT_NE(message.find("No such file"), std::string::npos) << message;
}

TEST(ReadBufferPoolTest, ReusesTheSmallestFittingBufferAndKeepsNoMoreThanItMay) {
  auto pool = io::ReadBufferPool::create(int64_t{6} << 20);
  const uint8_t* first = nullptr;
  {
    auto a = pool->acquire(3 << 20);
    auto b = pool->acquire(1000);
    first = a->data;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data) % io::ReadBufferPool::kAlignment, 0u);
    EXPECT_GE(a->capacity, size_t{3} << 20);
    EXPECT_EQ(pool->allocations(), 2);
  }
  EXPECT_EQ(pool->bytes_held(), (int64_t{4} << 20) /* 2 huge pages */ + 4096);
  {
    auto small = pool->acquire(500);  // the 4 KiB one, not the 4 MiB one
    EXPECT_EQ(small->capacity, 4096u);
    auto big = pool->acquire(2 << 20);
    EXPECT_EQ(big->data, first);
    EXPECT_EQ(pool->reuses(), 2);
    auto extra = pool->acquire(int64_t{4} << 20);  // none free: a new one
    EXPECT_EQ(pool->allocations(), 3);
  }
  // Returned: 4 MiB, then 4 MiB and 4 KiB; the pool may hold 6 MiB: the first one is unmapped.
  EXPECT_EQ(pool->bytes_held(), (int64_t{4} << 20) + 4096);
  EXPECT_EQ(pool->peak_bytes_held(), (int64_t{8} << 20) + 4096);
}

TEST(CoalesceReadsTest, NeighboursShareAReadUpToItsLimitPerFile) {
  auto e = [](const std::string& path, uint64_t offset, uint64_t length) {
    return io::FileExtent{path, offset, length, at::kByte, {static_cast<int64_t>(length)}};
  };
  const uint64_t MiB = 1 << 20;
  std::vector<io::FileExtent> extents = {
      e("b", 0, 10),                 // 0: another file
      e("a", 100, 50),               // 1
      e("a", 0, 100),                // 2: adjacent to 1 (given out of order)
      e("a", 150 + 64 * 1024, 10),   // 3: a gap of exactly 64 KiB: still together
      e("a", 200 + 3 * MiB, 10),     // 4: a larger gap: a read of its own
      e("a", 10 * MiB, 40 * MiB),    // 5
      e("a", 50 * MiB, 40 * MiB),    // 6: adjacent, but 80 MiB together is past the limit
      e("a", 90 * MiB, 100 * MiB)};  // 7: larger than the limit alone
  std::vector<io::ReadRun> runs = io::coalesce_reads(extents);
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_EQ(runs[0].extents, (std::vector<size_t>{2, 1, 3}));
  EXPECT_EQ(runs[0].begin, 0u);
  EXPECT_EQ(runs[0].end, 160 + 64 * 1024);
  EXPECT_EQ(runs[1].extents, std::vector<size_t>{4});
  EXPECT_EQ(runs[2].extents, std::vector<size_t>{5});
  EXPECT_EQ(runs[3].extents, std::vector<size_t>{6});
  EXPECT_EQ(runs[4].extents, std::vector<size_t>{7});
  EXPECT_EQ(runs[4].end - runs[4].begin, 100 * MiB);
  EXPECT_EQ(runs[5].path, "b");
}

// ---- where weights maps keep their weights ----------------------------------------------------

TEST(FileExtentTest, EveryFileBackedMapSaysWhereItsBytesAreAndTheyReadBackEqual) {
  TempDir dir("extent");
  at::manual_seed(0);
  io::NamedTensors tensors = {{"a.weight", at::randn({37, 11})},
                              {"a.bias", at::randn({11}).to(at::kBFloat16)},
                              {"b.scale", at::randn({})},
                              {"b.ids", at::arange(5, at::kLong)}};
  io::save_safetensors(dir / "model.safetensors", tensors);
  auto checkpoint = io::make_checkpoint_weights_map(io::Checkpoint::open(dir / "model.safetensors"));
  io::offload_state_dict(dir / "offload", tensors);
  auto folder = io::make_offload_folder_weights_map(dir / "offload");
  auto prefixed = io::make_prefixed_weights_map(checkpoint, "a.");
  auto in_memory = io::make_state_dict_weights_map(tensors);
  auto both = io::make_union_weights_map({in_memory, folder});

  io::DirectReader reader(io::ReadBufferPool::create(1 << 20));
  for (const auto& map : {checkpoint, folder}) {
    for (const auto& [name, expected] : tensors) {
      std::optional<io::FileExtent> extent = map->file_extent(name);
      ASSERT_TRUE(extent.has_value()) << name;
      EXPECT_EQ(extent->dtype, expected.scalar_type()) << name;
      EXPECT_EQ(extent->shape, expected.sizes().vec()) << name;
      EXPECT_EQ(extent->length, static_cast<uint64_t>(expected.numel() * expected.element_size())) << name;
      EXPECT_TRUE(at::equal(reader.read_tensor(*extent), expected)) << name;
    }
  }
  EXPECT_TRUE(at::equal(reader.read_tensor(prefixed->file_extent("weight").value()), tensors[0].second));
  EXPECT_FALSE(in_memory->file_extent("a.weight").has_value()) << "held in memory";
  EXPECT_FALSE(both->file_extent("a.weight").has_value()) << "the state dict wins the union";
  EXPECT_THROW(checkpoint->file_extent("nope"), Error);
  EXPECT_THROW(in_memory->file_extent("nope"), Error);
}

// ---- the streamer in direct mode ---------------------------------------------------------------

namespace {

// `layers` blocks applied in turn.
class Blocks : public Module {
 public:
  Blocks(int64_t dim, int layers) : Module("Blocks") {
    blocks = register_module("blocks", std::make_shared<ModuleList>());
    for (int i = 0; i < layers; ++i) blocks->push_back(std::make_shared<ferry::testing::Block>(dim));
  }
  c10::IValue forward(Args& args) override {
    at::Tensor h = args.tensor(0);
    for (size_t i = 0; i < blocks->size(); ++i) h = (*blocks)[i](h);
    return h;
  }
  at::Tensor run(const at::Tensor& x) {
    Args args{x};
    return (*this)(args).toTensor();
  }
  std::shared_ptr<ModuleList> blocks;
};

// `layers` layers of weight [dim, dim], bias [dim] and norm [dim], float32, in one file (a layer's
// tensors next to each other: save_safetensors orders by element size, then name).
io::WeightsMapPtr layered_checkpoint(const TempDir& dir, int layers, int64_t dim) {
  io::NamedTensors tensors;
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    tensors.emplace_back(p + "weight", at::randn({dim, dim}));
    tensors.emplace_back(p + "bias", at::randn({dim}));
    tensors.emplace_back(p + "norm", at::randn({dim}));
  }
  io::save_safetensors(dir / "model.safetensors", tensors);
  return io::make_checkpoint_weights_map(io::Checkpoint::open(dir / "model.safetensors"));
}

std::vector<StreamedModuleId> register_layers(WeightStreamer& s, const io::WeightsMapPtr& w, int layers) {
  std::vector<StreamedModuleId> ids;
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    // The bias is used in float64: a cast after the read.
    StreamedModule m{w, {{p + "weight", at::kFloat}, {p + "bias", at::kDouble}, {p + "norm", at::kFloat}}, c10::kCPU, 0};
    for (const auto& t : m.tensors) m.bytes += static_cast<int64_t>(w->info(t.name).nbytes);
    ids.push_back(s.add_module(m));
  }
  return ids;
}

// One pass over every layer as a hook runs it; every fetched tensor must equal the map's own load
// and, in direct mode, must not be the mapping's memory.
void direct_pass(WeightStreamer& s, const io::WeightsMapPtr& w, const std::vector<StreamedModuleId>& ids) {
  for (size_t layer = 0; layer < ids.size(); ++layer) {
    s.on_forward(ids[layer]);
    const std::string p = "layers." + std::to_string(layer) + ".";
    const std::vector<std::string> names = {p + "weight", p + "bias", p + "norm"};
    const std::vector<c10::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kFloat};
    for (size_t i = 0; i < names.size(); ++i) {
      at::Tensor got = s.fetch(ids[layer], i, c10::kCPU);
      at::Tensor mapped = w->load(names[i], c10::kCPU, dtypes[i]);
      EXPECT_EQ(got.scalar_type(), dtypes[i]);
      EXPECT_TRUE(at::equal(got, mapped)) << names[i];
      EXPECT_NE(got.data_ptr(), mapped.data_ptr()) << names[i] << " came from the mapping";
    }
    s.release(ids[layer]);
  }
}

}  // namespace

TEST(StreamerDirectTest, DirectReadsGiveTheMappedBitsWithOneReadPerModule) {
  at::manual_seed(1);
  TempDir dir("direct");
  const int layers = 6;
  auto weights = layered_checkpoint(dir, layers, 64);
  StreamerOptions options;
  options.disk_read = DiskRead::direct;
  const int64_t layer_bytes = 64 * 64 * 4 + 2 * 64 * 4;
  options.prefetch_bytes = 3 * layer_bytes;  // three layers ahead
  WeightStreamer streamer(options);
  auto ids = register_layers(streamer, weights, layers);
  DiskReadPlan plan = streamer.disk_read_plan();
  EXPECT_EQ(plan.mode, DiskRead::direct);
  EXPECT_EQ(plan.reason.rfind("direct, as asked", 0), 0u) << plan.reason;
  EXPECT_EQ(plan.file_bytes, layers * layer_bytes);
  EXPECT_EQ(plan.window_bytes, 3 * layer_bytes);
  for (int pass = 0; pass < 4; ++pass) direct_pass(streamer, weights, ids);
  StreamerStats stats = streamer.stats();
  // Loads on demand, one read per tensor: pass 1 (recording the order) and layer 0 of pass 2 (the
  // order is known only when it comes round again). Every other layer is prefetched, its three
  // adjacent tensors in one read: layers 1-5 of pass 2, all six of passes 3 and 4.
  EXPECT_EQ(stats.demand_loads, (layers + 1) * 3);
  EXPECT_EQ(stats.prefetched_loads, (3 * layers - 1) * 3);
  // (Up to three more reads: the window's first layers of a fifth pass, read ahead as pass 4 ends.)
  EXPECT_GE(stats.direct_reads, (layers + 1) * 3 + (3 * layers - 1));
  EXPECT_LE(stats.direct_reads, (layers + 1) * 3 + (3 * layers - 1) + 3);
  // The buffers never held more than the window, the layer that runs and the alignment of each read.
  EXPECT_LE(streamer.read_buffer_peak_bytes(), plan.buffer_bytes + 5 * 2 * 4096);
}

TEST(StreamerDirectTest, DecidesByTheMemoryItMayUse) {
  at::manual_seed(2);
  TempDir dir("direct");
  auto weights = layered_checkpoint(dir, 3, 32);
  {
    WeightStreamer streamer;  // automatic: a few KiB in files fit in any machine's free memory
    register_layers(streamer, weights, 3);
    DiskReadPlan plan = streamer.disk_read_plan();
    EXPECT_EQ(plan.mode, DiskRead::mapped);
    EXPECT_GT(plan.available_bytes, 0);
    EXPECT_NE(plan.reason.find("fit in memory"), std::string::npos) << plan.reason;
  }
  {
    StreamerOptions options;
    options.disk_read = DiskRead::mapped;
    WeightStreamer streamer(options);
    register_layers(streamer, weights, 3);
    EXPECT_EQ(streamer.disk_read_plan().reason, "mapped, as asked");
  }
  {
    // Direct with a budget smaller than a module: still one module ahead (or nothing could run ahead).
    StreamerOptions options;
    options.disk_read = DiskRead::direct;
    options.direct_read_budget_bytes = 100;
    WeightStreamer streamer(options);
    register_layers(streamer, weights, 3);
    DiskReadPlan plan = streamer.disk_read_plan();
    const int64_t layer_bytes = 32 * 32 * 4 + 2 * 32 * 4;
    EXPECT_EQ(plan.window_bytes, layer_bytes);
    EXPECT_EQ(plan.buffer_bytes, 2 * layer_bytes);
  }
  {
    WeightStreamer streamer;  // nothing in files: mapped without measuring
    auto in_memory = io::make_state_dict_weights_map({{"layers.0.weight", at::ones({2, 2})},
                                                      {"layers.0.bias", at::ones({2})},
                                                      {"layers.0.norm", at::ones({2})}});
    register_layers(streamer, in_memory, 1);
    EXPECT_EQ(streamer.disk_read_plan().reason, "mapped: no weights are read from files");
  }
  EXPECT_EQ(parse_disk_read("direct"), DiskRead::direct);
  EXPECT_EQ(parse_disk_read("auto"), DiskRead::automatic);
  EXPECT_NE(error_of([] { parse_disk_read("odirect"); }).find("expected auto, mapped or direct"), std::string::npos);
}

TEST(StreamerDirectTest, DiskOffloadedModelsGiveTheSameBitsMappedAndDirect) {
  at::manual_seed(3);
  Blocks model(48, 5);
  at::Tensor x = at::randn({4, 48});
  at::Tensor expected = model.run(x);
  for (DiskRead mode : {DiskRead::mapped, DiskRead::direct}) {
    for (int64_t prefetch : {int64_t{0}, int64_t{1} << 30}) {
      TempDir dir("direct");
      OffloadOptions options;
      options.streamer.disk_read = mode;
      options.streamer.prefetch_bytes = prefetch;
      options.streamer.io_threads = 3;
      auto state = disk_offload(model, dir.str(), options);
      for (int pass = 0; pass < 3; ++pass)
        EXPECT_TRUE(at::equal(model.run(x), expected)) << disk_read_name(mode) << " prefetch " << prefetch;
      if (state->streamer) {
        EXPECT_EQ(state->streamer->disk_read_plan().mode, mode);
        EXPECT_EQ(state->streamer->stats().direct_reads > 0, mode == DiskRead::direct);
      }
      remove_hook_from_submodules(model);
    }
  }
}

TEST(StreamerDirectTest, AFileThatGoesBadMidRunFailsTheForwardAndLeavesNoWeights) {
  at::manual_seed(4);
  TempDir dir("direct");
  Blocks model(64, 4);
  at::Tensor x = at::randn({2, 64});
  at::Tensor expected = model.run(x);
  OffloadOptions options;
  options.streamer.disk_read = DiskRead::direct;
  auto state = disk_offload(model, dir.str(), options);
  for (int pass = 0; pass < 2; ++pass) EXPECT_TRUE(at::equal(model.run(x), expected));
  // Every .dat file of the offload folder loses its second half.
  std::vector<std::pair<std::string, std::string>> originals;
  for (const auto& e : fs::directory_iterator(dir.path()))
    if (e.path().extension() == ".dat") {
      std::ifstream in(e.path(), std::ios::binary);
      originals.emplace_back(e.path().string(), std::string(std::istreambuf_iterator<char>(in), {}));
      fs::resize_file(e.path(), originals.back().second.size() / 2);
    }
  std::string message = error_of([&] { model.run(x); });
  EXPECT_NE(message.find("the file ends at byte"), std::string::npos) << message;
  EXPECT_NE(message.find(".dat"), std::string::npos) << message;
  for (auto& [name, t] : model.named_parameters()) EXPECT_TRUE(t.is_meta()) << name;
  // The files back as they were: the same streamer reads them again, and right.
  for (const auto& [path, bytes] : originals)
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  for (int pass = 0; pass < 2; ++pass) EXPECT_TRUE(at::equal(model.run(x), expected));
  remove_hook_from_submodules(model);
}

// ---- the free-memory measure under a real cgroup limit ------------------------------------------

TEST(HostMemoryTest, ACgroupLimitBoundsWhatIsAvailable) {
  HostMemory here = host_memory();
  EXPECT_GT(here.available, 0);
  EXPECT_LE(here.available, here.mem_available);
  EXPECT_NE(here.describe().find("available"), std::string::npos);

  const int64_t limit = int64_t{300} << 20;
  ferry_test::MemoryCgroup cgroup(limit);
  if (cgroup.path().empty()) GTEST_SKIP() << "cannot make a cgroup-v1 memory cgroup here (needs root and /sys/fs/cgroup/memory)";
  // A child process joins the cgroup and measures; it reports through a pipe.
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(out[0]);
    { std::ofstream(cgroup.path() / "cgroup.procs") << ::getpid(); }
    HostMemory m = host_memory();
    // The planner's detected cpu budget leaves working memory out under the limit.
    const int64_t cpu_budget = budget_of(get_max_memory(), Placement::cpu());
    const std::string report = std::to_string(m.cgroup_limit) + " " + std::to_string(m.available) + " " +
                               std::to_string(cpu_budget) + " " + m.cgroup_path;
    (void)!::write(out[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(out[1]);
  std::string report;
  char buf[512];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) report.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  long long got_limit = 0, available = 0, cpu_budget = 0;
  char path[256] = {};
  ASSERT_EQ(std::sscanf(report.c_str(), "%lld %lld %lld %255s", &got_limit, &available, &cpu_budget, path), 4) << report;
  EXPECT_EQ(got_limit, limit);
  EXPECT_LE(available, limit);
  // Measured a moment apart, so within a few MiB of available - 512 MiB (and never negative).
  EXPECT_LE(cpu_budget, std::max<long long>(available - kWorkingMemoryReserveBytes, 0) + (8 << 20)) << report;
  EXPECT_GE(cpu_budget, 0) << report;
  EXPECT_EQ(std::string(path), cgroup.path().string());
}
