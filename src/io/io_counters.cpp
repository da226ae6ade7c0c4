#include "ferry/io/io_counters.h"

namespace ferry::io {

IoCounters& io_counters() {
  static IoCounters counters;
  return counters;
}

}  // namespace ferry::io
