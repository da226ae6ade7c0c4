#include "ferry/dispatch/expert_cost_probe.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>

namespace ferry {
namespace {

/// The shortest of `rounds` runs of `work`, in seconds, after one run that is not counted.
double best_seconds(int rounds, const std::function<void()>& work) {
  work();
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < rounds; ++r) {
    const auto start = std::chrono::steady_clock::now();
    work();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return std::max(best, 1e-9);
}

}  // namespace

ExpertCostModel measure_expert_cost_model(c10::Device device, c10::ScalarType dtype, int64_t hidden_size,
                                          int64_t intermediate_size) {
  FERRY_CHECK(device.type() != c10::kCPU && device.type() != c10::kMeta,
              "the expert cost model compares the CPU with an accelerator; ", device, " is not one");
  FERRY_CHECK(hidden_size > 0 && intermediate_size > 0, "an expert's sizes must be positive, got hidden ", hidden_size,
              " and intermediate ", intermediate_size);
  ExpertCostModel cost;
  cost.measured = true;
  const int64_t matrix_bytes = hidden_size * intermediate_size * static_cast<int64_t>(c10::elementSize(dtype));

  // The link: one expert's three matrices, from page-locked memory (as dispatch pins CPU weights).
  // A copy without non_blocking returns when the bytes are on the device.
  const at::Tensor host = at::empty({3 * matrix_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  host.fill_(1);
  cost.link_bytes_per_second = static_cast<double>(host.numel()) / best_seconds(3, [&] { (void)host.to(device); });

  // The CPU: a matmul over one matrix, with one token (reads the weights once) and with 64.
  const at::Tensor weight = at::randn({intermediate_size, hidden_size}, at::TensorOptions().dtype(dtype));
  const at::Tensor one = at::randn({1, hidden_size}, at::TensorOptions().dtype(dtype));
  const at::Tensor many = at::randn({64, hidden_size}, at::TensorOptions().dtype(dtype));
  cost.cpu_bytes_per_second = static_cast<double>(matrix_bytes) / best_seconds(5, [&] { (void)at::linear(one, weight); });
  cost.cpu_flops = 2.0 * 64 * static_cast<double>(hidden_size * intermediate_size) /
                   best_seconds(3, [&] { (void)at::linear(many, weight); });
  return cost;
}

}  // namespace ferry
