// ferry demo: a deterministic tiny Llama, written with ferry's own safetensors writer, run resident
// and again under a memory budget that sends part of it to disk; both must give the same tokens.

#include "commands.h"
#include "interrupt.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>

namespace ferry::cli {
namespace {

using namespace ferry::models;
namespace fs = std::filesystem;

struct DemoOptions {
  std::string dir;
  bool keep = false;
  int64_t max_new_tokens = 16;
};

ModelConfig demo_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 1000;
  c.hidden_size = 128;
  c.intermediate_size = 344;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 256;
  c.norm_eps = 1e-6;
  c.sliding_layers.assign(6, false);
  c.eos_token_ids = {};  // run every requested token
  return c;
}

// Writes the demo checkpoint: weights normal(0, 0.08) from a fixed seed, norms near 1, 1 MB shards.
uint64_t write_checkpoint(const std::string& dir) {
  auto model = create_model(demo_config());
  at::manual_seed(20240601);
  c10::NoGradGuard no_grad;
  uint64_t bytes = 0;
  for (auto& [name, t] : model->named_parameters()) {
    if (name.find("norm") != std::string::npos)
      t.copy_(1.0 + 0.05 * at::randn(t.sizes()));
    else
      t.copy_(0.08 * at::randn(t.sizes()));
    bytes += t.numel() * t.element_size();
  }
  save_pretrained(*model, dir, 1 << 20);
  return bytes;
}

struct Run {
  LoadedModel loaded;
  GenerationOutput out;
};

Run run_once(const std::string& dir, const LoadModelOptions& o, const at::Tensor& ids, int64_t max_new_tokens) {
  Run r;
  r.loaded = load_model(dir, o);
  GenerationConfig g;
  g.max_new_tokens = max_new_tokens;
  g.on_step = [](int64_t, const at::Tensor&) { throw_if_interrupted(); };  // Ctrl-C: clean up, then stop
  r.out = generate(*r.loaded.model, ids, g);
  return r;
}

void print_run(const char* title, const Run& r) {
  std::cout << title << "\n  placement:";
  for (const auto& [p, b] : r.loaded.bytes_per_placement) std::cout << "  " << p.str() << " " << format_bytes(static_cast<double>(b));
  std::cout << "\n";
  if (r.loaded.device_map.size() > 1) std::cout << "  device map: " << r.loaded.device_map.to_json() << "\n";
  double decode_ms = r.out.decode_steps ? 1000 * r.out.decode_seconds / r.out.decode_steps : 0;
  std::printf("  load %.3f s, prefill %.3f s, decode %.2f ms/token, offloaded bytes per forward %s\n",
              r.loaded.load_seconds, r.out.prefill_seconds, decode_ms,
              format_bytes(static_cast<double>(r.loaded.offloaded_bytes_per_forward)).c_str());
  for (int64_t b = 0; b < r.out.sequences.size(0); ++b) {
    std::cout << "  tokens[" << b << "]:";
    for (int64_t i = 0; i < r.out.sequences.size(1); ++i) std::cout << " " << r.out.sequences[b][i].item<int64_t>();
    std::cout << "\n";
  }
}

void demo(const DemoOptions& o) {
  auto start = std::chrono::steady_clock::now();
  std::string dir = o.dir;
  bool made_temp = dir.empty();
  if (made_temp) {
    std::random_device rd;
    dir = (fs::temp_directory_path() / ("ferry_demo_" + std::to_string(rd()))).string();
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  FERRY_CHECK(!ec, "cannot create the demo folder ", dir, ": ", ec.message());
  install_interrupt_handlers();  // the first Ctrl-C unwinds through Cleanup below
  struct Cleanup {
    std::string dir;
    bool active;
    ~Cleanup() {
      std::error_code ec;
      if (active) fs::remove_all(dir, ec);
    }
  } cleanup{dir, made_temp && !o.keep};

  uint64_t bytes = write_checkpoint(dir);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().extension() == ".safetensors";
  std::cout << "ferry demo: wrote a tiny Llama (6 layers, hidden 128, GQA 4/2 heads, vocab 1000), "
            << format_bytes(static_cast<double>(bytes)) << " in " << files << " safetensors shards, to " << dir << "\n";

  at::Tensor ids = at::tensor({1, 17, 42, 99, 256, 512, 7, 3, 800, 64, 5, 11, 13, 21, 34, 55}, at::kLong).view({2, 8});
  Run resident = run_once(dir, {}, ids, o.max_new_tokens);
  print_run("resident (everything in CPU RAM):", resident);

  LoadModelOptions off;
  int64_t budget = static_cast<int64_t>(bytes * 0.4);
  off.device_map = "auto";
  off.max_memory = "cpu=" + std::to_string(budget);
  std::cout << "offloaded: device_map=auto, max_memory cpu=" << format_bytes(static_cast<double>(budget))
            << " (40% of the model; the rest stays on disk, read in place from the checkpoint)\n";
  Run offloaded = run_once(dir, off, ids, o.max_new_tokens);
  print_run("offloaded (CPU + disk):", offloaded);

  bool same = at::equal(resident.out.sequences, offloaded.out.sequences);
  bool has_disk = false;
  for (const auto& [p, b] : offloaded.loaded.bytes_per_placement) has_disk = has_disk || (p.is_disk() && b > 0);
  double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: resident and offloaded runs %s (%.2f s in all)\n", same ? "OK" : "MISMATCH",
              same ? "give the same tokens" : "DISAGREE", total);
  FERRY_CHECK(same, "the offloaded run's tokens differ from the resident run's: this is a bug in ferry");
  FERRY_CHECK(has_disk, "the budget did not force any weights to disk: this is a bug in the demo");
  if (!made_temp || o.keep) std::cout << "checkpoint kept in " << dir << "\n";
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand("demo", kDemoDescription);
  cmd->add_option("--dir", o->dir, "Write the checkpoint here (kept) instead of a temporary folder");
  cmd->add_flag("--keep", o->keep, "Keep the temporary checkpoint folder");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate (default 16)");
  cmd->callback([o] { demo(*o); });
}

}  // namespace ferry::cli
