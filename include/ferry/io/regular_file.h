#pragma once
/// \file
/// Checks that a path is a regular file before ferry opens it, with a message that says what it is
/// instead: opening a FIFO blocks forever, a folder reads as "does not exist" or "invalid", and a
/// symbolic-link loop surfaces as a filesystem exception.
///
///     ferry::io::check_regular_file(shard, "Checkpoint::open");  // "[Checkpoint::open] x: is a FIFO, not a file"
///     std::string text = ferry::io::read_regular_file("config.json", "load_config");

#include <string>

namespace ferry::io {

/// "a directory", "a FIFO", "a character device", "a block device", "a socket", "a regular file".
std::string describe_file_type(unsigned mode);

/// Throws ferry::Error("[function] <path>: ...") unless `path` (after symbolic links) is a regular
/// file: it does not exist, is a folder/FIFO/device/socket, sits in a symbolic-link loop, or cannot
/// be examined (the OS error).
void check_regular_file(const std::string& path, const char* function);

/// Reads a whole regular file as bytes, after check_regular_file. Throws ferry::Error naming the
/// file on any failure.
std::string read_regular_file(const std::string& path, const char* function);

}  // namespace ferry::io
