// ferry chat MODEL_DIR: an interactive chat with the model's chat template, history kept across turns.
//
// Each line read from stdin is a user turn (a terminal or a pipe alike); the conversation so far is
// rendered with tokenizer_config.json's chat_template (with the generation prompt), encoded without
// adding special tokens again (the template writes them, as transformers' apply_chat_template does),
// and the reply streams to stdout as it is generated, until EOS, a --stop string or --max-new-tokens.
// The reply's text joins the history. Lines starting with '/' are commands: /reset, /exit.

#include "commands.h"
#include "interrupt.h"
#include "model_session.h"

#include "ferry/core/error.h"
#include "ferry/distributed/process_group.h"
#include "ferry/models/generate.h"
#include "ferry/tokenizers/chat_template.h"
#include "ferry/tokenizers/stop_strings.h"
#include "ferry/tokenizers/stream_decoder.h"
#include "ferry/tokenizers/tokenizer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry::cli {
namespace {

constexpr int64_t kDefaultMaxNewTokens = 512;

struct ChatOptions {
  LoadFlags load;
  SamplingFlags sampling;
  std::string system;
  bool json = false;
};

void chat(const ChatOptions& o) {
  using namespace ferry::models;
  // The tokenizer and the template are checked before any weight is read.
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  // A conversation reads stdin, which every rank of a pipeline would read at once.
  if (std::optional<DistributedEnv> env = DistributedEnv::from_environment())
    FERRY_CHECK(env->world_size == 1, "ferry chat runs in one process (WORLD_SIZE is ", env->world_size,
                "): every rank would read the same standard input. Across ranks, use ferry run --prompt");
  const auto setup_start = std::chrono::steady_clock::now();
  tokenizers::Tokenizer tokenizer = tokenizers::Tokenizer::from_model_dir(o.load.model_dir);
  std::optional<tokenizers::ChatTemplate> chat_template = tokenizers::ChatTemplate::from_model_dir(o.load.model_dir);
  const double setup_seconds = seconds_since(setup_start);  // tokenizer and template loaded and parsed
  FERRY_CHECK(chat_template.has_value(), o.load.model_dir,
              " has no chat template (tokenizer_config.json's chat_template or chat_template.jinja): it is not a chat "
              "model; use ferry run --prompt \"text\" to continue text instead");
  PreparedModel prepared = prepare_model(o.load);
  GenerationConfig g = generation_settings(o.sampling, o.load.model_dir, prepared.config, kDefaultMaxNewTokens);
  const bool interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO) && !o.json;
  Session session = load_session(std::move(prepared), o.load, o.json ? ProgressStyle::none : ProgressStyle::automatic);
  CausalLM& model = *session.loaded.model;
  if (!o.json && !o.load.quiet) {
    print_model_info(std::cerr, session, o.load.model_dir);
    std::cerr << describe_sampling(g) << "\n";
    if (interactive) std::cerr << "type a message and Enter; /reset forgets the conversation, /exit or Ctrl-D ends it\n";
  }

  std::vector<tokenizers::ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  std::string line;
  int64_t turn = 0;
  while (true) {
    if (interactive) std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.resize(o.system.empty() ? 0 : 1);
      if (interactive) std::cerr << "(conversation forgotten)\n";
      continue;
    }
    history.push_back({"user", line});
    const auto render_start = std::chrono::steady_clock::now();
    tokenizers::ChatRenderOptions render_options;
    render_options.add_generation_prompt = true;
    const std::string rendered = chat_template->render(history, render_options);
    const std::vector<int64_t> prompt = tokenizer.encode(rendered, /*add_special_tokens=*/false);
    FERRY_CHECK(!prompt.empty(), "the chat template rendered nothing to encode");
    const double render_seconds = seconds_since(render_start);  // the history rendered and encoded
    at::Tensor ids = at::tensor(prompt, at::kLong).unsqueeze(0);
    check_input_ids(model, ids);

    tokenizers::StreamDecoder decoder(tokenizer, /*skip_special_tokens=*/true);
    tokenizers::StopStrings stops(o.sampling.stop);
    std::vector<int64_t> reply_ids;
    GenerationConfig turn_config = g;
    turn_config.on_step = [&](int64_t, const at::Tensor& next) {
      const int64_t id = next[0].item<int64_t>();
      reply_ids.push_back(id);
      if (tokenizer.id_to_token(id).has_value()) {
        const std::string shown = stops.push(decoder.push(id));
        if (!o.json) std::cout << shown << std::flush;
      }
      throw_if_interrupted();
    };
    turn_config.stopping_criteria = [&](const at::Tensor&) { return stops.stopped(); };
    GenerationOutput out = generate(model, ids, turn_config);
    const std::string tail = stops.push(decoder.finish()) + stops.finish();
    // The reply joins the history as its whole decode (special tokens left out; bytes that form no
    // character as U+FFFD), cut at the stop string: what a chat UI built on transformers keeps.
    std::vector<int64_t> with_text;
    for (int64_t id : reply_ids)
      if (tokenizer.id_to_token(id).has_value()) with_text.push_back(id);
    const std::string reply = stops.cut(tokenizer.decode(with_text, /*skip_special_tokens=*/true));
    history.push_back({"assistant", reply});
    const double decode_ms = out.decode_steps > 0 ? 1000.0 * out.decode_seconds / static_cast<double>(out.decode_steps) : 0.0;
    if (o.json) {
      nlohmann::json j = {{"turn", turn},
                          {"prompt_ids", prompt},
                          {"reply_ids", reply_ids},
                          {"reply", reply},
                          {"setup_s", setup_seconds},
                          {"template_s", render_seconds},
                          {"prefill_s", out.prefill_seconds},
                          {"decode_ms_per_token", decode_ms}};
      std::cout << j.dump() << std::endl;
    } else {
      std::cout << tail << '\n' << std::flush;
      if (!o.load.quiet)
        std::fprintf(stderr, "(%zu prompt tokens, %lld new; template and encoding %.2f ms, prefill %.3f s, decode %.2f ms/token)\n",
                     prompt.size(), static_cast<long long>(out.new_tokens), 1000 * render_seconds, out.prefill_seconds,
                     decode_ms);
    }
    ++turn;
  }
  if (interactive) std::cout << '\n';
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  CLI::App* cmd = app.add_subcommand("chat", kChatDescription);
  add_load_flags(cmd, o->load);
  cmd->add_option("--system", o->system, "A system message to start the conversation with");
  add_sampling_flags(cmd, o->sampling, kDefaultMaxNewTokens);
  cmd->add_flag("--json", o->json, "One JSON object per turn on stdout (prompt ids, reply ids and text, timings)");
  cmd->callback([o] { chat(*o); });
}

}  // namespace ferry::cli
