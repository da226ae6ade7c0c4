// Checkpoint resolution and listing on the real fixtures and on damaged copies of them.

#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <set>

using namespace ferry::io;
using ferry::test::data_dir;
using ferry::test::read_bytes;
using ferry::test::TempDir;
using ferry::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// A copy of a fixture's shards and index in a temporary folder, to damage.
void copy_fixture(const std::string& model, const std::string& to) {
  for (const auto& e : fs::directory_iterator(data_dir() + "/" + model)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model", 0) == 0) fs::copy_file(e.path(), fs::path(to) / name);
  }
}

nlohmann::json fixture_index(const std::string& model) {
  return nlohmann::json::parse(read_bytes(data_dir() + "/" + model + "/model.safetensors.index.json"));
}

}  // namespace

TEST(CheckpointTest, ListsAShardedFixtureFromHeadersOnly) {
  for (const char* model : {"tiny_llama", "tiny_qwen2"}) {
    const nlohmann::json index = fixture_index(model);
    Checkpoint ckpt = Checkpoint::open(data_dir() + "/" + model);
    EXPECT_EQ(ckpt.tensors().size(), index["weight_map"].size()) << model;
    EXPECT_EQ(ckpt.total_bytes(), index["metadata"]["total_size"].get<uint64_t>()) << model;
    std::set<std::string> files;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      const CheckpointTensor& t = ckpt.at(it.key());
      EXPECT_EQ(fs::path(t.file).filename().string(), it.value().get<std::string>());
      files.insert(t.file);
    }
    EXPECT_EQ(ckpt.files().size(), files.size());
    EXPECT_TRUE(std::is_sorted(ckpt.files().begin(), ckpt.files().end()));
    EXPECT_NE(ckpt.index_file().find("model.safetensors.index.json"), std::string::npos);
    EXPECT_NE(ckpt.index_metadata_json().find("total_size"), std::string::npos);
  }
  Checkpoint qwen = Checkpoint::open(data_dir() + "/tiny_qwen2");
  EXPECT_EQ(qwen.find("lm_head.weight"), nullptr) << "tied embeddings: no lm_head in the files";
  EXPECT_EQ(qwen.at("model.embed_tokens.weight").dtype, at::kBFloat16);
}

TEST(CheckpointTest, OffsetsPointAtTheTensorBytes) {
  Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_llama/model.safetensors.index.json");
  const CheckpointTensor& t = ckpt.at("model.norm.weight");
  const std::string bytes = read_bytes(t.file);
  const SafetensorsFile& file = ckpt.open_file(t.file);
  auto [ptr, n] = file.bytes(t.name);
  ASSERT_EQ(n, t.nbytes);
  EXPECT_EQ(std::memcmp(bytes.data() + t.offset, ptr, n), 0);
  EXPECT_EQ(t.numel() * 4, static_cast<int64_t>(t.nbytes));
  // tensors_in lists a shard's tensors in offset order, and the shard is the one already open.
  EXPECT_EQ(&ckpt.shard(t.shard), &file);
  uint64_t previous_end = 0;
  bool found = false;
  for (const CheckpointTensor& s : ckpt.tensors_in(t.shard)) {
    EXPECT_EQ(s.file, t.file);
    EXPECT_GE(s.offset, previous_end);
    previous_end = s.offset + s.nbytes;
    found = found || s.name == t.name;
  }
  EXPECT_TRUE(found);
}

TEST(CheckpointTest, SingleFileAndModelSafetensorsInAFolder) {
  TempDir dir;
  save_safetensors(dir.file("model.safetensors"), {{"a", at::ones({2})}, {"b", at::zeros({3}, at::kHalf)}});
  Checkpoint from_dir = Checkpoint::open(dir.str());
  Checkpoint from_file = Checkpoint::open(dir.file("model.safetensors"));
  EXPECT_TRUE(from_dir.index_file().empty());
  EXPECT_EQ(from_dir.files(), std::vector<std::string>{dir.file("model.safetensors")});
  EXPECT_EQ(from_file.tensors().size(), 2u);
  EXPECT_EQ(from_file.at("b").dtype, at::kHalf);
}

TEST(CheckpointTest, IndexWithoutWeightMapWrapper) {
  TempDir dir;
  save_safetensors(dir.file("s1.safetensors"), {{"a", at::ones({2})}});
  save_safetensors(dir.file("s2.safetensors"), {{"b", at::ones({3})}});
  write_bytes(dir.file("custom.index.json"), R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  Checkpoint ckpt = Checkpoint::open(dir.str());
  EXPECT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.at("b").file, dir.file("s2.safetensors"));
}

// ---- refused and damaged checkpoints ------------------------------------------------------------

TEST(CheckpointHostileTest, BinCheckpointsOpenThroughTheRestrictedReaderWhichRefusesDamagedOnes) {
  // .bin checkpoints open (tests/torch_checkpoint_test.cpp); a damaged one is refused by the
  // restricted reader, naming the file, and a missing shard by the index's name.
  TempDir dir;
  write_bytes(dir.file("pytorch_model.bin"), "PK\x03\x04 not really");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("pytorch_model.bin")), "[Checkpoint::open]", dir.file("pytorch_model.bin"));
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), dir.file("pytorch_model.bin"));
  TempDir sharded;
  write_bytes(sharded.file("pytorch_model.bin.index.json"), R"({"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}})");
  EXPECT_FERRY_ERROR(Checkpoint::open(sharded.str()), "pytorch_model-00001-of-00002.bin", "does not exist");
  EXPECT_EQ(checkpoint_format(sharded.str()), CheckpointFormat::torch);
  EXPECT_EQ(checkpoint_format(dir.file("pytorch_model.bin")), CheckpointFormat::torch);
  // A folder with only a Trainer's pickles holds no weights.
  TempDir training;
  write_bytes(training.file("training_args.bin"), "PK");
  EXPECT_FERRY_ERROR(Checkpoint::open(training.str()), "without model.safetensors, a *.index.json file or PyTorch weights");
}

TEST(CheckpointHostileTest, MissingShardNamedByTheIndex) {
  TempDir dir;
  copy_fixture("tiny_llama", dir.str());
  fs::remove(dir.file("model-00003-of-00014.safetensors"));
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "model.safetensors.index.json names shard 'model-00003-of-00014.safetensors'",
                     "does not exist", "incomplete download");
}

TEST(CheckpointHostileTest, IndexNamingATensorTwice) {
  TempDir dir;
  copy_fixture("tiny_llama", dir.str());
  std::string text = read_bytes(dir.file("model.safetensors.index.json"));
  const std::string line = "\"lm_head.weight\": \"model-00013-of-00014.safetensors\",";
  const size_t at = text.find(line);
  ASSERT_NE(at, std::string::npos);
  text.insert(at, "\"lm_head.weight\": \"model-00001-of-00014.safetensors\",\n    ");
  write_bytes(dir.file("model.safetensors.index.json"), text);
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "model.safetensors.index.json", "names 'lm_head.weight' twice");
}

TEST(CheckpointHostileTest, IndexPointingAtTheWrongShard) {
  TempDir dir;
  save_safetensors(dir.file("s1.safetensors"), {{"a", at::ones({2})}});
  save_safetensors(dir.file("s2.safetensors"), {{"b", at::ones({3})}});
  write_bytes(dir.file("m.index.json"), R"({"weight_map": {"a": "s2.safetensors", "b": "s2.safetensors"}})");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "names tensor 'a' in", "s2.safetensors", "holds no such tensor");
  write_bytes(dir.file("m.index.json"), R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "names tensor 'b' in", "s1.safetensors, but it is stored in");
}

TEST(CheckpointHostileTest, TensorStoredInTwoShards) {
  TempDir dir;
  save_safetensors(dir.file("s1.safetensors"), {{"a", at::ones({2})}});
  save_safetensors(dir.file("s2.safetensors"), {{"a", at::ones({2})}, {"b", at::ones({3})}});
  write_bytes(dir.file("m.index.json"), R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "tensor 'a' is stored twice", "s1.safetensors", "s2.safetensors");
}

TEST(CheckpointHostileTest, DamagedShardIsReportedWithItsPath) {
  TempDir dir;
  copy_fixture("tiny_llama", dir.str());
  const std::string shard = dir.file("model-00002-of-00014.safetensors");
  std::string bytes = read_bytes(shard);
  write_bytes(shard, bytes.substr(0, 40));
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), shard, "but the file is only 40 bytes");
}

TEST(CheckpointHostileTest, AmbiguousOrEmptyFolders) {
  TempDir dir;
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "without model.safetensors, a *.index.json file or PyTorch weights");
  write_bytes(dir.file("a.index.json"), "{}");
  write_bytes(dir.file("b.index.json"), "{}");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "holds 2 index files", "a.index.json", "b.index.json");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("nothing")), "does not exist");
  write_bytes(dir.file("bad.json"), "{\"weight_map\": [1]}");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("bad.json")), "\"weight_map\" must map tensor names to shard files");
  write_bytes(dir.file("bad.json"), "{\"weight_map\": {\"a\": 3}}");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("bad.json")), "tensor 'a' must map to a shard file name, got 3");
  write_bytes(dir.file("bad.json"), "{\"weight_map\": {\"a\": ");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("bad.json")), "bad.json is not valid JSON");
}

// Issue 13 (paths and special files): what an index names must be a file inside its folder, and
// whatever is not a regular file is named for what it is, before anything could block on it.
TEST(CheckpointHostileTest, ShardsOutsideTheFolderOrNotFilesAreRefusedByName) {
  TempDir dir;
  save_safetensors(dir.file("a.safetensors"), {{"a", at::ones({2})}});
  auto index_naming = [&](const std::string& shard) {
    write_bytes(dir.file("model.safetensors.index.json"), R"({"weight_map": {"a": ")" + shard + R"("}})");
  };
  index_naming("../a.safetensors");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "[Checkpoint::open]", "outside the index's folder");
  index_naming("/etc/passwd");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "outside the index's folder");
  fs::create_directories(dir.file("shard_dir.safetensors"));
  index_naming("shard_dir.safetensors");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "names shard 'shard_dir.safetensors'", "is a directory, not a file");
  ASSERT_EQ(::mkfifo(dir.file("fifo.safetensors").c_str(), 0600), 0);
  index_naming("fifo.safetensors");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "is a FIFO, not a file");  // and does not block
  index_naming("a.safetensors");
  EXPECT_EQ(Checkpoint::open(dir.str()).tensors().size(), 1u);
}

TEST(CheckpointHostileTest, IndexWithMetadataButNoWeightMapSaysSo) {
  TempDir dir;
  save_safetensors(dir.file("a.safetensors"), {{"a", at::ones({2})}});
  write_bytes(dir.file("model.safetensors.index.json"), R"({"metadata": {"total_size": 8}, "a": "a.safetensors"})");
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.str()), "has \"metadata\" but no \"weight_map\"");
}

TEST(CheckpointHostileTest, IndexThatIsAFifoIsRefusedWithoutBlocking) {
  TempDir dir;
  ASSERT_EQ(::mkfifo(dir.file("model.safetensors.index.json").c_str(), 0600), 0);
  EXPECT_FERRY_ERROR(Checkpoint::open(dir.file("model.safetensors.index.json")), "is a FIFO, not a file");
}

TEST(CheckpointTest, CopiesShareTheMappingsAndPrefixesApplyOnce) {
  Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_llama");
  Checkpoint copy = ckpt;
  EXPECT_EQ(&copy.shard(0), &ckpt.shard(0));  // nothing mapped or parsed again
  Checkpoint prefixed = ckpt.with_name_prefix("base.");
  EXPECT_EQ(prefixed.name_prefix(), "base.");
  const CheckpointTensor& t = prefixed.at("base.model.norm.weight");
  EXPECT_EQ(t.stored_name, "model.norm.weight");
  EXPECT_EQ(prefixed.find("model.norm.weight"), nullptr);
  // matched_to: the base-model rule, decided in one place.
  EXPECT_EQ(prefixed.matched_to("base.model.embed_tokens.weight").name_prefix(), "base.");
  Checkpoint matched = ckpt.matched_to("lm.model.embed_tokens.weight");
  EXPECT_EQ(matched.name_prefix(), "lm.");
  EXPECT_NE(matched.find("lm.model.norm.weight"), nullptr);
}
