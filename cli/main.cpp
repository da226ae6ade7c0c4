#include "commands.h"

#include "ferry/core/error.h"

#include <iostream>

int main(int argc, char** argv) {
  CLI::App app{"ferry: run LibTorch models larger than any single memory"};
  app.require_subcommand(1);
  app.fallthrough();
  // Each subcommand registers itself; see commands.h.
  ferry::cli::add_plan_command(app);
  ferry::cli::add_inspect_command(app);
  ferry::cli::add_offload_command(app);
  ferry::cli::add_run_command(app);
  ferry::cli::add_demo_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ferry::Error& e) {
    std::cerr << "ferry: error: " << e.what() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ferry: unexpected error: " << e.what() << '\n';
    return 2;
  }
  return 0;
}
