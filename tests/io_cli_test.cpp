// `ferry inspect` and `ferry offload`, run as a user would run them.

#include "ferry/io/offload.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/sha256.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <filesystem>

using namespace ferry::io;
using ferry::test::data_dir;
using ferry::test::read_bytes;
using ferry::test::same_bits;
using ferry::test::TempDir;
using ferry::test::write_bytes;

namespace {

struct CliRun {
  int status = -1;
  std::string output;  // stdout and stderr
};

CliRun run_cli(const std::string& args) {
  CliRun r;
  FILE* pipe = ::popen((std::string(FERRY_CLI_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  int status = ::pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

class IoCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(FERRY_CLI_PATH).empty()) GTEST_SKIP() << "the ferry CLI is not built";
  }
};

TEST_F(IoCliTest, InspectJsonListsEveryTensorWithTotals) {
  CliRun r = run_cli("inspect --json --checksum '" + data_dir() + "/tiny_qwen2'");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto out = nlohmann::json::parse(r.output);
  const Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_qwen2");
  EXPECT_EQ(out["format"], "safetensors");
  EXPECT_EQ(out["tensors"].size(), ckpt.tensors().size());
  EXPECT_EQ(out["total"]["bytes"].get<uint64_t>(), ckpt.total_bytes());
  EXPECT_EQ(out["files"].size(), ckpt.files().size());
  EXPECT_EQ(out["dtypes"]["bfloat16"]["tensors"].get<size_t>(), ckpt.tensors().size());
  int64_t params = 0;
  for (const auto& t : ckpt.tensors()) params += t.numel();
  EXPECT_EQ(out["total"]["parameters"].get<int64_t>(), params);
  // Checksums are of the stored bytes, checked against an independent read of the file.
  const auto& first = out["tensors"][0];
  const CheckpointTensor& t = ckpt.at(first["name"].get<std::string>());
  const std::string bytes = read_bytes(t.file).substr(t.offset, t.nbytes);
  EXPECT_EQ(first["sha256"], sha256_hex(bytes.data(), bytes.size()));
}

TEST_F(IoCliTest, InspectTextHasPerShardAndPerDtypeTotals) {
  CliRun r = run_cli("inspect '" + data_dir() + "/tiny_llama/model.safetensors.index.json'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("800640 parameters"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("per file:"), std::string::npos);
  EXPECT_NE(r.output.find("float32: "), std::string::npos);
  EXPECT_NE(r.output.find("model.norm.weight"), std::string::npos);
}

TEST_F(IoCliTest, InspectFailsOnADamagedFile) {
  TempDir dir;
  write_bytes(dir.file("bad.safetensors"), ferry::test::safetensors_image(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 3));
  CliRun r = run_cli("inspect '" + dir.file("bad.safetensors") + "'");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("ferry: error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("lie outside the data section"), std::string::npos) << r.output;
  CliRun bin = run_cli("inspect '" + dir.file("pytorch_model.bin") + "'");
  EXPECT_NE(bin.status, 0);
}

TEST_F(IoCliTest, InspectAndPlanReadBinCheckpointsThroughFerryTorch) {
  // `ferry` has no zip reader: it hands inspect and plan of a .bin to ferry-torch, same arguments.
  const std::string bin = data_dir() + "/tiny_llama_bin";
  const std::string twin = data_dir() + "/tiny_llama_bin_safetensors";
  for (const std::string& path : {bin, data_dir() + "/tiny_llama_bin_sharded/pytorch_model.bin.index.json"}) {
    CliRun r = run_cli("inspect --json '" + path + "'");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["format"], "pytorch");
    const auto st = nlohmann::json::parse(run_cli("inspect --json '" + twin + "'").output);
    // The .bin also holds lm_head.weight (tied, left out of the safetensors file).
    EXPECT_EQ(j["total"]["tensors"].get<int>(), st["total"]["tensors"].get<int>() + 1) << r.output;
    EXPECT_NE(r.output.find("\"lm_head.weight\""), std::string::npos);
  }
  CliRun text = run_cli("inspect '" + bin + "'");
  ASSERT_EQ(text.status, 0) << text.output;
  EXPECT_NE(text.output.find("(pytorch): "), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << text.output;
  CliRun checksum = run_cli("inspect --checksum '" + bin + "'");
  EXPECT_EQ(checksum.status, 1) << checksum.output;
  EXPECT_NE(checksum.output.find("--checksum hashes each tensor's stored byte range"), std::string::npos) << checksum.output;
  CliRun plan = run_cli("plan '" + bin + "' --max-memory cpu=40KB");
  ASSERT_EQ(plan.status, 0) << plan.output;
  EXPECT_NE(plan.output.find("checkpoint of 1 file"), std::string::npos) << plan.output;
  EXPECT_NE(plan.output.find("disk"), std::string::npos) << plan.output;
}

TEST_F(IoCliTest, OffloadWritesAnAccelerateFolderThatInspectReads) {
  TempDir dir;
  const std::string out = dir.file("offload");
  CliRun r = run_cli("offload '" + data_dir() + "/tiny_qwen2' '" + out + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  const Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_qwen2");
  const OffloadIndex index = read_offload_index(out);
  ASSERT_EQ(index.size(), ckpt.tensors().size());
  for (const auto& t : ckpt.tensors()) {
    EXPECT_EQ(index.at(t.name).dtype, "bfloat16");
    at::Tensor back = load_offloaded_weight(offload_file_path(out, t.name), index.at(t.name));
    EXPECT_TRUE(same_bits(back, ckpt.open_file(t.file).view(t.name))) << t.name;
  }
  CliRun inspect = run_cli("inspect --json '" + out + "'");
  ASSERT_EQ(inspect.status, 0) << inspect.output;
  const auto j = nlohmann::json::parse(inspect.output);
  EXPECT_EQ(j["format"], "offload_folder");
  EXPECT_EQ(j["total"]["bytes"].get<uint64_t>(), ckpt.total_bytes());
  // A truncated .dat makes inspect fail.
  const std::string victim = offload_file_path(out, ckpt.tensors()[0].name);
  write_bytes(victim, read_bytes(victim).substr(0, 10));
  CliRun damaged = run_cli("inspect '" + out + "'");
  EXPECT_EQ(damaged.status, 1);
  EXPECT_NE(damaged.output.find("but the file has 10 bytes"), std::string::npos) << damaged.output;
}

namespace {

// Every file of a folder with its bytes, and the folder's siblings (to see leftovers).
std::map<std::string, std::string> folder_contents(const std::string& folder) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(folder)) out[e.path().filename().string()] = read_bytes(e.path().string());
  return out;
}

std::vector<std::string> siblings(const std::string& folder) {
  std::vector<std::string> out;
  const auto parent = std::filesystem::path(folder).parent_path();
  for (const auto& e : std::filesystem::directory_iterator(parent)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// Issue 13 (nothing half-written): a write that fails part-way (here the file-size limit makes
// write() fail with EFBIG, as a full disk fails with ENOSPC) leaves an existing offload folder as it
// was, with no temporary file or folder beside it.
TEST_F(IoCliTest, OffloadIntoAFolderIsAllOrNothingWhenTheDiskFills) {
  TempDir dir;
  const std::string out = dir.file("offload");
  ASSERT_EQ(run_cli("offload '" + data_dir() + "/tiny_llama' '" + out + "'").status, 0);
  const auto before = folder_contents(out);
  const auto around = siblings(out);
  ASSERT_GT(before.size(), 10u);
  const std::string limited = "sh -c 'ulimit -f 64; trap \"\" XFSZ; exec \"" + std::string(FERRY_CLI_PATH) +
                              "\" offload \"" + data_dir() + "/tiny_qwen2\" \"" + out + "\"' 2>&1";
  FILE* pipe = ::popen(limited.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  const int status = ::pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << output;
  EXPECT_NE(output.find("write failed"), std::string::npos) << output;
  EXPECT_EQ(folder_contents(out), before) << "the folder changed although the update failed";
  EXPECT_EQ(siblings(out), around) << "a temporary folder was left beside the offload folder";
  // Without the limit the same update succeeds and merges: both models' tensors are in the index.
  CliRun ok = run_cli("offload '" + data_dir() + "/tiny_qwen2' '" + out + "'");
  ASSERT_EQ(ok.status, 0) << ok.output;
  const OffloadIndex merged = read_offload_index(out);
  EXPECT_NE(merged.find("model.layers.0.self_attn.q_proj.bias"), nullptr);  // Qwen2's
  EXPECT_EQ(siblings(out), around);
}

// Issue 13 (files that change under a run): checksums are read with pread, so a shard that is now
// shorter than its header says ends in an error naming it, not in SIGBUS.
TEST_F(IoCliTest, ChecksumOfAShardTruncatedAfterItsHeaderIsAnErrorNotABusError) {
  TempDir dir;
  save_safetensors(dir.file("model.safetensors"), {{"a", at::ones({1024})}, {"b", at::ones({1024})}});
  std::filesystem::resize_file(dir.file("model.safetensors"), std::filesystem::file_size(dir.file("model.safetensors")) - 100);
  // The header is intact but promises more bytes than the file has: the reader refuses it up front.
  CliRun r = run_cli("inspect --checksum '" + dir.file("model.safetensors") + "'");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  // Truncated between validation and reading (the race a run can meet): sha256_file_range.
  save_safetensors(dir.file("ok.safetensors"), {{"a", at::ones({1024})}});
  const uint64_t size = std::filesystem::file_size(dir.file("ok.safetensors"));
  std::filesystem::resize_file(dir.file("ok.safetensors"), size - 1000);
  try {
    sha256_file_range(dir.file("ok.safetensors"), size - 4096, 4096);
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("was truncated or replaced while ferry read it"), std::string::npos) << e.what();
  }
}
