#pragma once
/// \file
/// A file that shrinks while it is mapped makes the next read of the lost pages raise SIGBUS, which
/// kills the process with "Bus error" and no word of which file. Weights read in place must stay
/// mapped (compute reads them directly), so ferry cannot read them with pread instead; what it can
/// do is say what happened. Every MappedFile registers its range; a program that wants the message
/// installs the handler once:
///
///     ferry::io::install_mapped_file_fault_handler();   // `ferry` and `ferry-torch` do
///     // ... a shard is truncated during a run:
///     // ferry: error: /models/x/model-00003-of-00014.safetensors changed while it was being read
///     // (truncated or replaced); everything printed above is complete. Stopping.   (exit status 1)
///
/// A SIGBUS outside every mapped file keeps its default action. The handler only writes and exits
/// (async-signal-safe); it does not try to continue, since the faulting code (a matrix kernel) cannot
/// be resumed with other data.

namespace ferry::io {

/// Installs the SIGBUS handler (idempotent). Library users who handle SIGBUS themselves need not.
void install_mapped_file_fault_handler();

}  // namespace ferry::io
