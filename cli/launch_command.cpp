// `ferry launch --nproc N -- COMMAND...`: N ranks of a ferry command (or of a program given by its
// path, ./my_program: see ferry/distributed/sequential_pipeline.h) on this host, as torchrun
// starts them: each gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
// MASTER_PORT; their output lines come back prefixed with "[rank R] "; the exit code is the first
// failing rank's. With --nnodes/--node-rank the same command on each host makes one group.
#include "commands.h"

#include "ferry/core/error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

namespace ferry::cli {
namespace {

struct LaunchArgs {
  int nproc = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  int timeout = 0;
  std::vector<std::string> command;
};

// A TCP port nobody listens on now (the kernel's pick), for a one-host launch.
int free_port(const std::string& addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  FERRY_CHECK(fd >= 0, "cannot open a socket to find a free port: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  FERRY_CHECK(::inet_pton(AF_INET, addr.c_str(), &a.sin_addr) == 1, "--master-addr '", addr,
              "' is not an IPv4 address; give --master-port too when it is a host name");
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  socklen_t len = sizeof a;
  const bool named = ok && ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  FERRY_CHECK(named, "cannot find a free port on ", addr, ": ", std::strerror(err), "; give --master-port");
  return ntohs(a.sin_port);
}

// Ctrl-C at a terminal reaches every process of the foreground group, the ranks included; a signal
// sent to launch alone (kill, a job scheduler's stop, a timeout) is passed on to the ranks, so that
// they stop cleanly together (models/pipeline.h: the stop is agreed across ranks) instead of being
// orphaned. Launch itself waits for them and exits with their status.
std::atomic<int> received_signal{0}, signal_to_forward{0};

extern "C" void on_launch_signal(int sig, siginfo_t* info, void*) {
  received_signal.store(sig);
  if (info == nullptr || info->si_code != SI_KERNEL) signal_to_forward.store(sig);  // SI_KERNEL: from the terminal
}

void install_launch_signal_handlers() {
  struct sigaction action {};
  action.sa_sigaction = on_launch_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  int out = -1, err = -1;      // pipe read ends (-1 once closed)
  std::string out_line, err_line;
  int status = 0;
  bool running = true;
};

void emit(std::ostream& to, int rank, std::string& pending, const char* data, size_t n) {
  pending.append(data, n);
  size_t start = 0;
  for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1)
    to << "[rank " << rank << "] " << std::string_view(pending).substr(start, nl + 1 - start);
  pending.erase(0, start);
  to.flush();
}

int launch(const LaunchArgs& a) {
  FERRY_CHECK(!a.command.empty(), "nothing to launch: give a command after --, e.g. ferry launch --nproc 2 -- run MODEL "
              "--prompt 'Hello'");
  FERRY_CHECK(a.nproc >= 1 && a.nnodes >= 1 && a.node_rank >= 0 && a.node_rank < a.nnodes, "--nproc ", a.nproc,
              ", --nnodes ", a.nnodes, ", --node-rank ", a.node_rank, ": need nproc >= 1 and 0 <= node-rank < nnodes");
  FERRY_CHECK(a.nnodes == 1 || a.master_port > 0, "--nnodes ", a.nnodes, " needs --master-port (and --master-addr, "
              "rank 0's host), the same on every host");
  const int port = a.master_port > 0 ? a.master_port : free_port(a.master_addr);
  const int world = a.nproc * a.nnodes;
  std::vector<Rank> ranks(static_cast<size_t>(a.nproc));
  install_launch_signal_handlers();
  const pid_t parent = ::getpid();
  for (int local = 0; local < a.nproc; ++local) {
    Rank& r = ranks[static_cast<size_t>(local)];
    r.rank = a.node_rank * a.nproc + local;
    int out[2], err[2];
    FERRY_CHECK(::pipe(out) == 0 && ::pipe(err) == 0, "cannot make pipes for rank ", r.rank, ": ", std::strerror(errno));
    r.pid = ::fork();
    FERRY_CHECK(r.pid >= 0, "cannot start rank ", r.rank, ": ", std::strerror(errno));
    if (r.pid == 0) {
      // If launch dies (even by SIGKILL), the ranks get SIGTERM and stop cleanly rather than run on.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(143);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
      ::setenv("RANK", std::to_string(r.rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(a.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", a.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      if (a.timeout > 0) ::setenv("FERRY_DIST_TIMEOUT", std::to_string(a.timeout).c_str(), 1);
      // A path (./my_program) is a program of one's own, as torchrun runs a script; anything
      // else is a ferry command.
      const bool program = a.command[0].find('/') != std::string::npos;
      std::vector<char*> argv;
      if (!program) argv.push_back(const_cast<char*>("ferry"));
      for (const auto& arg : a.command) argv.push_back(const_cast<char*>(arg.c_str()));
      argv.push_back(nullptr);
      ::execv(program ? a.command[0].c_str() : "/proc/self/exe", argv.data());
      std::fprintf(stderr, "cannot run %s: %s\n", program ? a.command[0].c_str() : "ferry", std::strerror(errno));
      ::_exit(127);
    }
    ::close(out[1]), ::close(err[1]);
    r.out = out[0], r.err = err[0];
  }

  // Forward output line by line until every pipe is closed, then collect the exit codes. A rank that
  // fails gives the others their own timeout (twice: rendezvous, then the group) to notice and exit;
  // after that they are stopped.
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> first_failure;
  const auto grace = std::chrono::seconds(a.timeout > 0 ? 2 * a.timeout + 10 : 660);  // (a rank's default: 300 s)
  int exit_code = 0, failed_rank = -1;
  auto reap = [&](bool block) {
    for (Rank& r : ranks) {
      if (!r.running) continue;
      const pid_t done = ::waitpid(r.pid, &r.status, block ? 0 : WNOHANG);
      if (done != r.pid) continue;
      r.running = false;
      const int code = WIFEXITED(r.status) ? WEXITSTATUS(r.status) : 128 + WTERMSIG(r.status);
      if (code != 0 && failed_rank < 0) {
        failed_rank = r.rank, exit_code = code;
        first_failure = Clock::now();
      }
    }
  };
  char buf[65536];
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Rank*, bool>> owners;  // (rank, is stdout)
    for (Rank& r : ranks) {
      if (r.out >= 0) fds.push_back({r.out, POLLIN, 0}), owners.emplace_back(&r, true);
      if (r.err >= 0) fds.push_back({r.err, POLLIN, 0}), owners.emplace_back(&r, false);
    }
    if (fds.empty()) break;
    ::poll(fds.data(), fds.size(), 500);
    if (const int sig = signal_to_forward.exchange(0))
      for (Rank& r : ranks)
        if (r.running) ::kill(r.pid, sig);
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [r, is_out] = owners[i];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        emit(is_out ? std::cout : std::cerr, r->rank, is_out ? r->out_line : r->err_line, buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        std::string& rest = is_out ? r->out_line : r->err_line;
        if (!rest.empty()) rest += '\n', emit(is_out ? std::cout : std::cerr, r->rank, rest, "", 0);
        ::close(fds[i].fd);
        (is_out ? r->out : r->err) = -1;
      }
    }
    reap(false);
    if (first_failure && Clock::now() - *first_failure > grace)
      for (Rank& r : ranks)
        if (r.running) ::kill(r.pid, SIGKILL);
  }
  reap(true);
  auto ended = [](const Rank& r) {
    return "rank " + std::to_string(r.rank) +
           (WIFEXITED(r.status) ? " exited with " + std::to_string(WEXITSTATUS(r.status))
                                : " was stopped by signal " + std::to_string(WTERMSIG(r.status)));
  };
  if (const int sig = received_signal.load(); sig != 0 && failed_rank >= 0) {
    std::cerr << "ferry launch: stopped by " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ":";
    for (const Rank& r : ranks) std::cerr << (&r == &ranks.front() ? " " : ", ") << ended(r);
    std::cerr << '\n';
  } else if (failed_rank >= 0) {
    // (130, 143: stopped by a signal to another host's rank, the stop agreed across ranks)
    const bool interrupted = exit_code == 128 + SIGINT || exit_code == 128 + SIGTERM;
    std::cerr << "ferry launch: rank " << failed_rank << (interrupted ? " was interrupted" : " failed") << " (exit code "
              << exit_code << ")";
    for (const Rank& r : ranks)
      if (r.rank != failed_rank && !(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0)) std::cerr << "; " << ended(r);
    std::cerr << '\n';
  }
  return exit_code;
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto a = std::make_shared<LaunchArgs>();
  CLI::App* cmd = app.add_subcommand("launch", kLaunchDescription);
  cmd->add_option("--nproc", a->nproc, "Ranks to start on this host")->required();
  cmd->add_option("--nnodes", a->nnodes, "Hosts taking part (each runs ferry launch with its --node-rank)");
  cmd->add_option("--node-rank", a->node_rank, "This host's index, 0 .. nnodes-1 (its ranks are node-rank x nproc + i)");
  cmd->add_option("--master-addr", a->master_addr, "Address of rank 0's host, where the rendezvous store listens "
                  "(default 127.0.0.1)");
  cmd->add_option("--master-port", a->master_port, "Its port (default: a free port; needed with --nnodes)");
  cmd->add_option("--timeout", a->timeout, "Seconds any rank waits for another before giving up (FERRY_DIST_TIMEOUT; "
                  "default 300)");
  cmd->add_option("command", a->command, "The ferry command every rank runs, after --: run MODEL --prompt ...; or a "
                  "program of your own, by its path: ./my_program ARGS");
  cmd->callback([a] { finish_now(launch(*a)); });
}

}  // namespace ferry::cli
