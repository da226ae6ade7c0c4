#pragma once
/// \file
/// Measures the figures of an ExpertCostModel (ferry/plan/expert_cost_model.h) on this machine, in
/// about 0.1 s, with matrices the size of the model's experts: what `ferry run` does before
/// choosing, per call, where an expert held in CPU RAM runs.
///
///     ExpertCostModel cost = measure_expert_cost_model(c10::Device("cuda:0"), at::kBFloat16, 4096, 14336);
///     cost.describe();  // "link 24.8 GB/s, CPU 31.2 GB/s and 0.85 TFLOP/s (measured)"

#include "ferry/plan/expert_cost_model.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace ferry {

/// Times, best of a few, a page-locked copy of one expert's bytes (three [intermediate, hidden]
/// matrices) to `device`, and on the CPU (its current thread count) experts of that size with 1
/// and with 64 tokens, over 64 MiB of them (so that weights come from RAM, not from the caches);
/// the line through those two times gives the weight bytes per second and the FLOP/s. For the CPU itself only the
/// CPU's figures are measured (the link stays 0: an invalid model, which never chooses the CPU).
/// Throws ferry::Error for the meta device or a size that is not positive.
ExpertCostModel measure_expert_cost_model(c10::Device device, c10::ScalarType dtype, int64_t hidden_size,
                                          int64_t intermediate_size);

}  // namespace ferry
