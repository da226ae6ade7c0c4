// bench_offload MODEL_DIR [--steps N] [--prompt N] [--rounds N] [--skip-cold]
//
// Decode speed of a Llama-shaped checkpoint run on the CPU, resident versus with every decoder
// layer on disk (read in place from the safetensors files), with ferry's streamer and without it
// (synchronous loads, as Accelerate does), beside the disk's sequential read bandwidth measured
// in the same run. Make the checkpoint with `make_big_llama DIR --layers 10` (about 2.5 GB), or run
// scripts/bench_offload.sh, which does both.
//
// Cold-cache figures evict the checkpoint's pages with posix_fadvise(POSIX_FADV_DONTNEED), which
// needs no privileges; they are only meaningful when nothing else maps the files.

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/models/generate.h"
#include "ferry/dispatch/load_checkpoint_and_dispatch.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"
#include "ferry/plan/device_map.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "bench_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

using namespace ferry;
using namespace ferry::models;
namespace fs = std::filesystem;
using namespace ferry::bench;

namespace {

// A "Key:   N kB" field of a /proc file (status, smaps_rollup), in KiB; -1 when absent.
int64_t proc_kib(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  return -1;
}

int64_t status_kib(const std::string& key) { return proc_kib("/proc/self/status", key); }
// FilePmdMapped: file pages mapped as 2 MiB huge pages.
int64_t smaps_kib(const std::string& key) { return proc_kib("/proc/self/smaps_rollup", key); }


struct StepTimes {
  double first_ms = 0;   // the prompt's forward (cold when the cache was evicted)
  double decode_ms = 0;  // mean of the later steps
  int64_t offloaded_bytes = 0;
};

StepTimes run(const std::string& dir, const LoadModelOptions& options, int64_t prompt, int64_t steps,
              bool evict_first) {
  LoadedModel loaded = load_model(dir, options);
  if (evict_first) evict(shard_files(dir));
  at::Tensor ids = at::arange(1, prompt + 1, at::kLong).unsqueeze(0);
  GenerationConfig g;
  g.max_new_tokens = steps + 1;
  GenerationOutput out = generate(*loaded.model, ids, g);
  StepTimes t;
  t.first_ms = out.prefill_seconds * 1e3;
  t.decode_ms = out.decode_steps ? out.decode_seconds * 1e3 / static_cast<double>(out.decode_steps) : 0;
  t.offloaded_bytes = loaded.offloaded_bytes_per_forward;
  return t;
}

// Mean decode step of one generate() call on an already loaded model, in milliseconds.
double decode_ms(LoadedModel& loaded, int64_t prompt, int64_t steps) {
  at::Tensor ids = at::arange(1, prompt + 1, at::kLong).unsqueeze(0);
  GenerationConfig g;
  g.max_new_tokens = steps + 1;
  GenerationOutput out = generate(*loaded.model, ids, g);
  return out.decode_seconds * 1e3 / static_cast<double>(std::max<int64_t>(1, out.decode_steps));
}

std::string join(const std::vector<double>& v) {
  std::string s;
  for (double x : v) s += (s.empty() ? "" : " ") + std::to_string(int(x + 0.5));
  return s;
}

// Decoder layers in an Accelerate offload folder (.dat files, mapped per load and unmapped after
// use), so that the page cache can be emptied between two forwards of a model that has already
// run: a cold-cache decode step with the streamer's learned order, the case that matters.
StepTimes run_cold_from_folder(const std::string& dir, const DeviceMap& map, const std::string& folder,
                               int64_t prefetch_bytes, int64_t prompt) {
  auto model = create_empty_model(dir);
  LoadAndDispatchOptions o;
  o.device_map = map;
  o.offload_folder = folder;
  o.load.disk_in_place = false;  // Accelerate's way: copy to the offload folder
  o.dispatch.streamer.prefetch_bytes = prefetch_bytes;
  DispatchResult r = load_checkpoint_and_dispatch(*model, dir, o);
  at::Tensor ids = at::arange(1, prompt + 1, at::kLong).unsqueeze(0);
  GenerationConfig g;
  g.max_new_tokens = 2;
  generate(*model, ids, g);  // learns the order
  if (r.state->streamer) r.state->streamer->drop_prefetched();
  std::vector<std::string> dats;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.path().extension() == ".dat") dats.push_back(e.path().string());
  evict(dats);
  g.max_new_tokens = 1;
  GenerationOutput out = generate(*model, ids, g);
  StepTimes t;
  t.first_ms = out.prefill_seconds * 1e3;
  t.offloaded_bytes = r.state->offloaded_bytes_per_forward;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string dir;
    int64_t steps = 8, prompt = 4, rounds = 5;
    bool cold = true;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--steps" && i + 1 < argc) steps = std::stoll(argv[++i]);
      else if (a == "--prompt" && i + 1 < argc) prompt = std::stoll(argv[++i]);
      else if (a == "--rounds" && i + 1 < argc) rounds = std::stoll(argv[++i]);
      else if (a == "--skip-cold") cold = false;
      else dir = a;
    }
    FERRY_CHECK(!dir.empty() && fs::exists(dir + "/config.json"),
                "usage: bench_offload MODEL_DIR [--steps N] [--prompt N] [--rounds N] [--skip-cold] (make MODEL_DIR with make_big_llama)");
    auto files = shard_files(dir);
    uint64_t checkpoint_bytes = 0;
    for (const auto& f : files) checkpoint_bytes += fs::file_size(f);

    // Every decoder layer on disk; embeddings, final norm and head in RAM.
    std::string map_path = (fs::temp_directory_path() / "ferry-bench-offload-map.json").string();
    DeviceMap{{"model.embed_tokens", Placement::cpu()}, {"model.layers", Placement::disk()},
              {"model.norm", Placement::cpu()}, {"model.rotary_emb", Placement::cpu()}, {"lm_head", Placement::cpu()}}
        .write_json_file(map_path);

    std::printf("checkpoint: %s in %zu shards; %d compute threads\n", format_bytes(double(checkpoint_bytes)).c_str(),
                files.size(), at::get_num_threads());
    double warm_bw = 0, cold_bw = 0, direct_bw = 0;
    if (cold) {
      evict(files);
      cold_bw = read_bandwidth(files);
      direct_bw = read_bandwidth_direct(files);
    }
    warm_bw = read_bandwidth(files);
    warm_bw = read_bandwidth(files);
    std::printf("sequential read: evicted cache %.2f GB/s, O_DIRECT %.2f GB/s, page cache %.2f GB/s\n", cold_bw / 1e9,
                direct_bw / 1e9, warm_bw / 1e9);
    // The disk's figure for the cold rows: the better of the two uncached reads (the stricter test).
    const double disk_bw = std::max(cold_bw, direct_bw);

    LoadModelOptions disk;
    disk.device_map = map_path;
    LoadModelOptions disk_sync = disk;
    disk_sync.prefetch_bytes = 0;
    StepTimes cold_stream, cold_sync;
    if (cold) {
      // Two rounds in opposite orders (a cache below the page cache, as a virtual disk has,
      // favours whichever runs second); each figure is the mean of its two runs.
      StepTimes a1 = run(dir, disk, prompt, 1, true), b1 = run(dir, disk_sync, prompt, 1, true);
      StepTimes b2 = run(dir, disk_sync, prompt, 1, true), a2 = run(dir, disk, prompt, 1, true);
      std::printf("cold first forwards (ms): streamer %.0f %.0f; synchronous %.0f %.0f\n", a1.first_ms, a2.first_ms,
                  b1.first_ms, b2.first_ms);
      cold_stream = a1, cold_sync = b1;
      cold_stream.first_ms = (a1.first_ms + a2.first_ms) / 2;
      cold_sync.first_ms = (b1.first_ms + b2.first_ms) / 2;
    }
    StepTimes folder_stream, folder_sync;
    std::string folder = (fs::temp_directory_path() / "ferry-bench-offload-folder").string();
    DeviceMap map = DeviceMap::read_json_file(map_path);
    if (cold) {
      fs::remove_all(folder);
      StepTimes a1 = run_cold_from_folder(dir, map, folder, int64_t{1} << 30, prompt);
      StepTimes b1 = run_cold_from_folder(dir, map, folder, 0, prompt);
      StepTimes b2 = run_cold_from_folder(dir, map, folder, 0, prompt);
      StepTimes a2 = run_cold_from_folder(dir, map, folder, int64_t{1} << 30, prompt);
      std::printf("cold learned forwards from an offload folder (ms): streamer %.0f %.0f; synchronous %.0f %.0f\n",
                  a1.first_ms, a2.first_ms, b1.first_ms, b2.first_ms);
      folder_stream = a1, folder_sync = b1;
      folder_stream.first_ms = (a1.first_ms + a2.first_ms) / 2;
      folder_sync.first_ms = (b1.first_ms + b2.first_ms) / 2;
      fs::remove_all(folder);
    }
    // Start from an empty page cache, so that the files come back in through ferry's mappings
    // (huge-page folios, as after a reboot) rather than as the small folios a file's writer or
    // read() leaves behind; the first round, which reads them, is not counted.
    evict(files);
    // Warm cache: the three variants live in one process and take turns, round after round, so
    // that the machine's drift (other tenants, frequency) falls on all of them alike; the figure
    // of each is the median of its rounds.
    // Memory: what each model adds to the process's anonymous memory (weights held in RAM, KV
    // cache, activations); mapped files count as page cache, which the kernel may reclaim.
    int64_t anon_before = status_kib("RssAnon");
    LoadedModel stream_model = load_model(dir, disk);
    decode_ms(stream_model, prompt, 1);
    const int64_t offload_anon = status_kib("RssAnon") - anon_before;
    LoadedModel sync_model = load_model(dir, disk_sync);
    anon_before = status_kib("RssAnon");
    LoadedModel resident_model = load_model(dir, LoadModelOptions{});
    decode_ms(resident_model, prompt, 1);
    const int64_t resident_anon = status_kib("RssAnon") - anon_before;
    uint64_t cpu_bytes = 0;
    for (const auto& [placement, bytes] : stream_model.bytes_per_placement)
      if (placement.is_cpu()) cpu_bytes += bytes;
    std::vector<double> resident_ms, stream_ms, sync_ms;
    for (LoadedModel* m : {&resident_model, &stream_model, &sync_model}) decode_ms(*m, prompt, 1);
    for (int round = 0; round < rounds; ++round) {
      resident_ms.push_back(decode_ms(resident_model, prompt, steps));
      stream_ms.push_back(decode_ms(stream_model, prompt, steps));
      sync_ms.push_back(decode_ms(sync_model, prompt, steps));
    }
    const int64_t huge_kib = smaps_kib("FilePmdMapped");
    StepTimes resident{0, median(resident_ms), 0}, warm_stream{0, median(stream_ms), stream_model.offloaded_bytes_per_forward},
        warm_sync{0, median(sync_ms), 0};
    std::printf("warm rounds (ms/step): resident %s; streamer %s; synchronous %s\n", join(resident_ms).c_str(),
                join(stream_ms).c_str(), join(sync_ms).c_str());

    double offloaded = static_cast<double>(warm_stream.offloaded_bytes);
    std::printf("\n| run | decode ms/step | vs resident | first forward ms |\n|---|---|---|---|\n");
    std::printf("| resident | %.1f | 1.00x | - |\n", resident.decode_ms);
    std::printf("| disk, streamer, warm cache | %.1f | %.2fx | - |\n", warm_stream.decode_ms,
                warm_stream.decode_ms / resident.decode_ms);
    std::printf("| disk, synchronous (Accelerate-like), warm cache | %.1f | %.2fx | - |\n", warm_sync.decode_ms,
                warm_sync.decode_ms / resident.decode_ms);
    if (cold) {
      auto cold_row = [&](const char* run, const StepTimes& t) {
        std::printf("| %s | - | - | %.1f (%.2f GB/s, %.0f%% of sequential read) |\n", run, t.first_ms,
                    offloaded / t.first_ms / 1e6, 100.0 * offloaded / (t.first_ms / 1e3) / disk_bw);
      };
      cold_row("disk, streamer, cold cache (first forward)", cold_stream);
      cold_row("disk, synchronous, cold cache (first forward)", cold_sync);
      cold_row("offload folder, streamer, cold cache (a learned forward)", folder_stream);
      cold_row("offload folder, synchronous, cold cache", folder_sync);
    }
    std::printf("\nfile pages mapped as 2 MiB huge pages: %s\n", format_bytes(double(huge_kib) * 1024).c_str());
    std::printf("offloaded per forward: %s; anonymous memory per model: disk-offloaded %s (of which weights kept\n"
                "in RAM: %s), resident %s\n",
                format_bytes(offloaded).c_str(), format_bytes(double(offload_anon) * 1024).c_str(),
                format_bytes(double(cpu_bytes)).c_str(), format_bytes(double(resident_anon) * 1024).c_str());
    std::printf("{\"resident_ms\": %.2f, \"disk_stream_warm_ms\": %.2f, \"disk_sync_warm_ms\": %.2f, "
                "\"disk_stream_cold_first_ms\": %.2f, \"disk_sync_cold_first_ms\": %.2f, \"cold_read_gbs\": %.3f, "
                "\"offloaded_bytes\": %.0f}\n",
                resident.decode_ms, warm_stream.decode_ms, warm_sync.decode_ms, cold_stream.first_ms,
                cold_sync.first_ms, cold_bw / 1e9, offloaded);
    fs::remove(map_path);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_offload: " << e.what() << '\n';
    return 1;
  }
}
