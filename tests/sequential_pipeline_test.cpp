// SequentialPipeline (ferry/distributed/sequential_pipeline.h): a group of one rank runs the whole
// Sequential; ranks in threads of this process (each its own Gloo group on loopback) run inputs in
// flight; bad stages or inputs are refused with what to do. The runs across processes are
// ModelsCli.LaunchRunsAProgramOfOnesOwnAsAPipeline (examples/pipeline_example.cpp).
#include "ferry/distributed/sequential_pipeline.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

using namespace ferry;
using ferry_test::error_of;

TEST(SequentialPipeline, OneRankRunsTheWholeModelAndBadStagesAreRefused) {
  DistributedEnv env;
  env.master_addr = "127.0.0.1";
  env.master_port = 29600 + static_cast<int>(::getpid() % 300);
  env.timeout = std::chrono::seconds(10);
  auto group = std::make_shared<ProcessGroup>(ProcessGroup::connect(env));
  at::manual_seed(0);
  auto model = std::make_shared<Sequential>();
  model->push_back(std::make_shared<Linear>(8, 8));
  model->push_back(std::make_shared<Linear>(8, 3));

  SequentialPipeline pipeline(model, group, split_stages(2, 1)[0]);
  const at::Tensor x = at::randn({2, 8});
  EXPECT_TRUE(at::equal(pipeline.forward(x), (*model)(x)));
  EXPECT_EQ(pipeline.bytes_sent(), 0) << "one rank sends nothing";

  EXPECT_NE(error_of([&] { (void)SequentialPipeline(model, group, PipelineStage{0, 1, 0, 3}); })
                .find("rank 0's stage, children [0, 3), is not within the model's 2 children"),
            std::string::npos);
  EXPECT_NE(error_of([&] { (void)SequentialPipeline(model, group, split_stages(2, 2)[0]); })
                .find("the process group (rank 0 of 1) does not match the stage (rank 0 of 2)"),
            std::string::npos);
  const std::string undefined = error_of([&] { pipeline.forward(at::Tensor()); });
  EXPECT_NE(undefined.find("step 1: "), std::string::npos) << undefined;
  EXPECT_NE(undefined.find("rank 0's input 0 to SequentialPipeline::forward is undefined"), std::string::npos) << undefined;
}

namespace {

// Runs `body(rank, group)` for ranks 0 .. world - 1, each in a thread of this process with a
// ProcessGroup of its own (real Gloo connections on loopback); returns each rank's error ("" when
// it returned).
std::vector<std::string> run_ranks(int world, const std::function<void(int, std::shared_ptr<ProcessGroup>)>& body,
                                   std::chrono::seconds timeout = std::chrono::seconds(10)) {
  const int port = 29900 + static_cast<int>(::getpid() % 90) * 3 + world;
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank)
    threads.emplace_back([&, rank] {
      DistributedEnv env;
      env.rank = rank;
      env.world_size = world;
      env.master_addr = "127.0.0.1";
      env.master_port = port;
      env.timeout = timeout;
      try {
        body(rank, std::make_shared<ProcessGroup>(ProcessGroup::connect(env)));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

std::shared_ptr<Sequential> blocks(int n) {
  at::manual_seed(1);
  auto model = std::make_shared<Sequential>();
  for (int i = 0; i < n; ++i) model->push_back(std::make_shared<Linear>(16, 16));
  return model;
}

}  // namespace

// Inputs in flight over 2 and 3 ranks give, on every rank and in order, what the whole model gives
// each input in one process (and what forward() gives one by one).
TEST(SequentialPipeline, InputsInFlightGiveEveryRankTheWholeModelsOutputs) {
  const auto model = blocks(5);
  std::vector<at::Tensor> inputs;
  for (int i = 0; i < 4; ++i) inputs.push_back(at::randn({3, 16}));
  std::vector<at::Tensor> want;
  for (const auto& x : inputs) want.push_back((*model)(x));
  for (int world : {2, 3}) {
    std::vector<std::vector<at::Tensor>> got(static_cast<size_t>(world)), one_by_one(static_cast<size_t>(world));
    std::vector<int64_t> sent(static_cast<size_t>(world));
    const auto errors = run_ranks(world, [&](int rank, std::shared_ptr<ProcessGroup> group) {
      SequentialPipeline pipeline(model, group, split_stages(5, world)[static_cast<size_t>(rank)]);
      const std::vector<at::Tensor> mine = rank == 0 ? inputs : std::vector<at::Tensor>(inputs.size());
      got[rank] = pipeline.forward_in_flight(mine);
      for (const auto& x : mine) one_by_one[rank].push_back(pipeline.forward(x));
      sent[rank] = pipeline.bytes_sent();
    });
    for (int rank = 0; rank < world; ++rank) {
      ASSERT_EQ(errors[rank], "") << "rank " << rank << " of " << world;
      ASSERT_EQ(got[rank].size(), inputs.size());
      for (size_t i = 0; i < inputs.size(); ++i) {
        EXPECT_TRUE(at::allclose(got[rank][i], want[i], 0, 1e-6)) << "rank " << rank << " of " << world << ", input " << i;
        EXPECT_TRUE(at::equal(got[rank][i], one_by_one[rank][i])) << "rank " << rank << " of " << world << ", input " << i;
      }
    }
    // Rank 0 sends each input's [3, 16] floats once per pass (and a header of 11 int64 each); the
    // last rank sends each output to every other rank.
    const int64_t message = 3 * 16 * 4 + 11 * 8;
    EXPECT_EQ(sent[0], 2 * 4 * message);
    EXPECT_EQ(sent[world - 1], 2 * 4 * message * (world - 1));
  }
}

// Ranks that disagree on the number of inputs in flight say so, naming both counts, rather than
// mixing one call's inputs with another's; an empty call is refused.
TEST(SequentialPipeline, RanksWithDifferentNumbersOfInputsAreRefused) {
  const auto model = blocks(2);
  const auto errors = run_ranks(2, [&](int rank, std::shared_ptr<ProcessGroup> group) {
    SequentialPipeline pipeline(model, group, split_stages(2, 2)[static_cast<size_t>(rank)]);
    EXPECT_NE(error_of([&] { pipeline.forward_in_flight({}); }).find("needs at least one input"), std::string::npos);
    (void)pipeline.forward_in_flight(std::vector<at::Tensor>(rank == 0 ? 3 : 2, at::randn({1, 16})));
  });
  EXPECT_NE(errors[1].find("step 0: rank 1 runs 2 input(s) in flight and rank 0 runs 3: every rank must call "
                           "forward_in_flight with as many inputs as rank 0"),
            std::string::npos)
      << errors[1];
  EXPECT_NE(errors[0], "") << "rank 0 goes on waiting for outputs that never come, until its group fails";
  EXPECT_NE(errors[0].find("rank 1"), std::string::npos) << errors[0];
}

// A rank that leaves, or stops taking messages, while inputs are in flight: the other's
// forward_in_flight fails within about one timeout (not one per pending send), naming the rank
// and the step.
TEST(SequentialPipeline, ALostRankStopsInputsInFlightWithinTheTimeout) {
  const auto model = blocks(2);
  for (const bool stuck : {false, true}) {
    SCOPED_TRACE(stuck ? "rank 1 stuck" : "rank 1 gone");
    std::chrono::duration<double> took{};
    const auto errors = run_ranks(
        2,
        [&](int rank, std::shared_ptr<ProcessGroup> group) {
          if (rank == 1) {  // connected, then gone (its group closes) or asleep
            if (stuck) std::this_thread::sleep_for(std::chrono::seconds(5));
            return;
          }
          SequentialPipeline pipeline(model, group, split_stages(2, 2)[0]);
          const auto start = std::chrono::steady_clock::now();
          try {
            (void)pipeline.forward_in_flight(std::vector<at::Tensor>(8, at::randn({64, 16})));
          } catch (...) {
            took = std::chrono::steady_clock::now() - start;
            throw;
          }
        },
        std::chrono::seconds(2));
    EXPECT_EQ(errors[1], "");
    EXPECT_NE(errors[0].find("[SequentialPipeline::forward] step "), std::string::npos) << errors[0];
    EXPECT_NE(errors[0].find("rank 1"), std::string::npos) << errors[0];
    EXPECT_LT(took.count(), 4.5) << "a timeout of 2 s with 16 sends (8 inputs) pending";
  }
}
