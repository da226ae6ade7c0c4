// `ferry-torch`: the ferry commands that run LibTorch (run, offload, demo). Users type `ferry run ...`;
// `ferry` starts this program with the same arguments. See Note [Two programs, one command].
#include "commands.h"

#include "ferry/io/mapped_file_faults.h"

int main(int argc, char** argv) {
  ferry::io::install_mapped_file_fault_handler();  // a file truncated under us: a message, not "Bus error"
  CLI::App app{"ferry: run LibTorch models larger than any single memory"};
  app.name("ferry");
  app.require_subcommand(1);
  app.fallthrough();
  ferry::cli::add_offload_command(app);
  ferry::cli::add_run_command(app);
  ferry::cli::add_demo_command(app);
  return ferry::cli::run_app(app, argc, argv);
}
