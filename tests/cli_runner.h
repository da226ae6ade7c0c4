#pragma once
// Runs the built `ferry` executable from tests (FERRY_CLI_PATH), capturing stdout and stderr.

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace ferry::test {

/// Exit status (-1 if it could not run) and everything the command printed.
struct CliRun {
  int status = -1;
  std::string output;
};

/// Runs `ferry <args>` through the shell (quote paths in `args`).
inline CliRun run_ferry(const std::string& args) {
  CliRun r;
  std::string cli = FERRY_CLI_PATH;
  if (cli.empty()) return r;
  FILE* pipe = ::popen(("'" + cli + "' " + args + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.output.append(buffer.data(), n);
  int raw = ::pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

}  // namespace ferry::test
