// libFuzzer target: parse_safetensors_header on arbitrary bytes. Every input must either be rejected
// with ferry::Error or yield entries that lie inside the buffer; the copy below touches every byte an
// accepted entry claims, so AddressSanitizer catches any range the validation let through wrongly.

#include "ferry/core/error.h"
#include "ferry/io/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    ferry::io::SafetensorsHeader h = ferry::io::parse_safetensors_header(data, size, size, "fuzz-input");
    uint64_t previous_end = 0;
    std::vector<uint8_t> sink;
    for (const auto& e : h.tensors) {
      if (e.begin < previous_end || e.end < e.begin || h.data_offset + e.end > size) std::abort();
      if (static_cast<uint64_t>(e.numel()) * c10::elementSize(e.dtype) != e.nbytes()) std::abort();
      if (h.find(e.name) != &e) std::abort();
      sink.assign(data + h.data_offset + e.begin, data + h.data_offset + e.end);
      previous_end = e.end;
    }
  } catch (const ferry::Error&) {
    // A clear rejection is the expected outcome for most inputs.
  }
  return 0;
}
