#pragma once
/// \file
/// The `ferry` command's subcommands. Each lives in its own `<name>_command.cpp` and registers
/// itself on the app; main.cpp only wires them together and turns errors into exit codes.

#include <CLI/CLI.hpp>

namespace ferry::cli {

void add_plan_command(CLI::App& app);     ///< ferry plan: device maps (plan_command.cpp)
void add_inspect_command(CLI::App& app);  ///< ferry inspect: checkpoint contents (inspect_command.cpp)
void add_offload_command(CLI::App& app);  ///< ferry offload: checkpoint -> offload folder (offload_command.cpp)
void add_run_command(CLI::App& app);      ///< ferry run: load, dispatch, generate (run_command.cpp)
void add_demo_command(CLI::App& app);     ///< ferry demo: the built-in example (demo_command.cpp)

}  // namespace ferry::cli
