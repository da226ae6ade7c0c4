#include "ferry/plan/expert_cost_model.h"

#include "ferry/core/error.h"

#include <algorithm>
#include <cstdio>

namespace ferry {

const char* to_string(CpuExperts mode) {
  switch (mode) {
    case CpuExperts::automatic: return "auto";
    case CpuExperts::compute: return "compute";
    case CpuExperts::copy: return "copy";
  }
  return "?";
}

CpuExperts parse_cpu_experts(const std::string& text) {
  if (text == "auto") return CpuExperts::automatic;
  if (text == "compute") return CpuExperts::compute;
  if (text == "copy") return CpuExperts::copy;
  FERRY_FAIL("experts in CPU RAM: '", text, "' is not a choice; use auto (the cost model decides per call), compute "
             "(run them on the CPU) or copy (copy their weights to the GPU)");
}

bool ExpertCostModel::valid() const {
  return link_bytes_per_second > 0 && cpu_bytes_per_second > 0 && cpu_flops > 0;
}

double ExpertCostModel::seconds_copying(int64_t weight_bytes) const {
  return static_cast<double>(weight_bytes) / link_bytes_per_second;
}

double ExpertCostModel::seconds_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size,
                                       int64_t tokens) const {
  const double parameters = static_cast<double>(weight_bytes) / static_cast<double>(std::max<int64_t>(element_bytes, 1));
  const double reading = static_cast<double>(weight_bytes) / cpu_bytes_per_second;
  const double arithmetic = 2.0 * parameters * static_cast<double>(tokens) / cpu_flops;
  const double activations = 2.0 * static_cast<double>(tokens * hidden_size * element_bytes) / link_bytes_per_second;
  return reading + arithmetic + activations;
}

bool ExpertCostModel::runs_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size,
                                  int64_t tokens) const {
  return valid() && seconds_on_cpu(weight_bytes, element_bytes, hidden_size, tokens) < seconds_copying(weight_bytes);
}

int64_t ExpertCostModel::max_tokens_on_cpu(int64_t weight_bytes, int64_t element_bytes, int64_t hidden_size) const {
  // seconds_on_cpu grows with the tokens and seconds_copying does not: bisect the last true.
  if (!runs_on_cpu(weight_bytes, element_bytes, hidden_size, 1)) return 0;
  int64_t yes = 1, no = 2;
  while (runs_on_cpu(weight_bytes, element_bytes, hidden_size, no)) {
    yes = no;
    if (no > (int64_t{1} << 40)) return yes;  // the link is slower than the CPU's arithmetic: always
    no *= 2;
  }
  while (no - yes > 1) {
    const int64_t mid = yes + (no - yes) / 2;
    (runs_on_cpu(weight_bytes, element_bytes, hidden_size, mid) ? yes : no) = mid;
  }
  return yes;
}

std::string ExpertCostModel::describe() const {
  char text[160];
  std::snprintf(text, sizeof text, "link %.1f GB/s, CPU %.1f GB/s and %.2f TFLOP/s (%s)", link_bytes_per_second / 1e9,
                cpu_bytes_per_second / 1e9, cpu_flops / 1e12, measured ? "measured" : "given");
  return text;
}

}  // namespace ferry
