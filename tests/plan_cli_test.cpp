// `ferry plan` run as a program: conformance cases, tables, JSON, and bad input with exit codes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <string>

#include "cli_runner.h"

namespace {

using ferry::test::CliRun;
CliRun run_cli(const std::string& args) { return ferry::test::run_ferry("plan " + args); }

const std::string kData = FERRY_TEST_DATA_DIR;

#define REQUIRE_CLI() \
  if (std::string(FERRY_CLI_PATH).empty()) GTEST_SKIP() << "the ferry CLI is not built"

}  // namespace

TEST(PlanCli, CasesPrintResultsForEveryCase) {
  REQUIRE_CLI();
  CliRun r = run_cli("--cases '" + kData + "/device_map_cases.json' 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.output;
  // warnings go to stderr; the results are the one JSON line on stdout
  std::string json = r.output.substr(r.output.find("{\"results\""));
  auto doc = nlohmann::json::parse(json.substr(0, json.find('\n')));
  ASSERT_EQ(doc["results"].size(), 56u);
  EXPECT_EQ(doc["results"][0]["id"], "CMS-1");
  EXPECT_EQ(doc["results"][0]["result"][""], 236);
}

TEST(PlanCli, CheckpointTableAndJson) {
  REQUIRE_CLI();
  CliRun table = run_cli("'" + kData + "/tiny_llama' --max-memory 0=1MiB,1=1MiB,cpu=1MiB --no-split 'model.layers.*' --dtype float16");
  ASSERT_EQ(table.status, 0) << table.output;
  EXPECT_NE(table.output.find("checkpoint of 14 files, 30 tensors"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("model.layers.0      1             354 KiB"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("left"), std::string::npos);

  CliRun json = run_cli("'" + kData + "/tiny_llama' --max-memory 0=1MiB,1=1MiB,cpu=1MiB --no-split 'model.layers.*' "
                     "--dtype float16 --json");
  ASSERT_EQ(json.status, 0) << json.output;
  auto map = nlohmann::json::parse(json.output);
  EXPECT_EQ(map["model.layers.0"], 1);
  EXPECT_EQ(map["model.layers.2"], "cpu");
  EXPECT_EQ(map.size(), 6u);
}

TEST(PlanCli, TreeJsonWithStrategies) {
  REQUIRE_CLI();
  const std::string tree = ::testing::TempDir() + "ferry_plan_cli_tree.json";
  {
    std::ifstream in(kData + "/device_map_cases.json");
    auto cases = nlohmann::json::parse(in)["cases"];
    std::ofstream out(tree);
    out << cases[0]["model"].dump();  // ModelForTest
  }
  CliRun seq = run_cli("'" + tree + "' --max-memory 0=200,1=200 --strategy sequential --json");
  ASSERT_EQ(seq.status, 0) << seq.output;
  EXPECT_EQ(nlohmann::json::parse(seq.output), nlohmann::json::parse(R"({"linear1":0,"batchnorm":1,"linear2":1})"));
  CliRun no_split = run_cli("'" + tree + "' --max-memory 0=300,1=300 --strategy sequential --no-split Linear --json");
  ASSERT_EQ(no_split.status, 0) << no_split.output;
  EXPECT_EQ(nlohmann::json::parse(no_split.output), nlohmann::json::parse(R"({"":0})"));
  std::remove(tree.c_str());
}

TEST(PlanCli, BadInputExitsNonZeroSayingWhatAndWhere) {
  REQUIRE_CLI();
  const std::string llama = "'" + kData + "/tiny_llama'";
  struct Case {
    std::string args, needle;
  };
  const Case cases[] = {
      {llama + " --max-memory 0=1MiB,gpu=2GiB", "max memory entry 'gpu=2GiB': unknown device 'gpu'"},
      {llama + " --max-memory 0=-1GiB", "max memory entry '0=-1GiB': bad size '-1GiB'"},
      {llama + " --max-memory 0=12XB", "'12XB' is not a valid size"},
      {llama + " --max-memory cpu", "max memory entry 'cpu' has no '='"},
      {llama + " --max-memory meta=1GiB", "Device meta is not recognized"},
      {llama + " --max-memory 0=1GiB,0=2GiB", "device cuda:0 has two budgets"},
      {llama + " --strategy fastest", "got 'fastest'"},
      {llama + " --dtype float17", "unknown dtype 'float17'"},
      {"'" + kData + "' --max-memory cpu=1GiB", "cannot plan from '" + kData + "'"},
      {"/nonexistent/model --max-memory cpu=1GiB", "'/nonexistent/model' does not exist"},
      {"--max-memory cpu=1GiB", "no model given"},
  };
  for (const auto& c : cases) {
    CliRun r = run_cli(c.args);
    EXPECT_EQ(r.status, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(PlanCli, CorruptHeaderIsReportedWithTheFile) {
  REQUIRE_CLI();
  const std::string dir = ::testing::TempDir() + "ferry_plan_cli_corrupt";
  std::string mkdir = "mkdir -p '" + dir + "'";
  ASSERT_EQ(std::system(mkdir.c_str()), 0);
  {
    std::ofstream out(dir + "/model.safetensors", std::ios::binary);
    uint64_t header_len = 1000;  // longer than the file
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out << "{\"w\": {\"dtype\": \"F32\"";
  }
  CliRun r = run_cli("'" + dir + "' --max-memory cpu=1GiB");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("cannot plan from '" + dir + "'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  std::string rm = "rm -rf '" + dir + "'";
  std::system(rm.c_str());
}

// A mixture of experts from its checkpoint: planned by the expert unless --whole-layers.
TEST(PlanCli, MixtureOfExpertsByTheExpertOrWholeLayers) {
  REQUIRE_CLI();
  // Budgets of PlanByExpert.DenseFirstThenExpertsByTheExpertWhereRoomRemains (the same shapes).
  const std::string model = "'" + kData + "/tiny_mixtral' --max-memory 0=1089768,cpu=477284 --no-split 'model.layers.*'";
  CliRun table = run_cli(model + " --verbose 2>&1");
  ASSERT_EQ(table.status, 0) << table.output;
  EXPECT_NE(table.output.find("model.layers.1.block_sparse_moe.experts: 8 routed experts (36.0 KiB each) -> 3 on cpu "
                              "5 on disk"),
            std::string::npos)
      << table.output;
  CliRun json = run_cli(model + " --json");
  ASSERT_EQ(json.status, 0) << json.output;
  auto map = nlohmann::json::parse(json.output);
  EXPECT_EQ(map["model.layers.0.block_sparse_moe.experts.4"], 0) << json.output;
  EXPECT_EQ(map["model.layers.0.block_sparse_moe.experts.5"], "cpu") << json.output;
  EXPECT_EQ(map["model.layers.1.block_sparse_moe.experts.7"], "disk") << json.output;
  EXPECT_EQ(map["model.layers.1.self_attn"], 0) << json.output;

  CliRun whole = run_cli(model + " --whole-layers --json");
  ASSERT_EQ(whole.status, 0) << whole.output;
  EXPECT_EQ(whole.output.find("experts"), std::string::npos) << whole.output;
}

// `ferry plan --nproc N`: the decoder layers each pipeline rank would hold.
TEST(PlanCli, PipelineStagesEvenOrByRankMemory) {
  REQUIRE_CLI();
  CliRun even = run_cli("'" + kData + "/tiny_llama' --max-memory cpu=1GiB --nproc 3");
  ASSERT_EQ(even.status, 0) << even.output;
  EXPECT_NE(even.output.find("Pipeline over 3 ranks (even shares"), std::string::npos) << even.output;
  EXPECT_NE(even.output.find("2     model.layers.2-2"), std::string::npos) << even.output;
  CliRun shares = run_cli("'" + kData + "/tiny_llama' --max-memory cpu=1GiB --nproc 2 --rank-memory 1GiB,2GiB");
  ASSERT_EQ(shares.status, 0) << shares.output;
  EXPECT_NE(shares.output.find("0     model.layers.0-0"), std::string::npos) << shares.output;
  EXPECT_NE(shares.output.find("1     model.layers.1-2"), std::string::npos) << shares.output;
  CliRun bad = run_cli("'" + kData + "/tiny_llama' --nproc 2 --rank-memory 1GiB");
  EXPECT_EQ(bad.status, 1) << bad.output;
  EXPECT_NE(bad.output.find("--rank-memory gives 1 budgets for --nproc 2"), std::string::npos) << bad.output;
  CliRun many = run_cli("'" + kData + "/tiny_llama' --nproc 4");
  EXPECT_EQ(many.status, 1) << many.output;
  EXPECT_NE(many.output.find("a pipeline of 4 ranks needs at least 4 decoder layers; this model has 3"), std::string::npos)
      << many.output;
}
