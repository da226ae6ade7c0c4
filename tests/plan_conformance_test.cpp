// Every planner case of tests/data/device_map_cases.json against Accelerate's answer.
#include "ferry/plan/conformance.h"
#include "ferry/plan/model_tree.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

using Json = nlohmann::json;

namespace {

Json load_cases() {
  std::ifstream in(std::string(FERRY_TEST_DATA_DIR) + "/device_map_cases.json");
  EXPECT_TRUE(in) << "missing device_map_cases.json";
  return Json::parse(in);
}

}  // namespace

TEST(PlanConformance, EveryCaseGivesAccelerateAnswer) {
  Json cases = load_cases()["cases"];
  ASSERT_EQ(cases.size(), 56u);
  int matched = 0;
  for (const auto& c : cases) {
    Json result = Json::parse(ferry::run_conformance_case(c.dump()));
    if (result == c["accelerate"]) {
      ++matched;
    } else {
      ADD_FAILURE() << c["id"] << ": got " << result.dump() << "\n  accelerate " << c["accelerate"].dump();
    }
  }
  std::cout << "conformance: " << matched << "/" << cases.size() << " identical to Accelerate\n";
}
