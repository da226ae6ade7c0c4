// torch.save'd checkpoints (io/torch_checkpoint.h) and `ferry convert`: fixtures written by
// scripts/make_bin_fixtures.py with PyTorch 2.x, hand-made hostile pickles and zips.

#include "ferry/core/log.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/io/torch_checkpoint.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/layers.h"
#include "cli_runner.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

using namespace ferry::io;
using ferry::test::data_dir;
using ferry::test::read_bytes;
using ferry::test::same_bits;
using ferry::test::TempDir;
using ferry::test::write_bytes;
using ferry_test::error_of;

namespace {

std::string fixture(const std::string& rel) { return data_dir() + "/" + rel; }

std::map<std::string, at::Tensor> as_map(const NamedTensors& tensors) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : tensors) m.emplace(name, t);
  return m;
}

// ---- a hand-made pickle, as Python's protocol-2 pickler writes it
std::string u32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string str(const std::string& s) { return "X" + u32(static_cast<uint32_t>(s.size())) + s; }
std::string global(const std::string& module, const std::string& name) { return "c" + module + "\n" + name + "\n"; }
std::string integer(int32_t v) { return "J" + std::string(reinterpret_cast<const char*>(&v), 4); }
std::string ints(std::initializer_list<int32_t> values) {
  std::string out = "(";
  for (int32_t v : values) out += integer(v);
  return out + "t";
}
// _rebuild_tensor_v2(storage(key, float32 x numel), offset, sizes, strides, False, OrderedDict())
std::string tensor(const std::string& key, int32_t numel, std::initializer_list<int32_t> sizes,
                   std::initializer_list<int32_t> strides, int32_t offset = 0) {
  return global("torch._utils", "_rebuild_tensor_v2") + "((" + str("storage") + global("torch", "FloatStorage") + str(key) +
         str("cpu") + integer(numel) + "tQ" + integer(offset) + ints(sizes) + ints(strides) + "\x89" +
         global("collections", "OrderedDict") + ")Rt" + "R";
}
std::string state_dict(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string out = "\x80\x02}(";
  for (const auto& [k, v] : items) out += str(k) + v;
  return out + "u.";
}

// A zip as torch.save writes it (LibTorch's own writer), with `records` under the archive folder.
std::string zip_image(const std::map<std::string, std::string>& records) {
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter w([&](const void* data, size_t n) {
      out.append(static_cast<const char*>(data), n);
      return n;
    });
    for (const auto& [name, bytes] : records) w.writeRecord(name, bytes.data(), bytes.size());
    w.writeEndOfFile();
  }
  return out;
}

std::string floats(std::initializer_list<float> values) {
  std::string out;
  for (float f : values) out.append(reinterpret_cast<const char*>(&f), sizeof f);
  return out;
}

std::vector<TorchTensorInfo> parse(const std::string& pickle) {
  return parse_torch_pickle(reinterpret_cast<const uint8_t*>(pickle.data()), pickle.size(), "test.pkl");
}

}  // namespace

TEST(TorchCheckpoint, BinStateDictEqualsSafetensorsBitForBit) {
  const NamedTensors bin = read_torch_state_dict(fixture("tiny_llama_bin/pytorch_model.bin"));
  const auto by_name = as_map(bin);
  const SafetensorsFile st = SafetensorsFile::open(fixture("tiny_llama_bin_safetensors/model.safetensors"));
  ASSERT_EQ(bin.size(), st.tensors().size() + 1);  // + lm_head.weight, tied: left out of the safetensors
  for (const TensorEntry& e : st.tensors()) {
    ASSERT_TRUE(by_name.count(e.name)) << e.name;
    const at::Tensor& t = by_name.at(e.name);
    EXPECT_TRUE(t.is_contiguous() && t.device().is_cpu()) << e.name;
    EXPECT_TRUE(same_bits(t, st.view(e.name))) << e.name;
  }
  // torch.save(model.state_dict()) kept both tied names over one storage: they come back sharing memory.
  const at::Tensor& lm_head = by_name.at("lm_head.weight");
  const at::Tensor& embed = by_name.at("model.embed_tokens.weight");
  EXPECT_TRUE(same_bits(lm_head, embed));
  EXPECT_EQ(lm_head.data_ptr(), embed.data_ptr());
  // The dict's order is kept (state_dict() order: embeddings first, lm_head last).
  EXPECT_EQ(bin.front().first, "model.embed_tokens.weight");
  EXPECT_EQ(bin.back().first, "lm_head.weight");
}

TEST(TorchCheckpoint, ShardedBinReadsLikeTheSingleFileFromFolderOrIndex) {
  const auto single = as_map(read_torch_state_dict(fixture("tiny_llama_bin/pytorch_model.bin")));
  for (const std::string& path :
       {fixture("tiny_llama_bin_sharded"), fixture("tiny_llama_bin_sharded/pytorch_model.bin.index.json")}) {
    const TorchCheckpointFiles files = resolve_torch_checkpoint(path);
    EXPECT_EQ(files.files.size(), 3u) << path;
    EXPECT_NE(files.index_file.find("pytorch_model.bin.index.json"), std::string::npos);
    const auto sharded = as_map(read_torch_checkpoint(path));
    ASSERT_EQ(sharded.size(), single.size()) << path;
    for (const auto& [name, t] : single) EXPECT_TRUE(same_bits(sharded.at(name), t)) << name;
  }
  EXPECT_TRUE(is_torch_checkpoint(fixture("tiny_llama_bin")));
  EXPECT_TRUE(is_torch_checkpoint(fixture("tiny_llama_bin_sharded")));
  EXPECT_TRUE(is_torch_checkpoint(fixture("tiny_llama_bin_sharded/pytorch_model.bin.index.json")));
  EXPECT_FALSE(is_torch_checkpoint(fixture("tiny_llama_bin_safetensors")));
  EXPECT_FALSE(is_torch_checkpoint(fixture("tiny_llama/model.safetensors.index.json")));
}

TEST(TorchCheckpoint, ListingFromThePickleAloneMatchesTheLoad) {
  const std::string path = fixture("tiny_llama_bin_sharded");
  const TorchCheckpointListing listing = list_torch_checkpoint(path);
  const NamedTensors loaded = read_torch_checkpoint(path);
  ASSERT_EQ(listing.tensors.size(), loaded.size());
  for (size_t i = 0; i < loaded.size(); ++i) {
    EXPECT_EQ(listing.tensors[i].name, loaded[i].first);
    EXPECT_EQ(listing.tensors[i].dtype, loaded[i].second.scalar_type());
    EXPECT_EQ(listing.tensors[i].shape, loaded[i].second.sizes().vec());
    EXPECT_LT(listing.file_of[i], listing.files.files.size());
  }
}

TEST(TorchCheckpoint, ViewsIntoOneStorageGiveTheirSlices) {
  const auto t = as_map(read_torch_state_dict(fixture("torch_pickles/views.pt")));
  const at::Tensor base = at::arange(12, at::kFloat);
  const at::Tensor grid = base.view({3, 4});
  EXPECT_TRUE(at::equal(t.at("base"), base));
  EXPECT_TRUE(at::equal(t.at("row"), grid[1]));
  EXPECT_TRUE(at::equal(t.at("column"), grid.select(1, 2)));
  EXPECT_TRUE(at::equal(t.at("transposed"), grid.t()));
  for (const char* name : {"row", "column", "transposed"}) EXPECT_TRUE(t.at(name).is_contiguous()) << name;
  // A contiguous view shares the storage (no copy); a strided one is copied out.
  EXPECT_EQ(t.at("row").data_ptr<float>(), t.at("base").data_ptr<float>() + 4);
  EXPECT_NE(t.at("column").data_ptr<float>(), t.at("base").data_ptr<float>() + 2);
  EXPECT_TRUE(at::equal(t.at("parameter"), at::tensor({1.5f, -2.0f})));
  EXPECT_EQ(t.at("bf16").scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(t.at("bf16").to(at::kFloat), at::tensor({1.0f, -0.5f, 3.25f})));
  EXPECT_EQ(t.at("f16").scalar_type(), at::kHalf);
  EXPECT_EQ(t.at("f16").sizes().vec(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(t.at("i64")[0].item<int64_t>(), -(int64_t{1} << 40));
  EXPECT_TRUE(at::equal(t.at("flags"), at::tensor({1, 0, 1}).to(at::kBool)));
  EXPECT_EQ(t.at("scalar").dim(), 0);
  EXPECT_EQ(t.at("scalar").item<float>(), 3.5f);
  EXPECT_EQ(t.at("empty").sizes().vec(), (std::vector<int64_t>{0, 4}));
}

TEST(TorchCheckpoint, HandMadeZipReadsFromMemoryAndFile) {
  const std::string pickle = state_dict({{"w", tensor("0", 4, {2, 2}, {2, 1})}, {"wt", tensor("0", 4, {2, 2}, {1, 2})}});
  const std::string zip = zip_image({{"data.pkl", pickle}, {"data/0", floats({1, 2, 3, 4})}});
  const auto t = as_map(read_torch_state_dict(reinterpret_cast<const uint8_t*>(zip.data()), zip.size(), "mem.bin"));
  EXPECT_TRUE(at::equal(t.at("w"), at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2})));
  EXPECT_TRUE(at::equal(t.at("wt"), at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2}).t()));
  TempDir dir("torch_ckpt");
  write_bytes(dir / "hand.bin", zip);
  EXPECT_TRUE(at::equal(as_map(read_torch_state_dict(dir / "hand.bin")).at("w"), t.at("w")));
}

// ---- hostile input ---------------------------------------------------------------------------------

TEST(TorchCheckpointHostile, ForbiddenGlobalsAreRefusedUnrun) {
  TempDir dir("torch_ckpt");
  const std::string marker = dir / "pwned";
  // pickle.loads would run os.system("touch <marker>"); ferry must refuse it at the GLOBAL.
  const std::string os_system = "\x80\x02" + global("os", "system") + str("touch " + marker) + "\x85R.";
  // Protocol 4's STACK_GLOBAL form: builtins.eval("__import__('os').system(...)").
  const std::string eval = "\x80\x04" + std::string("\x8c\x08") + "builtins" + "\x8c\x04" + "eval" + "\x93" +
                           str("__import__('os').system('touch " + marker + "')") + "\x85R.";
  // A legitimate state dict whose tensor is built by a forbidden callable.
  const std::string sneaky = "\x80\x02}(" + str("w") + global("torch", "load") + str("x") + "\x85Ru.";
  for (const auto& [pickle, needle] : std::vector<std::pair<std::string, std::string>>{
           {os_system, "'os.system'"}, {eval, "'builtins.eval'"}, {sneaky, "'torch.load'"}}) {
    EXPECT_FERRY_ERROR(parse(pickle), "test.pkl", needle, "nothing in it was run");
    write_bytes(dir / "evil.bin", zip_image({{"data.pkl", pickle}}));
    EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "evil.bin"), "[read_torch_state_dict]", dir / "evil.bin", needle);
  }
  EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST(TorchCheckpointHostile, RecordSizesThatDisagreeAreRefused) {
  TempDir dir("torch_ckpt");
  const std::string pickle = state_dict({{"w", tensor("0", 4, {4}, {1})}});
  // The storage says 4 floats (16 bytes); the record holds 3 floats, then 5.
  for (const std::string& data : {floats({1, 2, 3}), floats({1, 2, 3, 4, 5})}) {
    write_bytes(dir / "short.bin", zip_image({{"data.pkl", pickle}, {"data/0", data}}));
    EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "short.bin"), dir / "short.bin", "data/0",
                       std::to_string(data.size()) + " bytes", "needs 16");
  }
  // No record at all for the storage.
  write_bytes(dir / "none.bin", zip_image({{"data.pkl", pickle}}));
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "none.bin"), dir / "none.bin", "'data/0'", "lacks");
  // A storage larger than the whole file.
  write_bytes(dir / "huge.bin", zip_image({{"data.pkl", state_dict({{"w", tensor("0", 1 << 30, {4}, {1})}})}}));
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "huge.bin"), dir / "huge.bin", "whole file holds");
}

TEST(TorchCheckpointHostile, ViewsOutsideTheirStorageAreRefused) {
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {5}, {1})}})), "test.pkl", "outside its storage");
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {2, 2}, {2, 1}, 1)}})), "outside its storage");
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {2}, {-1})}})), "negative");
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {2}, {1}, -1)}})), "negative storage offset");
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {2, 2}, {1})}})), "2 sizes but 1 strides");
  // One storage described with two sizes.
  EXPECT_FERRY_ERROR(parse(state_dict({{"a", tensor("0", 4, {4}, {1})}, {"b", tensor("0", 8, {8}, {1})}})),
                     "storage '0' is described twice");
  // Huge sizes and strides: caught without overflow.
  EXPECT_FERRY_ERROR(parse(state_dict({{"w", tensor("0", 4, {2, 2}, {2147483647, 2147483647})}})), "outside its storage");
}

TEST(TorchCheckpointHostile, MalformedPicklesAreRefused) {
  EXPECT_FERRY_ERROR(parse(""), "test.pkl", "without a STOP");
  EXPECT_FERRY_ERROR(parse("\x80\x02R."), "empty stack");
  EXPECT_FERRY_ERROR(parse("\x80\x02t."), "needs a MARK");
  EXPECT_FERRY_ERROR(parse("\x80\x02h\x07."), "memo entry 7");
  EXPECT_FERRY_ERROR(parse("\x80\x02X\xff\xff\xff\x7f"), "runs past the pickle's end");
  EXPECT_FERRY_ERROR(parse("\x80\x02}}."), "2 values");
  EXPECT_FERRY_ERROR(parse("\x80\x02Vabc\n."), "opcode 0x56");  // protocol 0 UNICODE: not torch.save's
  EXPECT_FERRY_ERROR(parse("\x80\x02" + global("torch._utils", "_rebuild_tensor_v2") + ")R."), "6 or 7 arguments");
  EXPECT_FERRY_ERROR(parse("\x80\x02" + global("torch", "QInt8Storage") + "."), "torch.QInt8Storage");
  // A list that holds itself: no leak, no endless walk.
  EXPECT_FERRY_ERROR(parse(std::string("\x80\x02]q\x00h\x00" "a.", 9)), "holds a list");
  // Every prefix of a valid pickle is refused cleanly.
  const std::string good = state_dict({{"w", tensor("0", 4, {2, 2}, {2, 1})}});
  ASSERT_EQ(parse(good).size(), 1u);
  for (size_t n = 0; n < good.size(); ++n) EXPECT_THROW(parse(good.substr(0, n)), ferry::Error) << n;
}

TEST(TorchCheckpointHostile, RootsThatAreNotStateDictsNameTheKey) {
  EXPECT_FERRY_ERROR(read_torch_state_dict(fixture("torch_pickles/not_a_dict.pt")), "not_a_dict.pt", "holds a list");
  EXPECT_FERRY_ERROR(read_torch_state_dict(fixture("torch_pickles/non_tensor.pt")), "non_tensor.pt", "'step' holds an int");
  EXPECT_FERRY_ERROR(parse("\x80\x02}(" + str("model") + "}u."), "'model' holds a dict", "training checkpoint");
}

TEST(TorchCheckpointHostile, TruncatedFilesAreRefusedNamingTheFile) {
  const std::string good = read_bytes(fixture("tiny_llama_bin/pytorch_model.bin"));
  TempDir dir("torch_ckpt");
  const std::string path = dir / "cut.bin";
  for (size_t n : {size_t{0}, size_t{3}, size_t{100}, size_t{3500}, good.size() / 2, good.size() - 30, good.size() - 1}) {
    write_bytes(path, good.substr(0, n));
    const std::string msg = error_of([&] { read_torch_state_dict(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << n << ": " << msg;
    EXPECT_NE(msg.find("[read_torch_state_dict]"), std::string::npos) << msg;
  }
  // A damaged central directory. (A flipped byte inside a tensor's record goes unnoticed, as in
  // safetensors: LibTorch builds miniz without its CRC checks.)
  std::string damaged = good;
  const size_t directory = damaged.find("PK\x01\x02");
  ASSERT_NE(directory, std::string::npos);
  damaged[directory + 1] = 'X';
  write_bytes(path, damaged);
  EXPECT_FERRY_ERROR(read_torch_state_dict(path), path, "truncated or damaged");
}

TEST(TorchCheckpointHostile, ADirectoryPointingPastTheImageIsRefused) {
  // The fuzzer's find: LibTorch 1.13's MemoryReadAdapter read past the image for this zip.
  const std::string input =
      read_bytes(std::string(FERRY_TEST_DATA_DIR) + "/../../fuzz/regressions/torch_checkpoint_fuzzer/memory_adapter_reads_past_the_image");
  ASSERT_GT(input.size(), 1u);
  EXPECT_FERRY_ERROR(read_torch_state_dict(reinterpret_cast<const uint8_t*>(input.data()) + 1, input.size() - 1, "mem.bin"),
                     "mem.bin");
}

TEST(TorchCheckpointHostile, OtherFormatsAreRefusedWithWhatToDo) {
  EXPECT_FERRY_ERROR(read_torch_state_dict(fixture("torch_pickles/legacy.pt")), "legacy.pt", "legacy (pre-1.6)",
                     "torch.save(torch.load(");
  TempDir dir("torch_ckpt");
  std::filesystem::copy_file(fixture("tiny_llama_bin_safetensors/model.safetensors"), dir / "model.bin");
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "model.bin"), "is a safetensors file", ".safetensors extension");
  write_bytes(dir / "junk.bin", "this is not a checkpoint at all");
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "junk.bin"), dir / "junk.bin", "is not a PyTorch checkpoint");
  write_bytes(dir / "script.pt", zip_image({{"constants.pkl", "\x80\x02)."}}));
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir / "script.pt"), "TorchScript");
  EXPECT_FERRY_ERROR(read_torch_state_dict(dir.str()), dir.str());
}

TEST(TorchCheckpointHostile, IndexesThatDisagreeWithTheirShardsAreRefused) {
  TempDir dir("torch_ckpt");
  const std::string a = zip_image({{"data.pkl", state_dict({{"w", tensor("0", 2, {2}, {1})}})}, {"data/0", floats({1, 2})}});
  write_bytes(dir / "a.bin", a);
  write_bytes(dir / "b.bin", a);
  write_bytes(dir / "index.json", R"({"weight_map": {"w": "a.bin", "v": "a.bin"}})");
  EXPECT_FERRY_ERROR(read_torch_checkpoint(dir / "index.json"), "'v'", "no shard holds it");
  write_bytes(dir / "index.json", R"({"weight_map": {"w": "a.bin", "x": "b.bin"}})");
  EXPECT_FERRY_ERROR(read_torch_checkpoint(dir / "index.json"), "'w' is in two shards");
  write_bytes(dir / "index.json", R"({"weight_map": {"w": "../a.bin"}})");
  EXPECT_FERRY_ERROR(read_torch_checkpoint(dir / "index.json"), "outside the index's folder");
}

// ---- loaded directly: io::Checkpoint, load_checkpoint_in_model, load_model, ferry inspect/plan ---------

namespace {

// The .bin forms of the fixture: one file (by folder and by file), sharded (by folder and by index),
// and the same bytes under .pt and .pth names.
std::vector<std::string> bin_forms(const TempDir& tmp) {
  for (const char* name : {"pt", "pth"}) {
    const std::string dir = tmp / name;
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(fixture("tiny_llama_bin/config.json"), dir + "/config.json");
    std::filesystem::copy_file(fixture("tiny_llama_bin/pytorch_model.bin"), dir + "/weights." + name);
  }
  return {fixture("tiny_llama_bin"), fixture("tiny_llama_bin/pytorch_model.bin"), fixture("tiny_llama_bin_sharded"),
          fixture("tiny_llama_bin_sharded/pytorch_model.bin.index.json"), tmp / "pt", tmp / "pth/weights.pth"};
}

at::Tensor logits_ids() { return at::arange(3, 60, 5, at::kLong).view({1, -1}); }

}  // namespace

TEST(TorchCheckpointDirect, OpensAsACheckpointListedFromItsPicklesAlone) {
  TempDir tmp("bin-forms");
  const auto expected = as_map(read_torch_checkpoint(fixture("tiny_llama_bin")));
  for (const std::string& path : bin_forms(tmp)) {
    EXPECT_EQ(checkpoint_format(path), CheckpointFormat::torch) << path;
    const Checkpoint ckpt = Checkpoint::open(path);
    EXPECT_EQ(ckpt.format(), CheckpointFormat::torch) << path;
    ASSERT_EQ(ckpt.tensors().size(), expected.size()) << path;
    const bool sharded = path.find("sharded") != std::string::npos;
    EXPECT_EQ(ckpt.files().size(), sharded ? 3u : 1u) << path;
    EXPECT_EQ(ckpt.index_file().empty(), !sharded) << path;
    size_t listed = 0;
    for (size_t i = 0; i < ckpt.files().size(); ++i) {
      for (const CheckpointTensor& t : ckpt.tensors_in(i)) {
        ++listed;
        EXPECT_EQ(t.file, ckpt.files()[i]);
        const at::Tensor& want = expected.at(t.name);
        EXPECT_EQ(t.shape, want.sizes().vec()) << t.name;
        EXPECT_EQ(t.dtype, want.scalar_type()) << t.name;
        EXPECT_EQ(t.nbytes, want.nbytes()) << t.name;
      }
    }
    EXPECT_EQ(listed, expected.size());
    // Nothing to map: shard() says how a .bin shard is read instead.
    EXPECT_FERRY_ERROR(ckpt.shard(0), "is a PyTorch .bin file, which cannot be mapped", "io::read_torch_state_dict");
    EXPECT_FERRY_ERROR(resolve_checkpoint_files(path), "[resolve_checkpoint_files]", "io::resolve_torch_checkpoint");
  }
  EXPECT_EQ(checkpoint_format(fixture("tiny_llama_bin_safetensors")), CheckpointFormat::safetensors);
  // A damaged .bin is refused at open, by the restricted reader, naming the file.
  TempDir dir;
  write_bytes(dir / "pytorch_model.bin", read_bytes(fixture("tiny_llama_bin/pytorch_model.bin")).substr(0, 3000));
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "[Checkpoint::open]", dir / "pytorch_model.bin");
}

TEST(TorchCheckpointDirect, AFolderWithBothFormatsIsReadAsSafetensorsAndSaysSo) {
  TempDir both;
  for (const char* f : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(fixture(std::string("tiny_llama_bin_safetensors/") + f), both / f);
  std::filesystem::copy_file(fixture("tiny_llama_bin/pytorch_model.bin"), both / "pytorch_model.bin");
  ferry::ScopedLogCapture capture;
  const Checkpoint ckpt = Checkpoint::open(both.str());
  EXPECT_EQ(ckpt.format(), CheckpointFormat::safetensors);
  EXPECT_EQ(ckpt.source(), both / "model.safetensors");
  EXPECT_TRUE(capture.contains("reading the safetensors ones (model.safetensors)"));
  EXPECT_TRUE(capture.contains("Accelerate would read the .bin"));
  // The .bin itself, by its name, is the .bin.
  EXPECT_EQ(Checkpoint::open(both / "pytorch_model.bin").format(), CheckpointFormat::torch);
  // A sharded safetensors index beside a sharded .bin index: the safetensors one, without ambiguity.
  TempDir sharded;
  save_safetensors(sharded / "s1.safetensors", {{"a", at::ones({2})}});
  write_bytes(sharded / "model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors"}})");
  write_bytes(sharded / "pytorch_model.bin.index.json", R"({"weight_map": {"a": "pytorch_model-1.bin"}})");
  EXPECT_EQ(Checkpoint::open(sharded.str()).format(), CheckpointFormat::safetensors);
  EXPECT_TRUE(capture.contains("pytorch_model.bin.index.json"));
  // An index must name shards of one format.
  write_bytes(sharded / "mixed.json", R"({"weight_map": {"a": "s1.safetensors", "b": "pytorch_model-1.bin"}})");
  EXPECT_FERRY_ERROR(Checkpoint::open(sharded / "mixed.json"), "'b' maps to 'pytorch_model-1.bin'",
                     "must name shards of one format");
}

TEST(TorchCheckpointDirect, BinCheckpointsGiveBitIdenticalLogitsResidentAndWithLayersOnDisk) {
  TempDir tmp("bin-logits");
  c10::NoGradGuard no_grad;
  const std::string twin = fixture("tiny_llama_bin_safetensors");
  const at::Tensor reference = ferry::models::load_pretrained(twin)->logits(logits_ids());
  const std::string map = tmp / "map.json";
  ferry::DeviceMap{{"model.embed_tokens", ferry::Placement::cpu()}, {"model.layers.0", ferry::Placement::disk()},
                   {"model.layers.1", ferry::Placement::cpu()}, {"model.norm", ferry::Placement::disk()},
                   {"model.rotary_emb", ferry::Placement::cpu()}, {"lm_head", ferry::Placement::cpu()}}
      .write_json_file(map);
  const std::vector<std::string> forms = bin_forms(tmp);
  for (size_t i = 0; i < forms.size(); ++i) {
    const std::string& path = forms[i];
    // load_pretrained and load_model take the model folder; a file's folder holds its config.json.
    const std::string dir = std::filesystem::is_directory(path) ? path : std::filesystem::path(path).parent_path().string();
    EXPECT_TRUE(at::equal(ferry::models::load_pretrained(dir)->logits(logits_ids()), reference)) << path;
    ferry::models::LoadModelOptions o;
    o.device_map = map;
    o.offload_folder = tmp / ("offload" + std::to_string(i));
    ferry::models::LoadedModel m = ferry::models::load_model(dir, o);
    EXPECT_GT(m.offloaded_bytes_per_forward, 0) << path;
    EXPECT_TRUE(at::equal(m.model->logits(logits_ids()), reference)) << path;
    // The disk-placed weights were written to the offload folder, as Accelerate does for a .bin.
    const OffloadIndex index = read_offload_index(o.offload_folder);
    EXPECT_TRUE(index.contains("model.layers.0.self_attn.q_proj.weight")) << path;
    EXPECT_TRUE(index.contains("model.norm.weight")) << path;
    EXPECT_FALSE(index.contains("model.layers.1.self_attn.q_proj.weight")) << path;
  }
  // Without an offload folder there is nowhere to put them: a .bin cannot be read in place.
  ferry::models::LoadModelOptions in_place;
  in_place.device_map = map;
  EXPECT_FERRY_ERROR(ferry::models::load_model(fixture("tiny_llama_bin"), in_place), "is a PyTorch .bin checkpoint",
                     "cannot be read in place", "give an offload_folder");
}

TEST(TorchCheckpointDirect, LoadCheckpointInModelPlacesEachBinTensorAndOwnsItsMemory) {
  // A model whose two Linears are not tied, from a .bin whose two weights share one storage (as
  // torch.save writes tied weights): each gets its own memory.
  TempDir dir;
  const std::string pickle = state_dict({{"a.weight", tensor("0", 4, {2, 2}, {2, 1})},
                                         {"b.weight", tensor("0", 4, {2, 2}, {2, 1})},
                                         {"b.bias", tensor("1", 2, {2}, {1})}});
  write_bytes(dir / "model.pt",
              zip_image({{"data.pkl", pickle}, {"data/0", floats({1, 2, 3, 4})}, {"data/1", floats({5, 6})}}));
  ferry::Module model("Net");
  model.register_module("a", std::make_shared<ferry::Linear>(2, 2, false));
  model.register_module("b", std::make_shared<ferry::Linear>(2, 2, true));
  ferry::LoadCheckpointOptions o;
  o.dtype = at::kDouble;
  const auto r = ferry::load_checkpoint_in_model(model, dir / "model.pt", o);
  EXPECT_TRUE(r.missing_keys.empty());
  EXPECT_TRUE(r.unexpected_keys.empty());
  const at::Tensor a = model.child("a")->parameter("weight");
  const at::Tensor b = model.child("b")->parameter("weight");
  EXPECT_EQ(a.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(a, at::tensor({1., 2., 3., 4.}, at::kDouble).view({2, 2})));
  EXPECT_TRUE(at::equal(b, a));
  EXPECT_NE(a.data_ptr(), b.data_ptr());
  // Float32 kept, without a cast: still not sharing the storage.
  ferry::Module same("Net");
  same.register_module("a", std::make_shared<ferry::Linear>(2, 2, false));
  same.register_module("b", std::make_shared<ferry::Linear>(2, 2, true));
  ferry::load_checkpoint_in_model(same, dir / "model.pt");
  EXPECT_NE(same.child("a")->parameter("weight").data_ptr(), same.child("b")->parameter("weight").data_ptr());
  EXPECT_TRUE(at::equal(same.child("b")->parameter("bias"), at::tensor({5.f, 6.f})));
  // "disk" without an offload folder: refused before anything is read, saying why.
  ferry::LoadCheckpointOptions disk;
  disk.device_map = ferry::DeviceMap{{"a", ferry::Placement::disk()}, {"b", ferry::Placement::cpu()}};
  EXPECT_FERRY_ERROR(ferry::load_checkpoint_in_model(same, dir / "model.pt", disk), "model.pt is a PyTorch .bin checkpoint",
                     "give an offload_folder");
  disk.offload_folder = dir / "offload";
  const auto placed = ferry::load_checkpoint_in_model(same, dir / "model.pt", disk);
  EXPECT_EQ(placed.disk_keys, std::vector<std::string>{"a.weight"});
  EXPECT_TRUE(same.child("a")->parameter("weight").is_meta());
  EXPECT_TRUE(at::equal(placed.disk_weights->load("a.weight", c10::kCPU), at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2})));
}

// ---- ferry convert -----------------------------------------------------------------------------------

class ConvertCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(FERRY_CLI_PATH).empty()) GTEST_SKIP() << "the ferry CLI is not built";
  }
  static at::Tensor logits_of(const std::string& dir) {
    auto model = ferry::models::load_pretrained(dir);
    c10::NoGradGuard no_grad;
    return model->logits(at::arange(3, 60, 5, at::kLong).view({1, -1}));
  }
};

TEST_F(ConvertCliTest, BinCheckpointsGiveBitIdenticalLogitsOnceConverted) {
  TempDir out("convert");
  const at::Tensor reference = logits_of(fixture("tiny_llama_bin_safetensors"));
  // Single .bin (an OrderedDict with tied weights); sharded .bin through its folder and its index, resharded.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {fixture("tiny_llama_bin"), ""},
      {fixture("tiny_llama_bin_sharded"), " --max-shard-size 30KB"},
      {fixture("tiny_llama_bin_sharded/pytorch_model.bin.index.json"), ""}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string dst = out / ("m" + std::to_string(i));
    auto r = ferry::test::run_ferry("convert '" + cases[i].first + "' '" + dst + "'" + cases[i].second);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("read PyTorch pickle (torch.save zip) checkpoint"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
    EXPECT_TRUE(at::equal(logits_of(dst), reference)) << cases[i].first;
  }
  // --max-shard-size 30KB gave shards and an index; the tensors are the .bin's, bit for bit.
  const Checkpoint resharded = Checkpoint::open(out / "m1");
  EXPECT_GT(resharded.files().size(), 1u);
  EXPECT_FALSE(resharded.index_file().empty());
  const auto bin = as_map(read_torch_checkpoint(fixture("tiny_llama_bin_sharded")));
  ASSERT_EQ(resharded.tensors().size(), bin.size());
  for (const CheckpointTensor& t : resharded.tensors())
    EXPECT_TRUE(same_bits(resharded.shard(t.shard).view(t.stored_name), bin.at(t.name))) << t.name;
}

// The generated-token line of a text-mode `ferry run`.
std::string tokens_line(const std::string& output) {
  const size_t at = output.find("[1 2 3] -> ");
  return at == std::string::npos ? "(no tokens in: " + output + ")" : output.substr(at, output.find('\n', at) - at);
}

TEST_F(ConvertCliTest, RunReadsBinCheckpointsDirectlyWithTheSafetensorsTokens) {
  TempDir tmp("bin-run");
  const std::string args = " --ids \"1 2 3\" --max-new-tokens 6";
  auto reference = ferry::test::run_ferry("run '" + fixture("tiny_llama_bin_safetensors") + "'" + args);
  ASSERT_EQ(reference.status, 0) << reference.output;
  const std::string map = tmp / "map.json";
  ferry::DeviceMap{{"model.embed_tokens", ferry::Placement::cpu()}, {"model.layers", ferry::Placement::disk()},
                   {"model.norm", ferry::Placement::cpu()}, {"model.rotary_emb", ferry::Placement::cpu()},
                   {"lm_head", ferry::Placement::cpu()}}
      .write_json_file(map);
  for (const std::string& extra : {std::string(), " --device-map '" + map + "' --offload-folder '" + (tmp / "off") + "'"}) {
    auto r = ferry::test::run_ferry("run '" + fixture("tiny_llama_bin_sharded") + "'" + args + extra);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(tokens_line(r.output), tokens_line(reference.output)) << extra;
  }
  // Without --offload-folder, ferry run writes the disk-placed weights to a scratch folder (a .bin
  // cannot be read in place), says where, and removes it at the end.
  auto scratch = ferry::test::run_ferry("run '" + fixture("tiny_llama_bin") + "'" + args + " --device-map '" + map + "'");
  ASSERT_EQ(scratch.status, 0) << scratch.output;
  EXPECT_EQ(tokens_line(scratch.output), tokens_line(reference.output));
  const size_t at = scratch.output.find("cannot be read in place: any disk-placed weights are written to ");
  ASSERT_NE(at, std::string::npos) << scratch.output;
  const std::string folder = scratch.output.substr(at + 64, scratch.output.find(' ', at + 64) - at - 64);
  EXPECT_NE(folder.find("ferry-offload-"), std::string::npos) << folder;
  EXPECT_FALSE(std::filesystem::exists(folder)) << folder;
}

TEST_F(ConvertCliTest, SafetensorsSourcesAreReshardedAndSayWhichFormatWasRead) {
  TempDir out("convert");
  auto r = ferry::test::run_ferry("convert '" + fixture("tiny_llama_bin_safetensors") + "' '" + (out / "st") +
                                  "' --max-shard-size 50KB");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("read safetensors checkpoint"), std::string::npos) << r.output;
  EXPECT_TRUE(at::equal(logits_of(out / "st"), logits_of(fixture("tiny_llama_bin_safetensors"))));
  // A folder with both formats is read as safetensors.
  TempDir both("convert");
  for (const char* f : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(fixture(std::string("tiny_llama_bin_safetensors/") + f), both / f);
  std::filesystem::copy_file(fixture("tiny_llama_bin/pytorch_model.bin"), both / "pytorch_model.bin");
  r = ferry::test::run_ferry("convert '" + both.str() + "' '" + (out / "both") + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("read safetensors checkpoint"), std::string::npos) << r.output;
}

TEST_F(ConvertCliTest, HostileSourcesFailWithTheirNameAndWriteNothing) {
  TempDir out("convert");
  const std::string evil = out / "evil.bin";
  write_bytes(evil, zip_image({{"data.pkl", "\x80\x02" + global("os", "system") + str("true") + "\x85R."}}));
  const std::string truncated = out / "cut.bin";
  write_bytes(truncated, read_bytes(fixture("tiny_llama_bin/pytorch_model.bin")).substr(0, 5000));
  for (const std::string& src : {evil, truncated, fixture("torch_pickles/legacy.pt")}) {
    auto r = ferry::test::run_ferry("convert '" + src + "' '" + (out / "dst") + "'");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find(src), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(out / "dst")) << src;
  }
}
