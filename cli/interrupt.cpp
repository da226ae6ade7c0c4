#include "interrupt.h"

#include <signal.h>

#include <atomic>
#include <cstring>

namespace ferry::cli {
namespace {

std::atomic<int> received{0};

extern "C" void on_signal(int sig) {
  if (received.exchange(sig) != 0) {  // the second one: stop now, as if no handler were installed
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

}  // namespace

Interrupted::Interrupted(int signal)
    : std::runtime_error(std::string("interrupted by ") + (signal == SIGINT ? "SIGINT" : "SIGTERM")), signal_(signal) {}

void install_interrupt_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

int interrupt_signal() { return received.load(); }

void throw_if_interrupted() {
  if (const int sig = received.load()) throw Interrupted(sig);
}

}  // namespace ferry::cli
