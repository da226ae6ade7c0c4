// safetensors reader and writer: real files, including hostile ones.

#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/mapped_file_faults.h"
#include "ferry/io/safetensors.h"
#include "io_test_util.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

using namespace ferry::io;
using ferry::test::data_dir;
using ferry::test::read_bytes;
using ferry::test::safetensors_image;
using ferry::test::TempDir;
using ferry::test::write_bytes;

namespace {

// Reads the header of a safetensors file with nothing but nlohmann, independently of ferry's parser.
nlohmann::json raw_header(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return nlohmann::json::parse(bytes.substr(8, n));
}

std::vector<std::string> shard_files(const std::string& folder) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(folder))
    if (e.path().extension() == ".safetensors" && e.path().filename() != "reference.safetensors")
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(SafetensorsTest, FixtureTensorsAreBitIdenticalToTheFileBytes) {
  for (const char* model : {"tiny_llama", "tiny_qwen2"}) {
    const auto files = shard_files(data_dir() + "/" + model);
    ASSERT_FALSE(files.empty());
    size_t checked = 0;
    for (const auto& path : files) {
      const std::string bytes = read_bytes(path);
      const nlohmann::json header = raw_header(bytes);
      uint64_t n = 0;
      std::memcpy(&n, bytes.data(), 8);
      SafetensorsFile file = SafetensorsFile::open(path);
      EXPECT_EQ(file.header().data_offset, 8 + n);
      size_t tensors = 0;
      for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") continue;
        ++tensors;
        const uint64_t begin = it.value()["data_offsets"][0], end = it.value()["data_offsets"][1];
        const std::string expected = bytes.substr(8 + n + begin, end - begin);
        at::Tensor view = file.view(it.key());
        EXPECT_EQ(view.sizes().vec(), it.value()["shape"].get<std::vector<int64_t>>()) << it.key();
        EXPECT_EQ(safetensors_dtype_code(view.scalar_type()), it.value()["dtype"].get<std::string>());
        ASSERT_EQ(static_cast<size_t>(view.numel() * view.element_size()), expected.size());
        EXPECT_EQ(std::memcmp(view.data_ptr(), expected.data(), expected.size()), 0) << it.key();
        at::Tensor copy = file.load(it.key());
        EXPECT_NE(copy.data_ptr(), view.data_ptr());
        EXPECT_EQ(std::memcmp(copy.data_ptr(), expected.data(), expected.size()), 0) << it.key();
        ++checked;
      }
      EXPECT_EQ(file.tensors().size(), tensors);
      EXPECT_EQ(file.metadata().at("format"), "pt");
    }
    EXPECT_GT(checked, 20u) << model;
  }
}

TEST(SafetensorsTest, QwenIsBf16AndLoadCastsFloatingTensors) {
  const auto files = shard_files(data_dir() + "/tiny_qwen2");
  SafetensorsFile file = SafetensorsFile::open(files.front());
  const TensorEntry& e = file.tensors().front();
  EXPECT_EQ(e.dtype, at::kBFloat16);
  at::Tensor f32 = file.load(e.name, at::kCPU, at::kFloat);
  EXPECT_EQ(f32.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(f32.to(at::kBFloat16), file.view(e.name)));
}

TEST(SafetensorsTest, ViewIsZeroCopyAndKeepsTheMappingAlive) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  at::Tensor a = at::arange(12, at::kFloat).reshape({3, 4});
  save_safetensors(path, {{"a", a}});
  at::Tensor view;
  const uint8_t* base = nullptr;
  {
    SafetensorsFile file = SafetensorsFile::open(path);
    view = file.view("a");
    base = file.mapping()->data();
    EXPECT_EQ(static_cast<const uint8_t*>(view.data_ptr()), base + file.header().data_offset);
  }
  // The file object is gone; the tensor still reads the mapping.
  std::filesystem::remove(path);
  EXPECT_TRUE(at::equal(view, a));
}

TEST(SafetensorsTest, LargeFilesAreMappedOnHugePageBoundariesAndReadBack) {
  // A file of at least 2 MiB starts on a 2 MiB boundary, so that the kernel can map it with huge
  // pages; the slack reserved for the alignment is returned and the bytes read back exactly.
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  at::Tensor big = at::arange(int64_t{3} << 20, at::kInt).reshape({-1, 1024});  // 12 MiB
  at::Tensor small = at::arange(10, at::kFloat);
  save_safetensors(path, {{"big", big}, {"small", small}});
  save_safetensors(dir.file("small.safetensors"), {{"small", small}});
  for (int round = 0; round < 3; ++round) {  // map and unmap: nothing overlaps or leaks
    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(file.mapping()->data()) % (uintptr_t{2} << 20), 0u);
    if (ferry_test::kernel_has_huge_pages())
      EXPECT_TRUE(ferry_test::has(ferry_test::vma_flags(file.mapping()->data()), " hg"))
          << "the mapping asks for huge pages: " << ferry_test::vma_flags(file.mapping()->data());
    EXPECT_TRUE(at::equal(file.view("big"), big));
    EXPECT_TRUE(at::equal(file.view("small"), small));
    SafetensorsFile tiny = SafetensorsFile::open(dir.file("small.safetensors"));
    EXPECT_TRUE(at::equal(tiny.view("small"), small));
  }
}

TEST(SafetensorsTest, WriterRoundTripsEveryDtypeAndScalarsAndEmptyTensors) {
  TempDir dir;
  const std::string path = dir.file("all.safetensors");
  NamedTensors tensors = {
      {"f64", at::randn({2, 3}, at::kDouble)},
      {"f32", at::randn({5}, at::kFloat)},
      {"f16", at::randn({3, 1}, at::kFloat).to(at::kHalf)},
      {"bf16", at::randn({7}, at::kFloat).to(at::kBFloat16)},
      {"i64", at::arange(-3, 3, at::kLong)},
      {"i32", at::arange(4, at::kInt)},
      {"i16", at::arange(5, at::kShort)},
      {"i8", at::arange(-2, 2, at::kChar)},
      {"u8", at::arange(250, 256, at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"scalar", at::scalar_tensor(3.5, at::kFloat)},
      {"empty", at::empty({0, 4}, at::kFloat)},
      {"noncontig", at::arange(6, at::kFloat).reshape({2, 3}).t()},
  };
#if defined(FERRY_HAS_FLOAT8)
  tensors.push_back({"f8e4m3", at::randn({4}).to(at::kFloat8_e4m3fn)});
  tensors.push_back({"f8e5m2", at::randn({4}).to(at::kFloat8_e5m2)});
#endif
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "x"}});

  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
  const std::string header_text = bytes.substr(8, n);
  EXPECT_EQ(header_text.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"}", 0), 0u) << header_text;
  // The Hugging Face order: larger elements first, then by name; contiguous offsets.
  const nlohmann::json h = nlohmann::json::parse(header_text);
  EXPECT_EQ(h["f64"]["data_offsets"], nlohmann::json::array({0, 48}));
  EXPECT_EQ(h["i64"]["data_offsets"], nlohmann::json::array({48, 96}));
  EXPECT_EQ(h["scalar"]["shape"], nlohmann::json::array());
  size_t data_bytes = 0;
  for (const auto& item : tensors) data_bytes += item.second.numel() * item.second.element_size();
  EXPECT_EQ(data_bytes, 48u + 48 + 64 + 30 + 13
#if defined(FERRY_HAS_FLOAT8)
                            + 8
#endif
  );
  EXPECT_EQ(bytes.size(), 8 + n + data_bytes) << "no gaps, no trailing bytes";

  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata().size(), 2u);
  for (const auto& [name, t] : tensors) {
    at::Tensor back = file.load(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(ferry::test::same_bits(back, t)) << name;
  }
  EXPECT_EQ(file.view("scalar").dim(), 0);
}

TEST(SafetensorsTest, WriterRefusesDuplicateNamesMetaTensorsAndReservedName) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  EXPECT_FERRY_ERROR(save_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({1})}}), "'a' is given twice");
  EXPECT_FERRY_ERROR(save_safetensors(path, {{"__metadata__", at::ones({1})}}), "cannot be a tensor name");
  EXPECT_FERRY_ERROR(save_safetensors(path, {{"m", at::empty({2}, at::TensorOptions().device(at::kMeta))}}),
                     "'m' is on the meta device");
  EXPECT_FERRY_ERROR(save_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}}),
                     "cannot be stored in a safetensors file");
  EXPECT_FALSE(std::filesystem::exists(path)) << "a failed save leaves no file";
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.str()), {}), 0) << "no temporary file left";
}

TEST(SafetensorsTest, WriterReplacesAnExistingFileAtomically) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  save_safetensors(path, {{"a", at::ones({2})}});
  SafetensorsFile old = SafetensorsFile::open(path);
  at::Tensor old_view = old.view("a");
  save_safetensors(path, {{"b", at::zeros({3})}});
  EXPECT_TRUE(at::equal(old_view, at::ones({2}))) << "a mapping of the old file stays valid";
  EXPECT_TRUE(SafetensorsFile::open(path).contains("b"));
  EXPECT_FALSE(SafetensorsFile::open(path).contains("a"));
}

TEST(SafetensorsTest, ReadHeaderMatchesOpen) {
  const auto files = shard_files(data_dir() + "/tiny_llama");
  SafetensorsHeader h = read_safetensors_header(files[0]);
  SafetensorsFile f = SafetensorsFile::open(files[0]);
  ASSERT_EQ(h.tensors.size(), f.tensors().size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    EXPECT_EQ(h.tensors[i].name, f.tensors()[i].name);
    EXPECT_EQ(h.tensors[i].begin, f.tensors()[i].begin);
  }
  EXPECT_NE(h.find(h.tensors[0].name), nullptr);
  EXPECT_EQ(h.find("nope"), nullptr);
}

TEST(SafetensorsTest, MissingTensorNamesTheFile) {
  const auto files = shard_files(data_dir() + "/tiny_llama");
  SafetensorsFile f = SafetensorsFile::open(files[0]);
  EXPECT_FERRY_ERROR(f.view("nope"), "no tensor named 'nope'", files[0]);
}

// ---- hostile files ----------------------------------------------------------------------------

class SafetensorsHostileTest : public ::testing::Test {
 protected:
  // Writes `image` and expects both open() and read_safetensors_header() to fail with `needles`.
  void expect_rejected(const std::string& image, const std::vector<std::string>& needles) {
    const std::string path = dir_.file("bad.safetensors");
    write_bytes(path, image);
    for (int how = 0; how < 2; ++how) {
      try {
        if (how == 0) SafetensorsFile::open(path);
        else read_safetensors_header(path);
        ADD_FAILURE() << "accepted a hostile file (" << (how ? "read_safetensors_header" : "open") << ")";
      } catch (const ferry::Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(path), std::string::npos) << what;
        for (const auto& needle : needles) EXPECT_NE(what.find(needle), std::string::npos) << what << "\nmissing: " << needle;
      }
    }
  }
  TempDir dir_;
};

TEST_F(SafetensorsHostileTest, TruncatedBeforeTheLength) {
  expect_rejected(std::string("\x10\x00\x00", 3), {"only 3 bytes long", "8-byte header length"});
  expect_rejected("", {"only 0 bytes long"});
}

TEST_F(SafetensorsHostileTest, HeaderLengthPastTheEnd) {
  std::string image = safetensors_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  image.resize(30);  // truncated inside the header
  expect_rejected(image, {"the JSON header is 54 bytes long but the file is only 30 bytes",
                          "incomplete download or corrupt file"});
}

TEST_F(SafetensorsHostileTest, AbsurdHeaderLength) {
  std::string image(8, '\xff');
  image += "{}";
  expect_rejected(image, {"header length field says 18446744073709551615 bytes", "100000000-byte limit"});
}

TEST_F(SafetensorsHostileTest, TruncatedData) {
  // The header promises 16 bytes of data; the file has 8.
  expect_rejected(safetensors_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                  {"tensor 'a'", "data_offsets [0, 16] lie outside the data section, which is only 8 bytes"});
}

TEST_F(SafetensorsHostileTest, OverlappingOffsets) {
  expect_rejected(safetensors_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                    R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                                    24),
                  {"tensors 'a' [0, 16] and 'b' [8, 24] overlap"});
}

TEST_F(SafetensorsHostileTest, OffsetsEndBeforeTheyBegin) {
  expect_rejected(safetensors_image(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", 16),
                  {"tensor 'a'", "[8, 4] end before they begin"});
}

TEST_F(SafetensorsHostileTest, ShapeDoesNotMatchBytes) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
                  {"tensor 'w'", "shape [2, 3] of F32 needs 6 x 4 bytes", "data_offsets [0, 20] hold 20 bytes"});
}

TEST_F(SafetensorsHostileTest, ShapeOverflow) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
                  {"tensor 'w'", "more elements than fit in 64 bits"});
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0),
                  {"tensor 'w'", "non-negative integers, got -1"});
}

TEST_F(SafetensorsHostileTest, UnknownDtype) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4),
                  {"tensor 'w'", "unknown safetensors dtype 'F33'", "known: F64, F32"});
  expect_rejected(safetensors_image(R"({"w":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}})", 4),
                  {"tensor 'w'", "'U32' is a safetensors dtype that this LibTorch cannot represent"});
}

TEST_F(SafetensorsHostileTest, InvalidJson) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4),
                  {"the JSON header is not valid JSON", "incomplete download or corrupt file"});
  expect_rejected(safetensors_image("[1,2,3]", 0), {"does not start with '{'"});
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} xx)", 4),
                  {"not valid JSON"});
}

TEST_F(SafetensorsHostileTest, TensorNamedTwice) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                    R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                    2),
                  {"names 'w' twice", "a tensor listed twice"});
}

TEST_F(SafetensorsHostileTest, MalformedEntries) {
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[1]}})", 4), {"tensor 'w'", "needs 'dtype', 'shape'"});
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                  {"'data_offsets' must be two non-negative integers"});
  expect_rejected(safetensors_image(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                  {"non-negative integers, got 1.5"});
  expect_rejected(safetensors_image(R"({"w":7})", 0), {"tensor 'w': expected an object, got number"});
  expect_rejected(safetensors_image(R"({"__metadata__":{"a":1}})", 0),
                  {"__metadata__ must be a map of strings to strings, but 'a' is a number"});
  expect_rejected(safetensors_image(R"({"__metadata__":[]})", 0), {"__metadata__ must be a map"});
}

TEST_F(SafetensorsHostileTest, BoolBytesOtherThanZeroOrOne) {
  const std::string path = dir_.file("bool.safetensors");
  write_bytes(path, safetensors_image(R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", 0) + std::string("\x01\x00\x07", 3));
  SafetensorsFile f = SafetensorsFile::open(path);  // the header is fine
  EXPECT_FERRY_ERROR(f.view("b"), path, "tensor 'b' is BOOL but byte 2 holds 7");
  EXPECT_FERRY_ERROR(f.load("b"), "tensor 'b' is BOOL but byte 2 holds 7");
}

TEST_F(SafetensorsHostileTest, DeepNestingIsRefused) {
  expect_rejected(safetensors_image("{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}", 0),
                  {"nests deeper than 16 levels"});
}

TEST(SafetensorsParseTest, ParsesFromMemoryWithoutReadingPastTheBuffer) {
  const std::string image = safetensors_image(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 4);
  // Exactly the header bytes, as a fuzzer would pass them.
  std::vector<uint8_t> copy(image.begin(), image.end());
  SafetensorsHeader h = parse_safetensors_header(copy.data(), copy.size(), copy.size(), "mem");
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].dtype, at::kBFloat16);
  EXPECT_EQ(h.tensors[0].numel(), 2);
  EXPECT_FERRY_ERROR(parse_safetensors_header(copy.data(), 5, 5, "mem"), "mem: the file is only 5 bytes long");
}

// Issue 13 (files that change under a run): a resident load copies weights out of the mapping; a
// shard truncated between opening and copying ends in one line naming the file and status 1 (the
// SIGBUS handler ferry's programs install), never "Bus error". In a child process, since it exits.
TEST(SafetensorsTruncatedTest, CopyingFromAShardTruncatedAfterOpeningNamesTheFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"a", at::ones({64 * 1024})}});  // 256 KiB of data after the header
  int err[2];
  ASSERT_EQ(::pipe(err), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(err[1], STDERR_FILENO);
    ferry::io::install_mapped_file_fault_handler();
    try {
      SafetensorsFile file = SafetensorsFile::open(path);
      std::filesystem::resize_file(path, file.header().data_offset);  // the data is gone
      at::Tensor t = file.load("a");
      std::fprintf(stderr, "loaded %f\n", t.sum().item<double>());
      ::_exit(0);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry: error: %s\n", e.what());
      ::_exit(1);
    }
  }
  ::close(err[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(err[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(err[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << ": " << text;
  EXPECT_EQ(WEXITSTATUS(status), 1) << text;
  EXPECT_NE(text.find(path), std::string::npos) << text;
  EXPECT_NE(text.find("changed while it was being read"), std::string::npos) << text;
}
