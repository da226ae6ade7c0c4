// Peak host memory of load_checkpoint_in_model on a generated >= 2 GiB sharded checkpoint.
//
//   ./build/bench/bench_load_checkpoint [GiB=2] [folder=/tmp/ferry_bench_load_<pid>]
//
// Generates a sharded safetensors checkpoint of 128 MiB float32 layers (4 per shard), builds the
// matching model on the meta device, and loads it twice with a quarter of the layers on the CPU and
// the rest on disk: (a) disk weights read in place (ferry's default), (b) disk weights copied to an
// Accelerate offload folder. For each it prints the peak RSS (VmHWM, reset before each load through
// /proc/self/clear_refs) above the RSS before loading, next to the budget "largest shard + CPU-placed
// bytes". All generated files are deleted at the end.

#include "ferry/core/byte_size.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module_tensors.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

constexpr int64_t kRows = 8192, kCols = 4096;  // 128 MiB of float32 per layer
constexpr int kLayersPerShard = 4;

int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  return -1;
}

bool reset_peak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  return static_cast<bool>(out);
}

std::shared_ptr<ferry::Module> make_model(int layers) {
  auto guard = ferry::init_empty_weights();
  auto root = std::make_shared<ferry::Module>("BenchModel");
  auto list = std::make_shared<ferry::Module>("ModuleList");
  for (int i = 0; i < layers; ++i) list->register_child(std::to_string(i), std::make_shared<ferry::Linear>(kCols, kRows, false));
  root->register_child("layers", list);
  return root;
}

}  // namespace

int main(int argc, char** argv) {
  const double gib = argc > 1 ? std::stod(argv[1]) : 2.0;
  const std::string folder = argc > 2 ? argv[2] : "/tmp/ferry_bench_load_" + std::to_string(::getpid());
  const int64_t layer_bytes = kRows * kCols * 4;
  const int layers = std::max(kLayersPerShard, static_cast<int>(gib * (1LL << 30) / layer_bytes + 0.5));
  const int shards = (layers + kLayersPerShard - 1) / kLayersPerShard;
  const int cpu_layers = layers / 4;
  fs::create_directories(folder);
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{folder};

  // ---- generate ----------------------------------------------------------------------------
  auto t0 = std::chrono::steady_clock::now();
  std::string index = "{\n  \"metadata\": {},\n  \"weight_map\": {";
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    ferry::io::NamedTensors part;
    for (int i = s * kLayersPerShard; i < std::min(layers, (s + 1) * kLayersPerShard); ++i) {
      const std::string key = "layers." + std::to_string(i) + ".weight";
      part.push_back({key, at::full({kRows, kCols}, static_cast<float>(i) + 0.5f)});
      index += std::string(index.back() == '{' ? "\n" : ",\n") + "    \"" + key + "\": \"" + name + "\"";
    }
    ferry::io::save_safetensors(folder + "/" + name, part, {{"format", "pt"}});
  }
  std::ofstream(folder + "/model.safetensors.index.json") << index << "\n  }\n}\n";
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "generated " << layers << " layers x " << ferry::format_bytes(layer_bytes) << " = "
            << ferry::format_bytes(static_cast<double>(layers) * layer_bytes) << " in " << shards << " shards of "
            << ferry::format_bytes(static_cast<double>(kLayersPerShard) * layer_bytes) << " (" << gen_s << " s)\n";

  ferry::DeviceMap map;
  for (int i = 0; i < layers; ++i)
    map.set("layers." + std::to_string(i), i < cpu_layers ? ferry::Placement::cpu() : ferry::Placement::disk());
  const int64_t cpu_bytes = static_cast<int64_t>(cpu_layers) * layer_bytes;
  const int64_t largest_shard = kLayersPerShard * layer_bytes;
  std::cout << "device map: " << cpu_layers << " layers on cpu (" << ferry::format_bytes(cpu_bytes) << "), "
            << layers - cpu_layers << " on disk\n";
  std::cout << "budget: largest shard + cpu-placed bytes = " << ferry::format_bytes(largest_shard + cpu_bytes) << "\n";

  int status = 0;
  for (bool in_place : {true, false}) {
    // Drop the generated files from this process's page-cache accounting and start a fresh peak.
    auto model = make_model(layers);
    if (!reset_peak()) std::cerr << "warning: cannot reset VmHWM; the peak includes generation\n";
    const int64_t before_kib = status_kib("VmRSS:");
    ferry::LoadCheckpointOptions o;
    o.device_map = map;
    o.disk_in_place = in_place;
    o.offload_folder = folder + "/offload";
    auto t1 = std::chrono::steady_clock::now();
    ferry::LoadCheckpointResult r = ferry::load_checkpoint_in_model(*model, folder, o);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const int64_t peak_kib = status_kib("VmHWM:");
    const int64_t above = (peak_kib - before_kib) * 1024;
    // Spot check: a CPU layer holds its value, a disk layer is meta and loads from the weights map.
    auto [owner0, leaf0] = ferry::resolve_tensor_owner(*model, "layers.0.weight");
    const bool ok = owner0->parameter(leaf0).device().is_cpu() &&
                    owner0->parameter(leaf0)[kRows - 1][kCols - 1].item<float>() == 0.5f &&
                    r.disk_weights->load("layers." + std::to_string(layers - 1) + ".weight")[0][0].item<float>() ==
                        static_cast<float>(layers - 1) + 0.5f;
    std::cout << (in_place ? "(a) disk weights read in place" : "(b) disk weights copied to an offload folder")
              << ": load " << load_s << " s, RSS before " << ferry::format_bytes(before_kib * 1024.0)
              << ", peak RSS " << ferry::format_bytes(peak_kib * 1024.0) << ", peak above before "
              << ferry::format_bytes(static_cast<double>(above)) << " (budget "
              << ferry::format_bytes(static_cast<double>(largest_shard + cpu_bytes)) << ", cpu-placed "
              << ferry::format_bytes(static_cast<double>(cpu_bytes)) << ")" << (ok ? "" : "  VALUES WRONG") << "\n";
    if (!ok || above > largest_shard + cpu_bytes) status = 1;
  }
  return status;
}
