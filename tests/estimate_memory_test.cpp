// ferry estimate-memory (issue 18): Accelerate's estimate-memory for inference, from config.json
// alone. The figures are checked against the fixture checkpoint's own tensor bytes.

#include "ferry/io/checkpoint.h"
#include "cli_runner.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace {

std::string fixture(const std::string& name) { return std::string(FERRY_TEST_DATA_DIR) + "/" + name; }

}  // namespace

TEST(EstimateMemory, FromConfigAloneMatchesTheCheckpointsBytes) {
  if (std::string(FERRY_CLI_PATH).empty()) GTEST_SKIP() << "no CLI in this build";
  // tiny_llama is stored in float32: its checkpoint bytes are the float32 weights, and a decoder
  // layer (the no-split class) is the largest layer.
  const auto ckpt = ferry::io::Checkpoint::open(fixture("tiny_llama"));
  // Plus, as Accelerate's sizes count every buffer, the rotary embedding's inv_freq (not in the
  // checkpoint): head_dim 32 -> 16 float32 values.
  double total = 16 * 4, layer0 = 0;
  for (const auto& t : ckpt.tensors()) {
    total += static_cast<double>(t.nbytes);
    if (std::string(t.name).rfind("model.layers.0.", 0) == 0) layer0 += static_cast<double>(t.nbytes);
  }
  // Only config.json in the folder: no weights are needed.
  ferry_test::TempDir dir("estimate");
  std::filesystem::copy_file(fixture("tiny_llama") + "/config.json", dir.file("config.json"));
  for (const std::string& target : {dir.str(), dir.file("config.json")}) {
    ferry::test::CliRun r = ferry::test::run_ferry("estimate-memory '" + target + "' --json");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["architecture"], "LlamaForCausalLM");
    ASSERT_EQ(j["dtypes"].size(), 5u);
    EXPECT_EQ(j["dtypes"][0]["dtype"], "float32");
    EXPECT_DOUBLE_EQ(j["dtypes"][0]["total_bytes"].get<double>(), total);
    EXPECT_DOUBLE_EQ(j["dtypes"][1]["total_bytes"].get<double>(), total / 2) << "bfloat16";
    EXPECT_DOUBLE_EQ(j["dtypes"][3]["total_bytes"].get<double>(), total / 4) << "float8";
    EXPECT_DOUBLE_EQ(j["dtypes"][4]["total_bytes"].get<double>(), total / 4) << "int8";
    EXPECT_DOUBLE_EQ(j["dtypes"][0]["largest_layer_bytes"].get<double>(), layer0);
    EXPECT_EQ(j["dtypes"][0]["largest_layer"].get<std::string>().rfind("model.layers.", 0), 0u) << j.dump();
  }
  ferry::test::CliRun table = ferry::test::run_ferry("estimate-memory '" + dir.str() + "'");
  ASSERT_EQ(table.status, 0) << table.output;
  EXPECT_NE(table.output.find("| bfloat16 |"), std::string::npos) << table.output;
  ferry::test::CliRun missing = ferry::test::run_ferry("estimate-memory '" + dir.file("nothing") + "'");
  EXPECT_EQ(missing.status, 1) << missing.output;
  EXPECT_NE(missing.output.find("expected a model folder with config.json or a config.json file"), std::string::npos)
      << missing.output;
}
