// Benchmark: constructing a Llama-3-70B-shaped skeleton under init_empty_weights.
//
//   ./build/bench_init_empty [--repeats N] [--no-baseline]
//
// Builds LlamaForCausalLM with Llama-3-70B's shapes (80 layers, hidden 8192, intermediate 28672,
// 64 heads, 8 KV heads, vocab 128256, bfloat16) from ferry's standard layers, and reports the
// construction time (median of N builds), the resident memory it costs (VmRSS delta while the
// model is alive; VmHWM, the process peak, from /proc/self/status) and the parameter count.
// Baseline, same run: one decoder layer built for real (allocated and initialised), its time
// scaled by parameter count to the whole model. Goals: < 0.5 s and < 100 MB.

#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Config {
  int64_t layers = 80, hidden = 8192, intermediate = 28672, heads = 64, kv_heads = 8, vocab = 128256;
  c10::ScalarType dtype = at::kBFloat16;
  int64_t head_dim() const { return hidden / heads; }
};

class LlamaAttention : public ferry::Module {
 public:
  explicit LlamaAttention(const Config& c) : Module("LlamaAttention") {
    int64_t kv = c.kv_heads * c.head_dim();
    register_module("q_proj", std::make_shared<ferry::Linear>(c.hidden, c.heads * c.head_dim(), false, c.dtype));
    register_module("k_proj", std::make_shared<ferry::Linear>(c.hidden, kv, false, c.dtype));
    register_module("v_proj", std::make_shared<ferry::Linear>(c.hidden, kv, false, c.dtype));
    register_module("o_proj", std::make_shared<ferry::Linear>(c.heads * c.head_dim(), c.hidden, false, c.dtype));
  }
};

class LlamaMLP : public ferry::Module {
 public:
  explicit LlamaMLP(const Config& c) : Module("LlamaMLP") {
    register_module("gate_proj", std::make_shared<ferry::Linear>(c.hidden, c.intermediate, false, c.dtype));
    register_module("up_proj", std::make_shared<ferry::Linear>(c.hidden, c.intermediate, false, c.dtype));
    register_module("down_proj", std::make_shared<ferry::Linear>(c.intermediate, c.hidden, false, c.dtype));
  }
};

class LlamaDecoderLayer : public ferry::Module {
 public:
  explicit LlamaDecoderLayer(const Config& c) : Module("LlamaDecoderLayer") {
    register_module("self_attn", std::make_shared<LlamaAttention>(c));
    register_module("mlp", std::make_shared<LlamaMLP>(c));
    register_module("input_layernorm", std::make_shared<ferry::RMSNorm>(c.hidden, 1e-5, c.dtype));
    register_module("post_attention_layernorm", std::make_shared<ferry::RMSNorm>(c.hidden, 1e-5, c.dtype));
  }
};

class LlamaModel : public ferry::Module {
 public:
  explicit LlamaModel(const Config& c) : Module("LlamaModel") {
    register_module("embed_tokens", std::make_shared<ferry::Embedding>(c.vocab, c.hidden, c.dtype));
    auto layers = register_module("layers", std::make_shared<ferry::ModuleList>());
    for (int64_t i = 0; i < c.layers; ++i) layers->push_back(std::make_shared<LlamaDecoderLayer>(c));
    register_module("norm", std::make_shared<ferry::RMSNorm>(c.hidden, 1e-5, c.dtype));
  }
};

class LlamaForCausalLM : public ferry::Module {
 public:
  explicit LlamaForCausalLM(const Config& c) : Module("LlamaForCausalLM") {
    register_module("model", std::make_shared<LlamaModel>(c));
    register_module("lm_head", std::make_shared<ferry::Linear>(c.hidden, c.vocab, false, c.dtype));
  }
};

// A field of /proc/self/status in kB ("VmRSS", "VmHWM"); -1 if unavailable.
long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::stol(line.substr(n + 1));
  return -1;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t count_parameters(ferry::Module& m) {
  int64_t n = 0;
  for (const auto& [name, t] : m.named_parameters()) n += t.numel();
  return n;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 7;
  bool baseline = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--repeats" && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
    else if (a == "--no-baseline") baseline = false;
    else {
      std::fprintf(stderr, "usage: %s [--repeats N] [--no-baseline]\n", argv[0]);
      return 2;
    }
  }
  Config config;
  at::empty({1});  // load LibTorch's lazily initialised state before measuring

  // First build: memory while the model is alive.
  long rss_before = status_kb("VmRSS");
  auto start = std::chrono::steady_clock::now();
  std::shared_ptr<LlamaForCausalLM> model;
  {
    auto guard = ferry::init_empty_weights();
    model = std::make_shared<LlamaForCausalLM>(config);
  }
  double first_s = seconds_since(start);
  long rss_after = status_kb("VmRSS");
  long hwm = status_kb("VmHWM");
  int64_t params = count_parameters(*model);
  size_t tensors = model->named_parameters().size();
  bool all_meta = true;
  for (const auto& [name, t] : model->state_dict()) all_meta = all_meta && t.is_meta();

  // Repeated builds for a stable time.
  std::vector<double> times{first_s};
  for (int r = 1; r < repeats; ++r) {
    auto s = std::chrono::steady_clock::now();
    auto guard = ferry::init_empty_weights();
    auto other = std::make_shared<LlamaForCausalLM>(config);
    times.push_back(seconds_since(s));
  }
  double build_s = median(times);
  double rss_mb = (rss_after - rss_before) / 1024.0;

  std::printf("model: LlamaForCausalLM, Llama-3-70B shapes (%lld layers, hidden %lld, intermediate %lld, %lld heads, "
              "%lld KV heads, vocab %lld, bfloat16)\n",
              (long long)config.layers, (long long)config.hidden, (long long)config.intermediate,
              (long long)config.heads, (long long)config.kv_heads, (long long)config.vocab);
  std::printf("parameters: %.3fe9 in %zu tensors, all on meta: %s\n", params / 1e9, tensors, all_meta ? "yes" : "NO");
  std::printf("construction under init_empty_weights: median %.4f s of %d builds (first %.4f s)\n", build_s, repeats,
              first_s);
  std::printf("resident memory: VmRSS delta %.2f MB while the model is alive; process VmHWM %.1f MB\n", rss_mb,
              hwm / 1024.0);

  double scaled_s = -1;
  if (baseline) {
    // Baseline: one decoder layer allocated and initialised for real, scaled to the model.
    Config one = config;
    one.layers = 1;
    auto s = std::chrono::steady_clock::now();
    auto layer = std::make_shared<LlamaDecoderLayer>(one);
    double layer_s = seconds_since(s);
    int64_t layer_params = count_parameters(*layer);
    scaled_s = layer_s * static_cast<double>(params) / static_cast<double>(layer_params);
    std::printf("baseline: one decoder layer built for real (%.3fe9 parameters, %.2f GB bf16) in %.3f s; scaled to "
                "the whole model: %.1f s and %.1f GB\n",
                layer_params / 1e9, layer_params * 2 / 1e9, layer_s, scaled_s, params * 2 / 1e9);
  }
  bool ok = build_s < 0.5 && rss_mb < 100 && all_meta;
  std::printf("SUMMARY bench_init_empty: %.3fe9 params built in %.4f s (goal < 0.5 s), %.2f MB resident (goal < 100 "
              "MB)%s -> %s\n",
              params / 1e9, build_s, rss_mb,
              scaled_s >= 0 ? (", real-allocation baseline ~" + std::to_string(static_cast<int>(scaled_s)) + " s")
                                  .c_str()
                            : "",
              ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
