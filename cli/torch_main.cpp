// `ferry-torch`: the ferry commands that run LibTorch (run, offload, demo, convert). Users type `ferry run ...`;
// `ferry` starts this program with the same arguments. See Note [Two programs, one command]. `plan` and
// `inspect` are here too, for PyTorch .bin checkpoints, whose zip reader is LibTorch's: `ferry` hands
// them over when the checkpoint it opens turns out to be one.
#include "commands.h"

int main(int argc, char** argv) {
  return ferry::cli::run_app(argc, argv, [](CLI::App& app) {
    ferry::cli::add_plan_command(app);
    ferry::cli::add_inspect_command(app);
    ferry::cli::add_offload_command(app);
    ferry::cli::add_run_command(app);
    ferry::cli::add_chat_command(app);
    ferry::cli::add_demo_command(app);
    ferry::cli::add_convert_command(app);
    ferry::cli::add_estimate_memory_command(app);
  });
}
