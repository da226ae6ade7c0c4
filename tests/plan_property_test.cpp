// Invariants of every device map over random trees: full coverage, tied tensors together, budgets
// kept, only budgeted devices. Seeded, so a failure names a reproducible seed.
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/plan/balanced_memory.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/tied_parameters.h"
#include "plan_test_util.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <random>

using namespace ferry;

namespace {

struct RandomTree {
  ModelTree tree{"Root"};
  std::vector<TensorId> params, buffers;
  std::vector<ModuleId> finished;  // modules whose subtree is complete (safe to share: no cycle)
};

const char* kClasses[] = {"Linear", "Block", "Norm", "Seq", "Expert"};

void grow(RandomTree& r, ModuleId m, int depth, std::mt19937& rng) {
  auto coin = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const c10::ScalarType dtypes[] = {c10::ScalarType::Float, c10::ScalarType::Half, c10::ScalarType::Bool,
                                    c10::ScalarType::Long};
  int n_params = pick(0, 3);
  for (int i = 0; i < n_params; ++i) {
    std::string name = "p" + std::to_string(i);
    if (!r.params.empty() && coin(0.12)) {
      r.tree.add_param_slot(m, name, r.params[static_cast<size_t>(pick(0, static_cast<int>(r.params.size()) - 1))]);
    } else if (coin(0.05)) {
      r.tree.add_param_slot(m, name, kNoTensor);
    } else {
      std::vector<int64_t> shape{pick(1, 40)};
      if (coin(0.6)) shape.push_back(pick(1, 40));
      r.params.push_back(r.tree.add_param(m, name, shape, dtypes[pick(0, 3) == 3 && coin(0.5) ? 2 : pick(0, 1)]));
    }
  }
  int n_buffers = coin(0.3) ? pick(1, 2) : 0;
  for (int i = 0; i < n_buffers; ++i) {
    std::string name = "b" + std::to_string(i);
    if (!r.buffers.empty() && coin(0.1))
      r.tree.add_buffer_slot(m, name, r.buffers[static_cast<size_t>(pick(0, static_cast<int>(r.buffers.size()) - 1))],
                             coin(0.7));
    else
      r.buffers.push_back(r.tree.add_buffer(m, name, {pick(1, 30)}, dtypes[pick(0, 3)], coin(0.7)));
  }
  int n_children = depth >= 4 ? 0 : pick(0, depth == 0 ? 6 : 4);
  for (int i = 0; i < n_children; ++i) {
    std::string name = std::to_string(i);
    if (!r.finished.empty() && coin(0.06)) {
      r.tree.add_child(m, name, r.finished[static_cast<size_t>(pick(0, static_cast<int>(r.finished.size()) - 1))]);
      continue;
    }
    ModuleId c = r.tree.add_submodule(m, name, kClasses[pick(0, 4)]);
    grow(r, c, depth + 1, rng);
    r.finished.push_back(c);
  }
}

}  // namespace

TEST(PlanProperty, RandomTreesGetValidMaps) {
  ScopedLogCapture quiet;  // warnings are expected; keep the output readable
  int maps = 0;
  // FERRY_PLAN_SEEDS=N runs more trees (a soak); the default keeps the suite fast.
  const uint32_t seeds = std::getenv("FERRY_PLAN_SEEDS") ? static_cast<uint32_t>(std::stoul(std::getenv("FERRY_PLAN_SEEDS"))) : 300;
  for (uint32_t seed = 1; seed <= seeds; ++seed) {
    std::mt19937 rng(seed);
    RandomTree r;
    grow(r, r.tree.root(), 0, rng);
    ASSERT_NO_THROW(r.tree.validate()) << "seed " << seed;
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    const int64_t total = static_cast<int64_t>(compute_module_sizes(r.tree).bytes("")) + 1;

    PlanOptions options;
    int gpus = pick(0, 3);
    for (int g = 0; g < gpus; ++g) options.max_memory.push_back({Placement::cuda(g * 2 + pick(0, 1)), total * pick(0, 60) / 100});
    if (gpus == 0 || pick(0, 1)) options.max_memory.push_back({Placement::cpu(), total * pick(0, 80) / 100});
    if (pick(0, 1)) options.no_split.classes = {kClasses[pick(0, 4)]};
    if (pick(0, 3) == 0) options.sizes.dtype = c10::ScalarType::Half;
    options.clean_result = pick(0, 3) != 0;
    options.fallback_allocation = pick(0, 1) == 1;
    options.offload_buffers = pick(0, 1) == 1;
    std::string context = "seed " + std::to_string(seed);

    if (std::getenv("FERRY_PLAN_TRACE_SEEDS")) std::cerr << "seed " << seed << std::endl;
    if (const char* debug = std::getenv("FERRY_PLAN_DEBUG_SEED"); debug && std::stoul(debug) == seed) {
      options.verbose = [](const std::string& line) { std::cout << line << '\n'; };
      for (const auto& g : find_tied_parameters(r.tree)) {
        for (const auto& n : g) std::cout << n << ' ';
        std::cout << '\n';
      }
    }
    for (Strategy strategy : {Strategy::Sequential, Strategy::Balanced, Strategy::BalancedLow0}) {
      DeviceMap map;
      try {
        map = plan_device_map(r.tree, strategy, options);
      } catch (const std::exception& e) {
        ADD_FAILURE() << context << " " << to_string(strategy) << ": " << e.what();
        continue;
      }
      // Balanced budgets are never above the given ones, so the given budget bounds both.
      EXPECT_EQ(plan_test::validate_map(r.tree, map, get_max_memory(options.max_memory), options.sizes), "")
          << context << " " << to_string(strategy) << " map " << map.to_json();
      EXPECT_TRUE(uncovered_tensor_names(r.tree, map).empty()) << context;
      EXPECT_NO_THROW(check_device_map(r.tree, map)) << context;
      ++maps;
    }
  }
  EXPECT_EQ(maps, static_cast<int>(3 * seeds));
}

TEST(PlanProperty, ValidatorRejectsBadMaps) {
  // The validator itself must be able to fail, or the property test proves nothing.
  ModelTree tree = plan_test::model_for_test();
  MaxMemory budget{{Placement::cuda(0), 100}, {Placement::cpu(), 1000}};
  EXPECT_EQ(plan_test::validate_map(tree, DeviceMap{{"", Placement::cpu()}}, budget), "");
  EXPECT_NE(plan_test::validate_map(tree, DeviceMap{{"", Placement::cuda(0)}}, budget).find("holds 236"), std::string::npos);
  EXPECT_NE(plan_test::validate_map(tree, DeviceMap{{"linear1", Placement::cpu()}}, budget).find("has no device"),
            std::string::npos);
  EXPECT_NE(plan_test::validate_map(tree, DeviceMap{{"", Placement::cuda(1)}}, budget).find("has no budget"),
            std::string::npos);
  ModelTree tied = plan_test::model_for_test();
  tied.add_param_slot(tied.module(tied.root()).children[2].module, "extra", 0);  // linear2.extra = linear1.weight
  EXPECT_NE(plan_test::validate_map(tied, DeviceMap{{"linear1", Placement::cpu()}, {"batchnorm", Placement::cpu()},
                                                    {"linear2", Placement::disk()}}, budget)
                .find("the same tensor"),
            std::string::npos);
}
