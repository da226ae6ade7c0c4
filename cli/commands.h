#pragma once
/// \file
/// The `ferry` command's subcommands. Each lives in its own `<name>_command.cpp` and registers
/// itself on the app; main.cpp only wires them together and turns errors into exit codes.
///
/// Note [Two programs, one command]: loading LibTorch's kernels costs about 0.4 s and 160 MB before
/// main() runs, more than `ferry plan` needs to plan a 100,000-tensor checkpoint. So `ferry` itself
/// (main.cpp) links only c10 and ferry's planning and file layers, and runs `plan` and `inspect`;
/// the commands that build a model or read PyTorch pickles (`run`, `chat`, `offload`, `demo`, `convert`,
/// `estimate-memory`) live in `ferry-torch` (torch_main.cpp), which `ferry` replaces itself with
/// (execv, same arguments, same exit status) when one is asked. `plan` and `inspect` of a PyTorch .bin
/// checkpoint are handed over the same way, when the checkpoint they open turns out to be one (its
/// zip reader is LibTorch's); ferry-torch registers them too.

#include <CLI/CLI.hpp>

namespace ferry::cli {

inline constexpr const char* kRunDescription =
    "Load a Hugging Face checkpoint folder and generate: text in and out (--prompt), or token ids (--ids)";
inline constexpr const char* kChatDescription =
    "Chat with a model: its chat template, the conversation kept, replies streamed (stdin may be a pipe)";
inline constexpr const char* kOffloadDescription =
    "Write a checkpoint's tensors as an Accelerate offload folder (index.json + one .dat per tensor)";
inline constexpr const char* kConvertDescription =
    "Write a checkpoint (PyTorch .bin/.pt/.pth or safetensors) as a sharded safetensors checkpoint";
inline constexpr const char* kEstimateMemoryDescription =
    "Memory a model needs per dtype, resident and offloaded, from its config.json alone (no weights)";
inline constexpr const char* kTokenizeDescription =
    "Text to token ids and pieces with a model's tokenizer.json or tokenizer.model (or --decode ids to text)";
inline constexpr const char* kLaunchDescription =
    "Start N ranks of a ferry command on this host, as torchrun does: ferry launch --nproc 2 -- run MODEL ...";
inline constexpr const char* kDemoDescription =
    "Write a tiny Llama checkpoint and run it resident and offloaded to disk";

void add_plan_command(CLI::App& app);     ///< ferry plan: device maps (plan_command.cpp)
void add_inspect_command(CLI::App& app);  ///< ferry inspect: checkpoint contents (inspect_command.cpp)
void add_offload_command(CLI::App& app);  ///< ferry offload: checkpoint -> offload folder (offload_command.cpp)
void add_run_command(CLI::App& app);      ///< ferry run: load, dispatch, generate (run_command.cpp)
void add_chat_command(CLI::App& app);     ///< ferry chat: a conversation through the chat template (chat_command.cpp)
void add_demo_command(CLI::App& app);     ///< ferry demo: the built-in example (demo_command.cpp)
void add_convert_command(CLI::App& app);  ///< ferry convert: .bin or safetensors -> safetensors (convert_command.cpp)
void add_estimate_memory_command(CLI::App& app);  ///< ferry estimate-memory (estimate_memory_command.cpp)
void add_tokenize_command(CLI::App& app);  ///< ferry tokenize: text <-> ids (tokenize_command.cpp)
void add_launch_command(CLI::App& app);    ///< ferry launch: N ranks of a command (launch_command.cpp)

/// The main() of both programs: installs the SIGBUS message (io/mapped_file_faults.h), builds the
/// `ferry` app with the subcommands `add_commands` registers, parses and runs, and maps errors to
/// exit codes: 0, 1 for a ferry::Error (one line on stderr), 128 + signal after Ctrl-C, 2 for
/// anything unexpected; CLI11's own codes for bad arguments.
int run_app(int argc, char** argv, void (*add_commands)(CLI::App& app));

/// Flushes stdout and stderr and ends the process with `code`, without destroying what the command
/// built: freeing the 100,000-tensor listing and tree that `plan` and `inspect` just printed costs
/// a tenth of their run, for nothing (clang skips freeing at exit for the same reason). Only for
/// commands that hold nothing else to finish: no files open for writing, no threads.
[[noreturn]] void finish_now(int code = 0);

}  // namespace ferry::cli
