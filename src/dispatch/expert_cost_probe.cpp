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
  FERRY_CHECK(device.type() != c10::kMeta, "the expert cost model needs a real device, not ", device);
  FERRY_CHECK(hidden_size > 0 && intermediate_size > 0, "an expert's sizes must be positive, got hidden ", hidden_size,
              " and intermediate ", intermediate_size);
  ExpertCostModel cost;
  cost.measured = true;
  const int64_t matrix_bytes = hidden_size * intermediate_size * static_cast<int64_t>(c10::elementSize(dtype));

  // The link: one expert's three matrices, from page-locked memory (as dispatch pins CPU weights).
  // A copy without non_blocking returns when the bytes are on the device.
  if (!device.is_cpu()) {
    const at::Tensor host = at::empty({3 * matrix_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    host.fill_(1);
    cost.link_bytes_per_second = static_cast<double>(host.numel()) / best_seconds(3, [&] { (void)host.to(device); });
  }

  // The CPU: experts of these sizes (Mixtral's w2(silu(w1 x) * w3 x)) run with 1 token and with 64,
  // each time over several that together outgrow the caches (64 MiB), as a model's experts do
  // between two uses of one of them (one expert timed again and again is read from the cache,
  // several times faster). A line through the two times, t(n) = read + n * compute, gives the
  // figures: the weights' bytes over `read`, the expert's FLOPs per token over `compute`.
  const auto options = at::TensorOptions().dtype(dtype);
  const int64_t expert_bytes = 3 * matrix_bytes;
  const int64_t count = std::max<int64_t>(2, ((int64_t{64} << 20) + expert_bytes - 1) / expert_bytes);
  const at::Tensor up = at::full({count, 2, intermediate_size, hidden_size}, 0.01, options);  // w1, w3
  const at::Tensor down = at::full({count, hidden_size, intermediate_size}, 0.01, options);   // w2
  auto per_expert = [&](int64_t tokens) {
    const at::Tensor x = at::full({tokens, hidden_size}, 0.5, options);
    return best_seconds(3, [&] {
             for (int64_t e = 0; e < count; ++e)
               (void)at::linear(at::silu(at::linear(x, up[e][0])) * at::linear(x, up[e][1]), down[e]);
           }) /
           static_cast<double>(count);
  };
  const double one = per_expert(1), many = per_expert(64);
  // Noise can tilt the line; neither part may vanish.
  const double compute = std::max((many - one) / 63.0, many / 64.0 * 0.1);
  const double read = std::max(one - compute, one * 0.1);
  cost.cpu_bytes_per_second = static_cast<double>(expert_bytes) / read;
  cost.cpu_flops = 2.0 * static_cast<double>(3 * hidden_size * intermediate_size) / compute;
  return cost;
}

}  // namespace ferry
