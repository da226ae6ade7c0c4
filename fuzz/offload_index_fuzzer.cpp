// libFuzzer target: index.json parsing (OffloadIndex::from_json, and through it the strict JSON reader
// the checkpoint index uses). Accepted input must survive a write/read round trip unchanged.

#include "ferry/core/error.h"
#include "ferry/io/offload.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    ferry::io::OffloadIndex index = ferry::io::OffloadIndex::from_json(text, "fuzz-input");
    ferry::io::OffloadIndex again = ferry::io::OffloadIndex::from_json(index.to_json(), "round-trip");
    if (again.names() != index.names()) std::abort();
    for (const auto& name : index.names())
      if (!(again.at(name) == index.at(name))) std::abort();
  } catch (const ferry::Error&) {
  }
  return 0;
}
