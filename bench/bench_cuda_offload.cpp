// bench_cuda_offload MODEL_DIR [--steps N] [--rounds N]
//
// GPU execution of a model whose decoder layers live off the GPU: in CPU RAM, then on disk (read
// in place from the safetensors files). For each, milliseconds per decode step and the effective
// host-to-device rate (offloaded bytes per step / step time), with ferry's streamer (copy stream,
// pinned weights or pinned staging) and without it (synchronous pageable copies, as Accelerate
// does), beside the pinned and pageable host-to-device bandwidth measured in the same run and the
// model resident on the GPU. Make a checkpoint with
//   make_big_llama DIR --layers 10 --hidden 4096 --dtype bfloat16        (about 4.1 GB)
// or run scripts/gpu_check.sh, which builds, tests and runs this on a machine with a GPU.
//
// Without a CUDA device it says so and exits 0.

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/plan/device_map.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "bench_util.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

using namespace ferry;
using namespace ferry::models;
namespace fs = std::filesystem;
using namespace ferry::bench;

namespace {

// Host-to-device bandwidth of one large copy, best of five, in bytes per second.
double copy_bandwidth(bool pinned, int64_t bytes) {
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
  host.fill_(1);
  at::Tensor device = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    device.copy_(host, /*non_blocking=*/pinned);
    device.sum().item<int64_t>();  // synchronises: the copy has finished
    double start = now();
    device.copy_(host, /*non_blocking=*/pinned);
    device.sum().item<int64_t>();
    double seconds = now() - start;
    if (i > 0) best = std::min(best, seconds);
  }
  // The sum of `bytes` bytes on the GPU takes microseconds; it is left in, on the safe side.
  return static_cast<double>(bytes) / best;
}

double decode_ms(LoadedModel& loaded, int64_t steps) {
  at::Tensor ids = at::arange(1, 5, at::kLong).unsqueeze(0);
  GenerationConfig g;
  g.max_new_tokens = steps + 1;
  GenerationOutput out = generate(*loaded.model, ids, g);  // each step reads its token on the host
  return out.decode_seconds * 1e3 / static_cast<double>(std::max<int64_t>(1, out.decode_steps));
}

// The prompt's forward (4 tokens), the first after loading: milliseconds.
double first_forward_ms(LoadedModel& loaded) {
  GenerationConfig g;
  g.max_new_tokens = 1;
  GenerationOutput out = generate(*loaded.model, at::arange(1, 5, at::kLong).unsqueeze(0), g);
  return out.prefill_seconds * 1e3;
}

struct Variant {
  std::string name;
  LoadModelOptions options;
  std::vector<double> ms;
  int64_t offloaded_bytes = 0;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string dir;
    int64_t steps = 8, rounds = 3;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--steps" && i + 1 < argc) steps = std::stoll(argv[++i]);
      else if (a == "--rounds" && i + 1 < argc) rounds = std::stoll(argv[++i]);
      else dir = a;
    }
    FERRY_CHECK(!dir.empty() && fs::exists(dir + "/config.json"),
                "usage: bench_cuda_offload MODEL_DIR [--steps N] [--rounds N] (make MODEL_DIR with make_big_llama)");
    if (!at::hasCUDA()) {
      std::printf("bench_cuda_offload: no CUDA device (or a LibTorch without CUDA): nothing to measure\n");
      return 0;
    }
    const double pinned = copy_bandwidth(true, int64_t{1} << 30);
    const double pageable = copy_bandwidth(false, int64_t{1} << 30);
    std::printf("host-to-device, 1 GiB: pinned %.1f GB/s, pageable %.1f GB/s\n", pinned / 1e9, pageable / 1e9);

    // Decoder layers off the GPU, everything else on it.
    auto write_map = [&](const char* where) {
      std::string path = (fs::temp_directory_path() / (std::string("ferry-bench-cuda-") + where + ".json")).string();
      DeviceMap{{"model.embed_tokens", Placement::cuda(0)}, {"model.rotary_emb", Placement::cuda(0)},
                {"model.layers", std::string(where) == "disk" ? Placement::disk() : Placement::cpu()},
                {"model.norm", Placement::cuda(0)}, {"lm_head", Placement::cuda(0)}}
          .write_json_file(path);
      return path;
    };
    std::vector<Variant> variants(5);
    variants[0].name = "resident on the GPU";
    variants[0].options.device_map = (fs::temp_directory_path() / "ferry-bench-cuda-gpu.json").string();
    DeviceMap{{"", Placement::cuda(0)}}.write_json_file(variants[0].options.device_map);
    variants[1].name = "CPU RAM, streamer (pinned weights)";
    variants[1].options.device_map = write_map("cpu");
    variants[2].name = "CPU RAM, synchronous pageable (Accelerate-like)";
    variants[2].options.device_map = write_map("cpu");
    variants[2].options.prefetch_bytes = 0;
    variants[2].options.pin_cpu_weights = false;
    variants[3].name = "disk, streamer (pinned staging)";
    variants[3].options.device_map = write_map("disk");
    variants[4].name = "disk, synchronous";
    variants[4].options.device_map = write_map("disk");
    variants[4].options.prefetch_bytes = 0;

    // One variant loaded at a time (a CPU-offloaded copy of a large model is large); rounds
    // alternate between variants to spread the machine's drift over all of them.
    for (int64_t round = 0; round < rounds; ++round) {
      for (auto& v : variants) {
        LoadedModel loaded = load_model(dir, v.options);
        decode_ms(loaded, 1);  // learns the order, warms the caches
        v.ms.push_back(decode_ms(loaded, steps));
        v.offloaded_bytes = loaded.offloaded_bytes_per_forward;
      }
    }
    const double resident = median(variants[0].ms);
    std::printf("\n| run | decode ms/step | vs resident | offloaded per step | effective GB/s | of pinned H2D |\n"
                "|---|---|---|---|---|---|\n");
    for (auto& v : variants) {
      double ms = median(v.ms);
      double rate = v.offloaded_bytes ? static_cast<double>(v.offloaded_bytes) / (ms / 1e3) : 0;
      std::printf("| %s | %.2f | %.2fx | %s | %s | %s |\n", v.name.c_str(), ms, ms / resident,
                  format_bytes(double(v.offloaded_bytes)).c_str(),
                  rate ? std::to_string(rate / 1e9).substr(0, 5).c_str() : "-",
                  rate ? (std::to_string(int(100 * rate / pinned)) + "%").c_str() : "-");
    }

    // Disk-offloaded, cold page cache: the checkpoint's pages are evicted, the model loaded (which
    // maps the files and reads no weights), and the first forward timed: everything it reads comes
    // from the disk, against the disk's own sequential read of the same files.
    const std::vector<std::string> files = shard_files(dir);
    evict(files);
    const double evicted_bw = read_bandwidth(files);
    const double direct_bw = read_bandwidth_direct(files);
    const double disk_bw = std::max(evicted_bw, direct_bw);
    std::printf("\ndisk sequential read of the checkpoint: evicted cache %.2f GB/s, O_DIRECT %.2f GB/s\n",
                evicted_bw / 1e9, direct_bw / 1e9);
    std::printf("| disk, cold cache, first forward | ms | offloaded | effective GB/s | of the disk's read |\n"
                "|---|---|---|---|---|\n");
    for (size_t i : {size_t{3}, size_t{4}}) {
      std::vector<double> ms;
      int64_t bytes = 0;
      for (int64_t round = 0; round < rounds; ++round) {
        evict(files);
        LoadedModel loaded = load_model(dir, variants[i].options);
        ms.push_back(first_forward_ms(loaded));
        bytes = loaded.offloaded_bytes_per_forward;
      }
      double rate = static_cast<double>(bytes) / (median(ms) / 1e3);
      std::printf("| %s | %.1f | %s | %.2f | %d%% |\n", variants[i].name.c_str(), median(ms),
                  format_bytes(double(bytes)).c_str(), rate / 1e9, int(100 * rate / disk_bw));
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_cuda_offload: " << e.what() << '\n';
    return 1;
  }
}
