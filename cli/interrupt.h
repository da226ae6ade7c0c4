#pragma once
/// \file
/// Ctrl-C and SIGTERM for the commands that run for long: the first signal asks the command to stop
/// at its next safe point (after the token being generated, after the file being written), so that
/// it prints what it produced and removes what it half-wrote; a second one ends the process at once.
///
///     install_interrupt_handlers();
///     for (...) { throw_if_interrupted("ferry offload"); write_one(); }

#include <stdexcept>
#include <string>

namespace ferry::cli {

/// Thrown at a safe point after SIGINT or SIGTERM.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal);
  /// The signal that asked to stop.
  int signal() const { return signal_; }
  /// The shell's exit status for it (128 + signal).
  int exit_status() const { return 128 + signal_; }

 private:
  int signal_;
};

/// Installs the handlers (idempotent).
void install_interrupt_handlers();
/// The signal received since installation, or 0.
int interrupt_signal();
/// Throws Interrupted if a signal was received.
void throw_if_interrupted();

}  // namespace ferry::cli
