// Accelerate's offload folder: the format byte for byte, both directions, and damaged folders.

#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/offload.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

using namespace ferry::io;
using ferry::test::read_bytes;
using ferry::test::same_bits;
using ferry::test::TempDir;
using ferry::test::write_bytes;

namespace {
std::string raw(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}
}  // namespace

// accelerate tests/test_offload.py::test_offload_weight, for float16, float32 and bfloat16.
TEST(OffloadTest, OffloadWeightWritesAccelerateFormat) {
  for (auto [dtype, tag] : {std::pair{at::kHalf, "float16"}, std::pair{at::kFloat, "float32"},
                            std::pair{at::kBFloat16, "bfloat16"}}) {
    TempDir dir;
    at::Tensor w = at::randn({2, 3}).to(dtype);
    OffloadIndex index;
    offload_weight(w, "weight", dir.str(), &index);
    const std::string dat = dir.file("weight.dat");
    ASSERT_TRUE(std::filesystem::exists(dat));
    ASSERT_EQ(index.size(), 1u);
    EXPECT_EQ(index.at("weight").dtype, tag);
    EXPECT_EQ(index.at("weight").shape, (std::vector<int64_t>{2, 3}));
    // Raw row-major element bytes; bf16 is its int16 bit pattern, which is the same bytes.
    const std::string expected = dtype == at::kBFloat16 ? raw(w.view(at::kShort)) : raw(w);
    EXPECT_EQ(read_bytes(dat), expected);
    at::Tensor back = load_offloaded_weight(dat, index.at("weight"));
    EXPECT_TRUE(same_bits(back, w)) << tag;
  }
}

TEST(OffloadTest, IndexJsonIsWhatPythonJsonDumpIndent2Writes) {
  TempDir dir;
  OffloadIndex index;
  offload_weight(at::ones({2, 3}), "linear1.weight", dir.str(), &index);
  offload_weight(at::scalar_tensor(7, at::kLong), "step", dir.str(), &index);
  save_offload_index(index, dir.str());
  // json.dump({"linear1.weight": {"dtype": "float32", "shape": [2, 3]}, "step": {...}}, f, indent=2)
  const std::string expected =
      "{\n  \"linear1.weight\": {\n    \"dtype\": \"float32\",\n    \"shape\": [\n      2,\n      3\n    ]\n  },\n"
      "  \"step\": {\n    \"dtype\": \"int64\",\n    \"shape\": []\n  }\n}";
  EXPECT_EQ(read_bytes(dir.file("index.json")), expected);
}

TEST(OffloadTest, NonAsciiNamesAreEscapedAsPythonDoes) {
  OffloadIndex index;
  OffloadEntry e;
  e.dtype = "float32";
  e.shape = {1};
  index.set("caf\xc3\xa9.\xf0\x9f\x98\x80", e);  // "café.😀": Python writes \u00e9 and a surrogate pair
  EXPECT_EQ(index.to_json(), "{\n  \"caf\\u00e9.\\ud83d\\ude00\": {\n    \"dtype\": \"float32\",\n    \"shape\": [\n      1\n    ]\n  }\n}");
  EXPECT_EQ(OffloadIndex::from_json(index.to_json(), "again").names(), index.names());
}

TEST(OffloadTest, ScalarsAreStoredAsOneElementAndComeBackZeroDim) {
  TempDir dir;
  OffloadIndex index;
  offload_weight(at::scalar_tensor(2.5, at::kFloat), "s", dir.str(), &index);
  EXPECT_EQ(read_bytes(dir.file("s.dat")).size(), 4u);
  EXPECT_TRUE(index.at("s").shape.empty());
  at::Tensor back = load_offloaded_weight(dir.file("s.dat"), index.at("s"));
  EXPECT_EQ(back.dim(), 0);
  EXPECT_EQ(back.item<float>(), 2.5f);
  EXPECT_EQ(map_offloaded_weight(dir.file("s.dat"), index.at("s")).dim(), 0);
}

// The other direction: a folder written exactly as the spec says Accelerate writes it, by hand.
TEST(OffloadTest, ReadsAFolderWrittenByAccelerate) {
  TempDir dir;
  at::Tensor w = at::arange(6, at::kFloat).reshape({2, 3}) / 7;
  at::Tensor b = at::randn({4}).to(at::kBFloat16);
  at::Tensor flags = at::tensor({1, 0, 1}, at::kByte).to(at::kBool);
  at::Tensor steps = at::scalar_tensor(42, at::kLong);
  write_bytes(dir.file("fc.weight.dat"), raw(w));
  write_bytes(dir.file("fc.bias.dat"), raw(b.view(at::kShort)));  // np int16 view of the bf16 bits
  write_bytes(dir.file("mask.dat"), raw(flags));
  write_bytes(dir.file("num_batches_tracked.dat"), raw(steps.reshape({1})));
  write_bytes(dir.file("index.json"),
              "{\n  \"fc.weight\": {\n    \"dtype\": \"float32\",\n    \"shape\": [\n      2,\n      3\n    ]\n  },\n"
              "  \"fc.bias\": {\n    \"dtype\": \"bfloat16\",\n    \"shape\": [\n      4\n    ]\n  },\n"
              "  \"mask\": {\n    \"dtype\": \"bool\",\n    \"shape\": [\n      3\n    ]\n  },\n"
              "  \"num_batches_tracked\": {\n    \"dtype\": \"int64\",\n    \"shape\": []\n  }\n}");
  OffloadIndex index = read_offload_index(dir.str());
  EXPECT_EQ(index.names(), (std::vector<std::string>{"fc.weight", "fc.bias", "mask", "num_batches_tracked"}));
  EXPECT_TRUE(same_bits(load_offloaded_weight(dir.file("fc.weight.dat"), index.at("fc.weight")), w));
  EXPECT_TRUE(same_bits(load_offloaded_weight(dir.file("fc.bias.dat"), index.at("fc.bias")), b));
  EXPECT_TRUE(same_bits(load_offloaded_weight(dir.file("mask.dat"), index.at("mask")), flags));
  at::Tensor s = load_offloaded_weight(dir.file("num_batches_tracked.dat"), index.at("num_batches_tracked"));
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<int64_t>(), 42);
  // Re-saving the same index writes the same bytes back (round trip of the text form).
  const std::string before = read_bytes(dir.file("index.json"));
  save_offload_index(index, dir.str());
  EXPECT_EQ(read_bytes(dir.file("index.json")), before);
}

TEST(OffloadTest, SaveOffloadIndexMergesLikeDictUpdate) {
  TempDir dir;
  OffloadIndex first;
  offload_weight(at::ones({2}), "a", dir.str(), &first);
  offload_weight(at::ones({3}), "b", dir.str(), &first);
  save_offload_index(first, dir.str());
  OffloadIndex second;
  offload_weight(at::ones({4}, at::kHalf), "a", dir.str(), &second);  // replaces a, keeps its position
  offload_weight(at::ones({5}), "c", dir.str(), &second);
  save_offload_index(second, dir.str());
  OffloadIndex merged = read_offload_index(dir.str());
  EXPECT_EQ(merged.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(merged.at("a").dtype, "float16");
  EXPECT_EQ(merged.at("a").shape, std::vector<int64_t>{4});
  // An empty index changes nothing (and creates nothing).
  TempDir empty;
  save_offload_index(OffloadIndex{}, empty.str());
  EXPECT_FALSE(has_offload_index(empty.str()));
}

// accelerate tests/test_offload.py::test_offload_state_dict
TEST(OffloadTest, OffloadStateDictWritesEveryTensorAndTheIndex) {
  TempDir dir;
  const std::string folder = dir.file("nested/offload");
  NamedTensors sd = {{"linear1.weight", at::randn({4, 3})},
                     {"linear1.bias", at::randn({4})},
                     {"linear2.weight", at::randn({2, 4})},
                     {"linear2.bias", at::randn({2})}};
  OffloadIndex index = offload_state_dict(folder, sd);
  EXPECT_TRUE(has_offload_index(folder));
  for (const auto& [name, t] : sd) {
    EXPECT_TRUE(std::filesystem::exists(folder + "/" + name + ".dat")) << name;
    EXPECT_TRUE(same_bits(load_offloaded_weight(folder + "/" + name + ".dat", index.at(name)), t));
  }
  for (const auto& e : std::filesystem::directory_iterator(folder))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "temporary file left: " << e.path();
}

TEST(OffloadTest, SafetensorsFormEntriesAreReadAndWritten) {
  const std::string text = R"({"w": {"safetensors_file": "/x/model.safetensors", "weight_name": "model.w", "dtype": "float16"}})";
  OffloadIndex index = OffloadIndex::from_json(text, "mem");
  ASSERT_TRUE(index.at("w").is_safetensors());
  EXPECT_EQ(index.at("w").weight_name, "model.w");
  EXPECT_EQ(index.at("w").dtype, "float16");
  EXPECT_EQ(OffloadIndex::from_json(index.to_json(), "again").at("w"), index.at("w"));
}

// Regression (fuzz/offload_index_fuzzer): an entry without weight_name was written back with one.
TEST(OffloadTest, SafetensorsEntryWithoutWeightNameRoundTripsUnchanged) {
  const std::string text = R"({"t": {"safetensors_file": "a.safetensors", "dtype": "float16"}})";
  OffloadIndex index = OffloadIndex::from_json(text, "mem");
  EXPECT_TRUE(index.at("t").weight_name.empty());
  OffloadIndex again = OffloadIndex::from_json(index.to_json(), "again");
  EXPECT_EQ(again.at("t"), index.at("t"));
  EXPECT_EQ(index.to_json().find("weight_name"), std::string::npos);
}

TEST(OffloadTest, DtypeTags) {
  EXPECT_EQ(offload_dtype_tag(at::kBFloat16), "bfloat16");
  EXPECT_EQ(offload_dtype_tag(at::kBool), "bool");
  EXPECT_EQ(parse_offload_dtype_tag("uint8"), at::kByte);
  EXPECT_FERRY_ERROR(parse_offload_dtype_tag("float128"), "unknown offload dtype tag 'float128'");
#if defined(FERRY_HAS_FLOAT8)
  TempDir dir;
  EXPECT_FERRY_ERROR(offload_weight(at::ones({2}).to(at::kFloat8_e4m3fn), "f8", dir.str()),
                     "cannot be stored in an Accelerate offload folder");
#endif
}

// ---- damaged folders --------------------------------------------------------------------------

TEST(OffloadHostileTest, DatFileOfTheWrongSize) {
  TempDir dir;
  OffloadIndex index;
  offload_weight(at::ones({2, 3}), "w", dir.str(), &index);
  write_bytes(dir.file("w.dat"), std::string(20, '\0'));  // interrupted: 20 of 24 bytes
  EXPECT_FERRY_ERROR(load_offloaded_weight(dir.file("w.dat"), index.at("w")), "[load_offloaded_weight]",
                     dir.file("w.dat"), "the index says float32 [2, 3] (6 x 4 = 24 bytes) but the file has 20 bytes");
  EXPECT_FERRY_ERROR(map_offloaded_weight(dir.file("w.dat"), index.at("w")), "[map_offloaded_weight]",
                     "but the file has 20 bytes");
}

TEST(OffloadHostileTest, BoolDatWithBytesOtherThanZeroOrOne) {
  TempDir dir;
  write_bytes(dir.file("m.dat"), std::string("\x00\x01\x02", 3));
  OffloadEntry e;
  e.dtype = "bool";
  e.shape = {3};
  EXPECT_FERRY_ERROR(load_offloaded_weight(dir.file("m.dat"), e), "the index says bool but byte 2 holds 2");
  EXPECT_FERRY_ERROR(map_offloaded_weight(dir.file("m.dat"), e), "[map_offloaded_weight]", "byte 2 holds 2");
}

TEST(OffloadHostileTest, MissingDatFile) {
  TempDir dir;
  OffloadEntry e;
  e.dtype = "float32";
  e.shape = {2};
  EXPECT_FERRY_ERROR(load_offloaded_weight(dir.file("gone.dat"), e), dir.file("gone.dat"), "does not exist");
}

TEST(OffloadHostileTest, DamagedIndex) {
  EXPECT_FERRY_ERROR(OffloadIndex::from_json("{\"a\": {\"dtype\": \"float32\", \"shape\": [1]}", "idx"),
                     "[read_offload_index] idx is not valid JSON");
  EXPECT_FERRY_ERROR(OffloadIndex::from_json(R"({"a": {"dtype": "float32", "shape": [1]}, "a": {"dtype": "int8", "shape": [1]}})", "idx"),
                     "idx names 'a' twice");
  EXPECT_FERRY_ERROR(OffloadIndex::from_json(R"({"a": {"dtype": "float33", "shape": [1]}})", "idx"),
                     "entry 'a'", "unknown offload dtype tag 'float33'");
  EXPECT_FERRY_ERROR(OffloadIndex::from_json(R"({"a": {"dtype": "float32", "shape": [-2]}})", "idx"),
                     "entry 'a'", "non-negative integers, got -2");
  EXPECT_FERRY_ERROR(OffloadIndex::from_json(R"({"a": {"shape": [1]}})", "idx"), "entry 'a' needs a string \"dtype\"");
  EXPECT_FERRY_ERROR(OffloadIndex::from_json(R"([1])", "idx"), "must be a JSON object");
  TempDir dir;
  EXPECT_FERRY_ERROR(read_offload_index(dir.str()), "cannot read the offload index", "index.json: does not exist");
}

TEST(OffloadHostileTest, NamesThatWouldEscapeTheFolder) {
  TempDir dir;
  EXPECT_FERRY_ERROR(offload_weight(at::ones({1}), "../evil", dir.str()), "cannot be used as a file name");
  EXPECT_FERRY_ERROR(offload_weight(at::ones({1}), "", dir.str()), "cannot be used as a file name");
  EXPECT_FERRY_ERROR(offload_weight(at::empty({1}, at::TensorOptions().device(at::kMeta)), "m", dir.str()),
                     "'m' is on the meta device");
}

// Issue 13: an update that fails part-way leaves the folder exactly as it was; one that succeeds
// merges like save_offload_index and leaves nothing beside the folder.
TEST(OffloadTest, UpdateOffloadFolderIsAllOrNothing) {
  TempDir dir;
  const std::string folder = dir.file("off");
  offload_state_dict(folder, {{"a", at::ones({4})}, {"b", at::full({2}, 7.0)}});
  const std::string a_before = read_bytes(folder + "/a.dat"), index_before = read_bytes(folder + "/index.json");
  auto listing = [&](const std::string& path) {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  const auto folder_files = listing(folder), beside = listing(dir.str());
  EXPECT_THROW(update_offload_folder(folder,
                                     [](const std::string& staging, OffloadIndex& index) {
                                       offload_weight(at::zeros({4}), "a", staging, &index);  // replaces a
                                       offload_weight(at::zeros({3}), "c", staging, &index);
                                       throw ferry::Error("test", "disk full");
                                     }),
               ferry::Error);
  EXPECT_EQ(read_bytes(folder + "/a.dat"), a_before);
  EXPECT_EQ(read_bytes(folder + "/index.json"), index_before);
  EXPECT_EQ(listing(folder), folder_files);
  EXPECT_EQ(listing(dir.str()), beside);

  const OffloadIndex merged = update_offload_folder(folder, [](const std::string& staging, OffloadIndex& index) {
    offload_weight(at::zeros({4}), "a", staging, &index);
    offload_weight(at::zeros({3}), "c", staging, &index);
  });
  EXPECT_EQ(merged.names(), (std::vector<std::string>{"a", "b", "c"}));  // b kept, a replaced in place
  EXPECT_TRUE(at::equal(load_offloaded_weight(folder + "/a.dat", merged.at("a")), at::zeros({4})));
  EXPECT_TRUE(at::equal(load_offloaded_weight(folder + "/b.dat", merged.at("b")), at::full({2}, 7.0)));
  EXPECT_EQ(listing(dir.str()), beside);
}
