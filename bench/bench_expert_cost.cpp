// bench_expert_cost [--hidden 1024] [--intermediate 1024] [--dtype float32] [--rounds 5] [--experts 16]
//
// How well the expert cost model (ferry/plan/expert_cost_model.h) predicts, and what its choice is
// worth. It measures the model's figures the way `ferry run` does at load
// (measure_expert_cost_model), then times real experts (Mixtral's: w2(silu(w1 x) * w3 x), random
// weights of the given sizes, a pool of --experts used in turn so that each is read from RAM as in
// a model) on the CPU for 1 to 512 tokens, and prints, per token count,
// the measured and predicted CPU time. With a CUDA device it also times what the other policy
// does (the expert's three weights copied from page-locked RAM to the GPU and run there), prints
// which one the model chose and which was faster, and the time of auto, compute and copy over a
// mixed load (one 512-token prompt call, then 64 one-token decode calls). Rounds are interleaved;
// medians shown. Defaults: the experts of bench/make_big_moe.py (12 MiB in float32).

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/dispatch/expert_cost_probe.h"
#include "ferry/plan/expert_cost_model.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include "bench_util.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

using namespace ferry;
using ferry::bench::median;
using ferry::bench::now;

namespace {

struct Expert {
  at::Tensor w1, w2, w3;  // [intermediate, hidden], [hidden, intermediate], [intermediate, hidden]
  at::Tensor operator()(const at::Tensor& x) const {
    return at::linear(at::silu(at::linear(x, w1)) * at::linear(x, w3), w2);
  }
  Expert to(c10::Device device, bool non_blocking = false) const {
    return {w1.to(device, non_blocking), w2.to(device, non_blocking), w3.to(device, non_blocking)};
  }
  int64_t bytes() const { return (w1.numel() + w2.numel() + w3.numel()) * static_cast<int64_t>(w1.element_size()); }
};

void sync_if_cuda(c10::Device device) {
  if (device.is_cuda()) (void)at::empty({1}, at::TensorOptions().device(device)).cpu();  // waits for the stream
}

}  // namespace

int main(int argc, char** argv) try {
  int64_t hidden = 1024, intermediate = 1024;
  int rounds = 5, experts = 16;
  std::string dtype_text = "float32";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--hidden") hidden = std::stoll(value);
    else if (flag == "--intermediate") intermediate = std::stoll(value);
    else if (flag == "--dtype") dtype_text = value;
    else if (flag == "--rounds") rounds = std::stoi(value);
    else if (flag == "--experts") experts = std::stoi(value);
    else FERRY_FAIL("unknown flag '", flag, "'; see the comment at the top of bench/bench_expert_cost.cpp");
  }
  const c10::ScalarType dtype = parse_dtype(dtype_text);
  FERRY_CHECK(at::isFloatingType(dtype), "--dtype must be a floating-point type (float32, bfloat16, float16), got ",
              dtype_text);
  c10::NoGradGuard no_grad;
  const bool cuda = at::hasCUDA();
  const c10::Device gpu = cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  const auto options = at::TensorOptions().dtype(dtype);
  // A pool of experts used in turn, as a layer's experts are: each is read from RAM, not from the caches.
  std::vector<Expert> pool;
  for (int e = 0; e < experts; ++e) {
    Expert x{at::randn({intermediate, hidden}, options) * 0.02, at::randn({hidden, intermediate}, options) * 0.02,
             at::randn({intermediate, hidden}, options) * 0.02};
    if (cuda) x = Expert{x.w1.pin_memory(), x.w2.pin_memory(), x.w3.pin_memory()};
    pool.push_back(std::move(x));
  }
  size_t turn = 0;
  auto next = [&]() -> const Expert& { return pool[turn++ % pool.size()]; };
  const int64_t bytes = pool[0].bytes(), element = static_cast<int64_t>(c10::elementSize(dtype));

  ExpertCostModel cost = measure_expert_cost_model(gpu, dtype, hidden, intermediate);
  std::printf("expert: hidden %lld, intermediate %lld, %s, %.1f MiB; %d CPU threads; %s\n", static_cast<long long>(hidden),
              static_cast<long long>(intermediate), dtype_text.c_str(), bytes / 1048576.0, at::get_num_threads(),
              cuda ? "CUDA device 0" : "no CUDA device: the CPU side only");
  std::printf("cost model: %s\n", cost.describe().c_str());

  const std::vector<int64_t> token_counts = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  std::map<int64_t, std::vector<double>> cpu_s, copy_s;
  for (int r = 0; r < rounds; ++r) {
    for (int64_t n : token_counts) {
      const at::Tensor x = at::randn({n, hidden}, options);
      double t = now();
      (void)next()(x);
      cpu_s[n].push_back(now() - t);
      if (!cuda) continue;
      // Accelerate's way: the hidden states are on the GPU already; the weights come over, it runs there.
      const at::Tensor xg = x.to(gpu);
      sync_if_cuda(gpu);
      t = now();
      (void)next().to(gpu, /*non_blocking=*/true)(xg);
      sync_if_cuda(gpu);
      copy_s[n].push_back(now() - t);
    }
  }
  // The CPU-side prediction leaves out the link (the activations' trip), which is measured separately.
  ExpertCostModel cpu_only = cost;
  cpu_only.link_bytes_per_second = 1e30;
  std::printf("\n| tokens | CPU measured ms | CPU predicted ms | predicted/measured |%s\n",
              cuda ? " copy+GPU measured ms | model chose | faster |" : "");
  std::printf("|---:|---:|---:|---:|%s\n", cuda ? "---:|---|---|" : "");
  for (int64_t n : token_counts) {
    const double measured = median(cpu_s[n]);
    const double predicted = cpu_only.seconds_on_cpu(bytes, element, hidden, n);
    std::printf("| %lld | %.3f | %.3f | %.2f |", static_cast<long long>(n), measured * 1e3, predicted * 1e3,
                predicted / measured);
    if (cuda) {
      const double copied = median(copy_s[n]);
      std::printf(" %.3f | %s | %s |", copied * 1e3, cost.runs_on_cpu(bytes, element, hidden, n) ? "CPU" : "copy",
                  measured < copied ? "CPU" : "copy");
    }
    std::printf("\n");
  }
  std::printf("\nmodel's break-even: %lld tokens\n", static_cast<long long>(cost.max_tokens_on_cpu(bytes, element, hidden)));
  if (cuda) {
    // A mixed load: one 512-token call (a prompt) and 64 one-token calls (decoding), per policy.
    auto mixed = [&](const char* policy) {
      std::vector<int64_t> calls(64, 1);
      calls.insert(calls.begin(), 512);
      double total = 0;
      for (int64_t n : calls) {
        const bool on_cpu = std::string(policy) == "compute" ||
                            (std::string(policy) == "auto" && cost.runs_on_cpu(bytes, element, hidden, n));
        total += on_cpu ? median(cpu_s[n]) : median(copy_s[n]);
      }
      return total;
    };
    std::printf("mixed load (1 x 512 tokens + 64 x 1 token), from the medians: auto %.2f ms, compute %.2f ms, copy %.2f ms\n",
                mixed("auto") * 1e3, mixed("compute") * 1e3, mixed("copy") * 1e3);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_expert_cost: %s\n", e.what());
  return 1;
}
