// Benchmark: the cost of a do-nothing ModelHook on a module call.
//
//   ./build/bench_hooks [--modules N] [--rounds R] [--linear]
//
// N leaf modules (an identity module, or Linear(4,4) with --linear) are called one after the
// other, R rounds, alternating between a set with a do-nothing ModelHook attached to each module
// and an identical set without hooks, in the same run. Per-call time = round time / N; the
// overhead is median(hooked) - median(unhooked). Goal: < 0.5 us per hooked call.

#include "ferry/hooks/model_hook.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace {

// Returns its input: the call machinery is all that is measured.
class Identity : public ferry::Module {
 public:
  Identity() : Module("Identity") {}
  c10::IValue forward(ferry::Args& args) override { return args.positional[0]; }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// One round: every module once, in order; returns microseconds per call.
double round_us(std::vector<std::shared_ptr<ferry::Module>>& modules, const at::Tensor& x) {
  auto start = std::chrono::steady_clock::now();
  for (auto& m : modules) {
    at::Tensor y = (*m)(x);
    if (!y.defined()) std::abort();
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s * 1e6 / static_cast<double>(modules.size());
}

}  // namespace

int main(int argc, char** argv) {
  int n = 1000, rounds = 2000;
  bool linear = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--modules" && i + 1 < argc) n = std::max(1, std::atoi(argv[++i]));
    else if (a == "--rounds" && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    else if (a == "--linear") linear = true;
    else {
      std::fprintf(stderr, "usage: %s [--modules N] [--rounds R] [--linear]\n", argv[0]);
      return 2;
    }
  }
  at::set_num_threads(1);
  auto make = [&]() -> std::shared_ptr<ferry::Module> {
    if (linear) return std::make_shared<ferry::Linear>(4, 4);
    return std::make_shared<Identity>();
  };
  std::vector<std::shared_ptr<ferry::Module>> plain, hooked;
  for (int i = 0; i < n; ++i) {
    plain.push_back(make());
    hooked.push_back(make());
    ferry::add_hook_to_module(*hooked.back(), std::make_shared<ferry::ModelHook>());
  }
  at::Tensor x = at::randn({1, 4});
  for (int w = 0; w < 20; ++w) {  // warm-up
    round_us(plain, x);
    round_us(hooked, x);
  }
  std::vector<double> plain_us, hooked_us;
  for (int r = 0; r < rounds; ++r) {
    // Alternate the order so that neither set always runs second.
    if (r % 2) {
      plain_us.push_back(round_us(plain, x));
      hooked_us.push_back(round_us(hooked, x));
    } else {
      hooked_us.push_back(round_us(hooked, x));
      plain_us.push_back(round_us(plain, x));
    }
  }
  double p = median(plain_us), h = median(hooked_us);
  double overhead = h - p;
  const char* kind = linear ? "Linear(4,4)" : "identity";
  std::printf("%d %s leaf modules, %d rounds (median per call): un-hooked %.4f us, hooked %.4f us\n", n, kind, rounds,
              p, h);
  std::printf("SUMMARY bench_hooks: do-nothing ModelHook overhead %.4f us per call on %s modules (goal < 0.5 us) -> %s\n",
              overhead, kind, overhead < 0.5 ? "PASS" : "FAIL");
  return overhead < 0.5 ? 0 : 1;
}
