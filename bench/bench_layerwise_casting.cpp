// bench_layerwise_casting [--layers N] [--width W]
//
// Memory and speed of layerwise casting on a >= 1 GB float32 stack of Linear layers: resident
// float32 versus weights stored in bfloat16 (and float16) and cast to float32 for each layer's
// forward. Prints the bytes the parameters occupy (exact) and the process RSS after each step.

#include "ferry/core/byte_size.h"
#include "ferry/hooks/layerwise_casting_hook.h"
#include "ferry/hooks/model_hook.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

using namespace ferry;

namespace {

int64_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

int64_t parameter_bytes(Module& m) {
  int64_t n = 0;
  for (auto& [name, t] : m.named_parameters()) n += t.numel() * t.element_size();
  return n;
}

double forward_ms(Module& m, const at::Tensor& x, int reps) {
  c10::NoGradGuard no_grad;
  m(x);  // warm-up
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) m(x);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 16, width = 4096;
  for (int i = 1; i + 1 < argc; ++i) {
    std::string a = argv[i];
    if (a == "--layers") layers = std::stoll(argv[++i]);
    else if (a == "--width") width = std::stoll(argv[++i]);
  }
  at::manual_seed(0);
  at::Tensor x = at::randn({4, width});
  std::printf("| storage | parameter bytes | process RSS | forward ms (batch 4) | max abs diff vs float32 |\n|---|---|---|---|---|\n");
  at::Tensor reference;
  for (auto storage : {at::kFloat, at::kBFloat16, at::kHalf}) {
    at::manual_seed(42);  // the same weights for every storage dtype
    auto model = std::make_shared<Sequential>();
    for (int64_t i = 0; i < layers; ++i) model->push_back(std::make_shared<Linear>(width, width, false));
    if (storage != at::kFloat) attach_layerwise_casting_hooks(*model, storage, at::kFloat);
    int64_t rss = rss_kib();
    double ms = forward_ms(*model, x, 3);
    at::Tensor out;
    {
      c10::NoGradGuard no_grad;
      at::manual_seed(1);
      out = (*model)(x);
    }
    if (storage == at::kFloat) reference = out;
    std::printf("| %s | %s | %s | %.1f | %.3g |\n", c10::toString(storage), format_bytes(double(parameter_bytes(*model))).c_str(),
                format_bytes(double(rss) * 1024).c_str(), ms, (out - reference).abs().max().item<double>());
  }
  return 0;
}
