#pragma once
/// \file
/// Fault injection for ferry's one file writer (io/atomic_file.h), so that tests can prove that
/// every writer (safetensors files, offload folders, device maps, saved models) leaves either the old
/// state or the new one when the disk fills or fails part-way. Off unless a test turns it on.
///
///     ferry::io::inject_write_fault(ENOSPC, 4096);   // fail once 4 KiB more have been written
///     EXPECT_THROW(ferry::io::save_safetensors(path, tensors), ferry::Error);
///     ferry::io::clear_write_fault();

#include <cstdint>

namespace ferry::io {

/// From now on, writes through AtomicFileWriter fail with `error` (ENOSPC, EIO, ...) once
/// `after_bytes` more bytes have been written (the write that crosses it is short first, as on a
/// filling disk), and so does fsync once the budget is spent.
void inject_write_fault(int error, uint64_t after_bytes);

/// Turns fault injection off.
void clear_write_fault();

/// Bytes written through AtomicFileWriter by this process so far (to place faults across a write).
uint64_t bytes_written();

}  // namespace ferry::io
