#pragma once
/// \file
/// Where an expert whose weights are in CPU RAM runs while the model runs on a GPU. Two ways:
/// copy its weights to the GPU and run it there (Accelerate's way: megabytes over the link per
/// call), or run it on the CPU beside its weights and move only its tokens' activations
/// (llama.cpp's `--n-cpu-moe`, ktransformers, Fiddler: kilobytes per token). Which is faster
/// depends on the number of tokens the router sends it: a decode step sends one, so the CPU reads
/// the weights once from RAM instead of the GPU waiting for them over PCIe; a 2,000-token prompt
/// makes the CPU's arithmetic the bottleneck and the copy wins. The cost model compares the two
/// per call.
///
///     ExpertCostModel cost;                      // or measure_expert_cost_model() (dispatch/)
///     cost.link_bytes_per_second = 25e9;         // host to GPU, page-locked
///     cost.cpu_bytes_per_second = 40e9;          // the CPU streaming weights through a matmul
///     cost.cpu_flops = 1e12;                     // the CPU's matmul arithmetic
///     // a 12 MiB float32 expert (3.1M parameters), hidden size 4096:
///     cost.runs_on_cpu(12 << 20, 4, 4096, 1);    // true: 0.32 ms on the CPU vs 0.50 ms copying
///     cost.max_tokens_on_cpu(12 << 20, 4, 4096); // 24: above that, copying wins
///     cost.describe();                           // the figures, for the plan's explanation

#include <cstdint>
#include <string>

namespace ferry {

/// What to do with an expert whose weights are held in CPU RAM when the model runs elsewhere.
enum class CpuExperts {
  automatic,  ///< per call, whichever the cost model says is faster for the tokens routed to it
  compute,    ///< always run it on the CPU, moving only its tokens' activations
  copy,       ///< always copy its weights to the execution device (Accelerate's way)
};

/// "auto", "compute", "copy" (what `--cpu-experts` takes).
const char* to_string(CpuExperts mode);
/// Parses those names; throws ferry::Error naming the accepted ones otherwise.
CpuExperts parse_cpu_experts(const std::string& text);

/// The figures the choice rests on and the arithmetic of it; see the file comment.
struct ExpertCostModel {
  /// Host (page-locked) to execution device, bytes per second.
  double link_bytes_per_second = 0;
  /// Weight bytes per second the CPU gets through in a matmul with one token (memory-bound).
  double cpu_bytes_per_second = 0;
  /// The CPU's matmul FLOP/s with many tokens (compute-bound).
  double cpu_flops = 0;
  /// Whether the figures were measured on this machine (false: given or assumed).
  bool measured = false;

  /// True when every figure is positive (a model with a zero cannot choose: it copies).
  bool valid() const;
  /// Seconds to copy an expert's weights (`weight_bytes`) to the execution device.
  double seconds_copying(int64_t weight_bytes) const;
  /// Seconds to run it on the CPU for `tokens` tokens: reading the weights plus doing the arithmetic
  /// (2 FLOPs per parameter per token), plus moving each token's hidden state (`hidden_size` values
  /// of `element_bytes`) to the CPU and back. A sum, not the roofline's max: on 2 cores
  /// (bench/bench_expert_cost.cpp, figures from measure_expert_cost_model) the max predicted 0.3-0.6x
  /// of the measured time from 4 to 32 tokens, the sum 0.64-1.34x from 1 to 512.
  double seconds_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size, int64_t tokens) const;
  /// seconds_on_cpu < seconds_copying; false for an invalid model.
  bool runs_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size, int64_t tokens) const;
  /// The most tokens for which runs_on_cpu holds (0: never, even for one token).
  int64_t max_tokens_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size) const;
  /// "link 25.0 GB/s, CPU 40.0 GB/s and 1.00 TFLOP/s (measured)".
  std::string describe() const;
};

}  // namespace ferry
