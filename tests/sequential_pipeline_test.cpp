// SequentialPipeline (ferry/distributed/sequential_pipeline.h) in one process: a group of one rank
// runs the whole Sequential, and bad stages or inputs are refused with what to do. The runs across
// processes are ModelsCli.LaunchRunsAProgramOfOnesOwnAsAPipeline (examples/pipeline_example.cpp).
#include "ferry/distributed/sequential_pipeline.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

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
  EXPECT_NE(undefined.find("rank 0's input to SequentialPipeline::forward is undefined"), std::string::npos) << undefined;
}
