// `ferry`: plans and inspects in-process; hands the commands that run LibTorch to `ferry-torch`.
// See Note [Two programs, one command] in commands.h.
#include "commands.h"

#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

namespace {

bool is_torch_command(const char* name) {
  const std::string n = name;
  return n == "run" || n == "chat" || n == "offload" || n == "demo" || n == "convert" || n == "estimate-memory";
}

// ferry-torch next to this program (the build tree, a bin/ install), or in ../libexec/ferry/.
std::string find_torch_program() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const fs::path& candidate : {self.parent_path() / "ferry-torch", self.parent_path() / ".." / "libexec" / "ferry" / "ferry-torch"})
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  return "";
}

int exec_torch_program(int argc, char** argv) {
  const std::string program = find_torch_program();
  if (program.empty()) {
    std::cerr << "ferry: error: '" << argv[1] << "' runs in ferry-torch, which was not found next to this program or "
              << "in ../libexec/ferry/; reinstall ferry (cmake --install) or run it from the build folder\n";
    return 1;
  }
  (void)argc;
  ::execv(program.c_str(), argv);
  std::cerr << "ferry: error: cannot start " << program << ": " << std::strerror(errno) << '\n';
  return 1;
}

char** command_line = nullptr;

// The lister of .bin checkpoints in this program, which has no zip reader (LibTorch's is in
// ferry-torch): `plan` and `inspect` open their checkpoint before printing anything, so when it
// turns out to be a .bin, the command is handed to ferry-torch, which runs it with the same arguments.
ferry::io::internal::TorchCheckpointContents hand_bin_checkpoint_to_torch_program(const std::string& path) {
  const std::string program = find_torch_program();
  FERRY_CHECK(!program.empty(), path, " is a PyTorch .bin checkpoint, which ferry-torch reads, but ferry-torch was not "
              "found next to this program or in ../libexec/ferry/; reinstall ferry (cmake --install)");
  std::cout.flush();
  std::fflush(nullptr);
  ::execv(program.c_str(), command_line);
  FERRY_FAIL("cannot start ", program, " to read the PyTorch checkpoint ", path, ": ", std::strerror(errno));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && is_torch_command(argv[1])) return exec_torch_program(argc, argv);
  command_line = argv;
  ferry::io::internal::set_torch_checkpoint_lister(&hand_bin_checkpoint_to_torch_program);
  return ferry::cli::run_app(argc, argv, [](CLI::App& app) {
    ferry::cli::add_plan_command(app);
    ferry::cli::add_inspect_command(app);
    ferry::cli::add_tokenize_command(app);
    ferry::cli::add_launch_command(app);
    // Listed here for `ferry --help`; main() hands them to ferry-torch before parsing.
    app.add_subcommand("offload", ferry::cli::kOffloadDescription);
    app.add_subcommand("run", ferry::cli::kRunDescription);
    app.add_subcommand("chat", ferry::cli::kChatDescription);
    app.add_subcommand("demo", ferry::cli::kDemoDescription);
    app.add_subcommand("convert", ferry::cli::kConvertDescription);
    app.add_subcommand("estimate-memory", ferry::cli::kEstimateMemoryDescription);
  });
}
