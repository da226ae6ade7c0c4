// libFuzzer target: the device-map JSON reader (DeviceMap::from_json). Accepted maps must survive a
// write/read round trip unchanged; anything else must be a ferry::Error.

#include "ferry/core/error.h"
#include "ferry/plan/device_map.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const ferry::DeviceMap map = ferry::DeviceMap::from_json(text);
    if (!(ferry::DeviceMap::from_json(map.to_json()) == map)) std::abort();
  } catch (const ferry::Error&) {
  }
  return 0;
}
