// core: placements, byte sizes, dtype sizes, errors, the log sink.
#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/host_memory.h"
#include "ferry/core/log.h"
#include "ferry/core/placement.h"
#include "ferry/plan/max_memory.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <sstream>
#include <thread>
#include <unordered_set>

namespace {

using ferry_test::error_of;
using ferry_test::has;

// ---- Placement -------------------------------------------------------------------------------

TEST(CoreTest, PlacementParsesAccelerateSpellings) {
  auto cuda1 = ferry::Placement::parse("cuda:1");
  EXPECT_TRUE(cuda1.is_device());
  EXPECT_TRUE(cuda1.is_accelerator());
  EXPECT_EQ(cuda1.device(), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(cuda1.str(), "cuda:1");
  EXPECT_EQ(cuda1.hf_str(), "1");

  auto one = ferry::Placement::parse("1");
  EXPECT_EQ(one, ferry::Placement::cuda(1));
  EXPECT_EQ(one, cuda1);
  EXPECT_EQ(ferry::Placement::parse("0").hf_str(), "0");
  EXPECT_EQ(ferry::Placement::parse("0").str(), "cuda:0");

  auto cpu = ferry::Placement::parse("cpu");
  EXPECT_TRUE(cpu.is_cpu());
  EXPECT_FALSE(cpu.is_accelerator());
  EXPECT_EQ(cpu.device(), c10::Device(c10::kCPU));
  EXPECT_EQ(cpu.str(), "cpu");
  EXPECT_EQ(cpu.hf_str(), "cpu");
  EXPECT_EQ(cpu, ferry::Placement());

  auto disk = ferry::Placement::parse("disk");
  EXPECT_TRUE(disk.is_disk());
  EXPECT_FALSE(disk.is_device());
  EXPECT_FALSE(disk.is_cpu());
  EXPECT_EQ(disk.str(), "disk");
  EXPECT_EQ(disk.hf_str(), "disk");
  EXPECT_EQ(disk, ferry::Placement::disk());
  EXPECT_NE(disk, cpu);

  auto meta = ferry::Placement::parse("meta");
  EXPECT_TRUE(meta.is_meta());
  EXPECT_FALSE(meta.is_accelerator());
  EXPECT_EQ(meta.str(), "meta");

  EXPECT_EQ(ferry::Placement::parse("cuda").str(), "cuda");
  EXPECT_TRUE(ferry::Placement::parse("mps").is_accelerator());
}

// Issue 18: every accelerator name PyTorch uses parses (as Accelerate's maps may hold them) and is
// refused with a clear message where it would be used, since ferry runs on CPU, disk and CUDA only.
TEST(CoreTest, OtherAcceleratorsParseAndAreRefusedWhereUsed) {
  for (const std::string text : {"mps", "mps:0", "xpu", "xpu:1", "hpu:0"}) {
    ferry::Placement p = ferry::Placement::parse(text);
    EXPECT_TRUE(p.is_accelerator()) << text;
    EXPECT_EQ(ferry::Placement::parse(p.str()), p) << text;
    const std::string msg = ferry_test::error_of([&] { ferry::check_placement_available(p, "module 'x'"); });
    EXPECT_NE(msg.find("module 'x' is " + p.str() + ": ferry runs weights on the CPU, disk and CUDA GPUs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("devices here: cpu, disk"), std::string::npos) << msg;
  }
  const std::string npu = ferry_test::error_of([] { ferry::Placement::parse("npu:0"); });
  EXPECT_NE(npu.find("device 'npu:0' belongs to a PyTorch extension (e.g. torch_npu"), std::string::npos) << npu;
  const std::string bad = ferry_test::error_of([] { ferry::Placement::parse("xpu:one"); });
  EXPECT_NE(bad.find("invalid device 'xpu:one': 'one' is not a device index"), std::string::npos) << bad;
}

TEST(CoreTest, PlacementPrintsAndRoundTrips) {
  for (const std::string text : {"cuda:0", "cuda:3", "cpu", "disk", "meta"}) {
    auto p = ferry::Placement::parse(text);
    EXPECT_EQ(p.str(), text);
    EXPECT_EQ(ferry::Placement::parse(p.str()), p);
    EXPECT_EQ(ferry::Placement::parse(p.hf_str()), p);
    std::ostringstream out;
    out << p;
    EXPECT_EQ(out.str(), text);
  }
}

TEST(CoreTest, PlacementOrderAndHash) {
  using P = ferry::Placement;
  // Accelerate's order: accelerators by ordinal, then cpu, then disk.
  EXPECT_LT(P::cuda(0), P::cuda(1));
  EXPECT_LT(P::cuda(1), P::cpu());
  EXPECT_LT(P::cpu(), P::disk());
  EXPECT_FALSE(P::disk() < P::disk());
  EXPECT_FALSE(P::cpu() < P::cuda(5));
  std::unordered_set<P> set{P::cpu(), P::disk(), P::cuda(0), P::parse("0"), P::parse("cpu")};
  EXPECT_EQ(set.size(), 3u);
}

TEST(CoreTest, PlacementRejectsBadDevices) {
  std::string gpu = error_of([] { ferry::Placement::parse("gpu"); });
  EXPECT_TRUE(has(gpu, "[parse] invalid device 'gpu'")) << gpu;
  EXPECT_TRUE(has(gpu, "\"cuda:N\"")) << gpu;

  std::string letter = error_of([] { ferry::Placement::parse("cuda:x"); });
  EXPECT_TRUE(has(letter, "invalid device 'cuda:x': 'x' is not a device index")) << letter;

  std::string empty_index = error_of([] { ferry::Placement::parse("cuda:"); });
  EXPECT_TRUE(has(empty_index, "invalid device 'cuda:'")) << empty_index;

  std::string negative = error_of([] { ferry::Placement::parse("-1"); });
  EXPECT_TRUE(has(negative, "invalid device '-1': accelerator indices cannot be negative")) << negative;

  std::string negative_cuda = error_of([] { ferry::Placement::parse("cuda:-1"); });
  EXPECT_TRUE(has(negative_cuda, "invalid device 'cuda:-1'")) << negative_cuda;

  std::string huge = error_of([] { ferry::Placement::parse("123456"); });
  EXPECT_TRUE(has(huge, "accelerator index '123456' is out of range")) << huge;

  std::string blank = error_of([] { ferry::Placement::parse(""); });
  EXPECT_TRUE(has(blank, "invalid device ''")) << blank;

  std::string upper = error_of([] { ferry::Placement::parse("CPU"); });
  EXPECT_TRUE(has(upper, "invalid device 'CPU'")) << upper;

  std::string disk_device = error_of([] { ferry::Placement::disk().device(); });
  EXPECT_TRUE(has(disk_device, "the disk is not a torch device")) << disk_device;
}

// ---- byte sizes (convert_file_size_to_int) ---------------------------------------------------

TEST(CoreTest, ParseByteSizeMatchesAccelerate) {
  EXPECT_EQ(ferry::parse_byte_size("0MB"), 0);
  EXPECT_EQ(ferry::parse_byte_size("100MB"), 100000000);
  EXPECT_EQ(ferry::parse_byte_size("2GiB"), 2LL * (1LL << 30));
  EXPECT_EQ(ferry::parse_byte_size("512KiB"), 512LL * 1024);
  EXPECT_EQ(ferry::parse_byte_size("1.5GB"), 1500000000LL);
  EXPECT_EQ(ferry::parse_byte_size("100KB"), 100000);
  EXPECT_EQ(ferry::parse_byte_size("500"), 500);
  EXPECT_EQ(ferry::parse_byte_size("10GiB"), 10LL * (1LL << 30));
  EXPECT_EQ(ferry::parse_byte_size("3MiB"), 3LL * (1 << 20));
  // Case-insensitive units; a trailing lower-case "b" on a decimal unit means bits.
  EXPECT_EQ(ferry::parse_byte_size("2gib"), 2LL * (1LL << 30));
  EXPECT_EQ(ferry::parse_byte_size("100Mb"), 12500000);
  EXPECT_EQ(ferry::parse_byte_size("8kb"), 1000);
  EXPECT_EQ(ferry::parse_byte_size("1GB"), 1000000000LL);
}

TEST(CoreTest, ParseByteSizeRejectsBadSizes) {
  std::string mbb = error_of([] { ferry::parse_byte_size("5MBB"); });
  EXPECT_TRUE(has(mbb, "[parse_byte_size] '5MBB' is not a valid size")) << mbb;
  EXPECT_TRUE(has(mbb, "\"10GiB\"")) << mbb;

  std::string k0 = error_of([] { ferry::parse_byte_size("5k0MB"); });
  EXPECT_TRUE(has(k0, "'5k0MB' is not a valid size: '5k0' is not a number")) << k0;

  std::string negative = error_of([] { ferry::parse_byte_size("-1GB"); });
  EXPECT_TRUE(has(negative, "size '-1GB' is negative")) << negative;

  std::string negative_int = error_of([] { ferry::parse_byte_size("-5"); });
  EXPECT_TRUE(has(negative_int, "size '-5' is negative")) << negative_int;

  std::string fraction = error_of([] { ferry::parse_byte_size("1.5"); });
  EXPECT_TRUE(has(fraction, "'1.5' is not a whole number of bytes")) << fraction;

  std::string empty = error_of([] { ferry::parse_byte_size(""); });
  EXPECT_TRUE(has(empty, "'' is not a valid size")) << empty;

  std::string unit_only = error_of([] { ferry::parse_byte_size("GB"); });
  EXPECT_TRUE(has(unit_only, "'GB' is not a valid size: '' is not a number")) << unit_only;

  std::string unknown_unit = error_of([] { ferry::parse_byte_size("10TB"); });
  EXPECT_TRUE(has(unknown_unit, "'10TB' is not a valid size")) << unknown_unit;

  std::string huge = error_of([] { ferry::parse_byte_size("1e30GB"); });
  EXPECT_TRUE(has(huge, "size '1e30GB' is too large")) << huge;
}

TEST(CoreTest, FormatBytes) {
  EXPECT_EQ(ferry::format_bytes(512), "512 B");
  EXPECT_EQ(ferry::format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(ferry::format_bytes(12.3 * (1LL << 30)), "12.3 GiB");
}

// ---- dtypes ----------------------------------------------------------------------------------

TEST(CoreTest, DtypeByteSize) {
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kBool), 0.125);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kHalf), 2);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kBFloat16), 2);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kFloat), 4);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kDouble), 8);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kLong), 8);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kByte), 1);
  EXPECT_DOUBLE_EQ(ferry::dtype_byte_size(c10::kComplexFloat), 8);
  EXPECT_EQ(ferry::dtype_bits(c10::kBool), 1);
  EXPECT_EQ(ferry::dtype_storage_bytes(c10::kBool), 1);  // in memory a bool still takes a byte
}

TEST(CoreTest, DtypeNamesParseAndPrint) {
  EXPECT_EQ(ferry::dtype_name(c10::kBFloat16), "bfloat16");
  EXPECT_EQ(ferry::dtype_name(c10::kFloat), "float32");
  EXPECT_EQ(ferry::dtype_name(c10::kLong), "int64");
  EXPECT_EQ(ferry::parse_dtype("torch.float16"), c10::kHalf);
  EXPECT_EQ(ferry::parse_dtype("float16"), c10::kHalf);
  EXPECT_EQ(ferry::parse_dtype("half"), c10::kHalf);
  EXPECT_EQ(ferry::parse_dtype("torch.bfloat16"), c10::kBFloat16);
  EXPECT_EQ(ferry::parse_dtype("long"), c10::kLong);
  EXPECT_TRUE(ferry::is_floating_dtype(c10::kBFloat16));
  EXPECT_FALSE(ferry::is_floating_dtype(c10::kLong));
  EXPECT_FALSE(ferry::is_floating_dtype(c10::kBool));

  std::string bad = error_of([] { ferry::parse_dtype("float17"); });
  EXPECT_TRUE(has(bad, "[parse_dtype] unknown dtype 'float17'; expected one of: float32, float64")) << bad;
}

// ---- errors and log --------------------------------------------------------------------------

int checked_function(int n) {
  FERRY_CHECK(n >= 0, "size must be non-negative, got ", n);
  return n;
}

TEST(CoreTest, ErrorMacrosNameTheFunction) {
  EXPECT_EQ(checked_function(3), 3);
  EXPECT_EQ(error_of([] { checked_function(-1); }), "[checked_function] size must be non-negative, got -1");
  try {
    FERRY_ASSERT(1 + 1 == 3, "arithmetic");
    FAIL() << "FERRY_ASSERT did not throw";
  } catch (const ferry::InternalError& e) {
    EXPECT_TRUE(has(e.what(), "[TestBody] internal error at ")) << e.what();
    EXPECT_TRUE(has(e.what(), "core_test.cpp:")) << e.what();  // where the invariant broke
    EXPECT_TRUE(has(e.what(), "(please report a bug): 1 + 1 == 3. arithmetic")) << e.what();
  }
}

TEST(CoreTest, LogCaptureCollectsFromAnyThreadAndRestores) {
  {
    ferry::ScopedLogCapture capture;
    ferry::log_warning("first warning");
    std::thread([] { ferry::log_info("from a thread"); }).join();
    EXPECT_TRUE(capture.contains("first warning"));
    EXPECT_TRUE(capture.contains(ferry::LogLevel::Info, "from a thread"));
    EXPECT_FALSE(capture.contains(ferry::LogLevel::Warning, "from a thread"));
    ASSERT_EQ(capture.entries().size(), 2u);
    {
      ferry::ScopedLogCapture inner;
      ferry::log_warning("inner only");
      EXPECT_TRUE(inner.contains("inner only"));
    }
    EXPECT_FALSE(capture.contains("inner only"));
    ferry::log_warning("after inner");
    EXPECT_TRUE(capture.contains("after inner"));
  }
  EXPECT_STREQ(ferry::to_string(ferry::LogLevel::Warning), "warning");
}

}  // namespace

TEST(HostMemoryTest, HostTensorsHoldTheirValuesAtAnySize) {
  // Sizes below, at and across the 2 MiB huge-page size; the advice never changes values.
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1} << 19, (int64_t{3} << 20) + 5}) {
    at::Tensor source = at::arange(n, at::kDouble);
    at::Tensor copy = ferry::copy_to_host(source, at::kFloat);
    EXPECT_EQ(copy.scalar_type(), at::kFloat);
    EXPECT_TRUE(copy.device().is_cpu());
    EXPECT_TRUE(at::equal(copy, source.to(at::kFloat))) << n;
    EXPECT_EQ(ferry::empty_host_tensor({n}, at::kByte).numel(), n);
  }
}

TEST(HostMemoryTest, LargeHostTensorsAskForHugePages) {
  if (!ferry_test::kernel_has_huge_pages()) GTEST_SKIP() << "no transparent huge pages in this kernel";
  at::Tensor big = ferry::empty_host_tensor({int64_t{8} << 20}, at::kByte);  // 8 MiB: whole huge pages inside
  auto begin = reinterpret_cast<uintptr_t>(big.data_ptr());
  auto first_huge = reinterpret_cast<const void*>((begin + ferry::kHugePageBytes - 1) & ~(ferry::kHugePageBytes - 1));
  EXPECT_TRUE(ferry_test::has(ferry_test::vma_flags(first_huge), " hg")) << ferry_test::vma_flags(first_huge);
}
