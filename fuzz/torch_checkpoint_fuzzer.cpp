// libFuzzer target: torch.save checkpoints (io/torch_checkpoint.h). The first input byte picks the layer:
//   even: the rest is a data.pkl. parse_torch_pickle reads it; then it is wrapped, as torch.save would,
//         in a zip (LibTorch's own writer) beside storages data/0..data/3 of 0, 8, 64 and 4096 bytes,
//         and loaded whole, so an accepted view is materialised from a real record;
//   odd:  the rest is a whole .bin file, read from memory.
// Every input must either be refused with ferry::Error or load; any other exception, a crash, a leak
// or an out-of-bounds read is a bug. Accepted tensors are summed byte by byte, so AddressSanitizer
// sees every byte a view was allowed to reach.

#include "ferry/core/error.h"
#include "ferry/io/torch_checkpoint.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace {

std::string wrap(const uint8_t* pickle, size_t size) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter w([&](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  w.writeRecord("data.pkl", pickle, size);
  static const std::string fill(4096, '\x3c');
  const size_t sizes[] = {0, 8, 64, 4096};
  for (size_t k = 0; k < 4; ++k) w.writeRecord("data/" + std::to_string(k), fill.data(), sizes[k]);
  w.writeEndOfFile();
  return out;
}

void touch(const ferry::io::NamedTensors& tensors) {
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.is_contiguous() || !t.device().is_cpu()) std::abort();
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < t.numel() * static_cast<int64_t>(t.element_size()); ++i) sink = sink + p[i];
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  try {
    if (data[0] % 2 == 0) {
      try {
        ferry::io::parse_torch_pickle(data + 1, size - 1, "fuzz.pkl");
      } catch (const ferry::Error&) {
        return 0;  // refused as a pickle: the zip would refuse it the same way
      }
      const std::string zip = wrap(data + 1, size - 1);
      touch(ferry::io::read_torch_state_dict(reinterpret_cast<const uint8_t*>(zip.data()), zip.size(), "fuzz.bin"));
    } else {
      touch(ferry::io::read_torch_state_dict(data + 1, size - 1, "fuzz.bin"));
    }
  } catch (const ferry::Error&) {
    // A clear refusal is the expected outcome for most inputs.
  }
  return 0;
}
