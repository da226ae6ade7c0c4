#include "ferry/plan/device_map.h"

#include "ferry/core/error.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

using ferry::DeviceMap;
using ferry::Placement;

TEST(PlanDeviceMap, SetKeepsPositionAndAppendsNewKeys) {
  DeviceMap map;
  map.set("a", Placement::cuda(0));
  map.set("b", Placement::cpu());
  map.set("a", Placement::disk());
  ASSERT_EQ(map.size(), 2u);
  EXPECT_EQ(map.entries()[0].first, "a");
  EXPECT_EQ(map.entries()[0].second, Placement::disk());
  EXPECT_TRUE(map.erase("a"));
  EXPECT_FALSE(map.erase("a"));
  map.set("a", Placement::cuda(1));
  EXPECT_EQ(map.entries()[1].first, "a");
  EXPECT_EQ(map.at("b"), Placement::cpu());
}

TEST(PlanDeviceMap, LookupUsesDottedPrefixesNotSubstrings) {
  DeviceMap map{{"model.layers.1", Placement::cuda(0)}, {"model.layers.10", Placement::cpu()}};
  EXPECT_EQ(map.placement_of("model.layers.1.mlp.weight"), Placement::cuda(0));
  EXPECT_EQ(map.placement_of("model.layers.10.mlp.weight"), Placement::cpu());
  EXPECT_EQ(map.owner_of("model.layers.10.mlp.weight"), "model.layers.10");
  EXPECT_FALSE(map.placement_of("model.layers.100.weight").has_value());
  EXPECT_FALSE(map.placement_of("model.norm.weight").has_value());
  map.set("", Placement::disk());
  EXPECT_EQ(map.placement_of("model.norm.weight"), Placement::disk());
  EXPECT_EQ(map.owner_of("model.norm.weight"), "");
}

TEST(PlanDeviceMap, JsonRoundTripKeepsOrderAndSpelling) {
  const std::string text = R"({"model.layers.0":0,"lm_head":"cpu","x":"disk","y":"cuda:1"})";
  DeviceMap map = DeviceMap::from_json(text);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map.at("y"), Placement::cuda(1));
  EXPECT_EQ(map.to_json(), R"({"model.layers.0":0,"lm_head":"cpu","x":"disk","y":1})");
  EXPECT_EQ(DeviceMap::from_json(map.to_json(2)), map);
  EXPECT_EQ(DeviceMap().to_json(), "{}");
  EXPECT_EQ(map.placements(), (std::vector<Placement>{Placement::cuda(0), Placement::cuda(1), Placement::cpu(),
                                                      Placement::disk()}));
}

TEST(PlanDeviceMap, SameEntriesIgnoresOrder) {
  DeviceMap a{{"x", Placement::cpu()}, {"y", Placement::cuda(0)}};
  DeviceMap b{{"y", Placement::cuda(0)}, {"x", Placement::cpu()}};
  EXPECT_NE(a, b);
  EXPECT_TRUE(a.same_entries(b));
  b.set("x", Placement::disk());
  EXPECT_FALSE(a.same_entries(b));
}

TEST(PlanDeviceMap, BadJsonSaysWhichKey) {
  auto message_of = [](const std::string& text) {
    try {
      DeviceMap::from_json(text);
    } catch (const ferry::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(R"({"lm_head": "gpu"})").find("device map entry 'lm_head'"), std::string::npos);
  EXPECT_NE(message_of(R"({"lm_head": -1})").find("accelerator index -1 is out of range"), std::string::npos);
  EXPECT_NE(message_of(R"({"lm_head": 1.5})").find("'lm_head' must be an accelerator index"), std::string::npos);
  EXPECT_NE(message_of(R"([1, 2])").find("must be a JSON object"), std::string::npos);
  EXPECT_NE(message_of(R"({"a": )").find("invalid device map JSON"), std::string::npos);
  EXPECT_EQ(message_of(R"({"a": 0})"), "no error");
}

TEST(PlanDeviceMap, FileRoundTripAndMissingFile) {
  const std::string path = ::testing::TempDir() + "ferry_device_map_test.json";
  DeviceMap map{{"model.embed_tokens", Placement::cuda(0)}, {"lm_head", Placement::disk()}};
  map.write_json_file(path);
  EXPECT_EQ(DeviceMap::read_json_file(path), map);
  std::remove(path.c_str());
  try {
    DeviceMap::read_json_file(path);
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[DeviceMap::read_json_file] device map file: " + path + ": does not exist"),
              std::string::npos)
        << e.what();
  }
}
