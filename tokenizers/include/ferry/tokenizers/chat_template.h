#pragma once
/// \file
/// Chat templates: a model's `chat_template` (Jinja, from `tokenizer_config.json` or
/// `chat_template.jinja`) rendered in C++ to exactly the text transformers' `apply_chat_template(...,
/// tokenize=False)` gives.
///
///     auto tmpl = ferry::tokenizers::ChatTemplate::from_model_dir("models/Qwen2.5-0.5B-Instruct");
///     if (!tmpl) throw std::runtime_error("the model has no chat template");
///     std::string prompt = tmpl->render({{"system", "You are terse."}, {"user", "Hi!"}});
///     // "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
///     // "<|im_start|>assistant\n"
///     // then: tokenizer.encode(prompt) without adding special tokens (the template wrote them).
///
/// The engine is the subset of jinja2 that the published templates use (Llama 2/3.x, Qwen2.5/3,
/// Mistral, Gemma, Phi-3, ChatML...), in transformers' environment (trim_blocks, lstrip_blocks, loop
/// controls, `raise_exception`, `strftime_now`, its `tojson`). A template that needs more is refused when
/// parsed, by construct and line (`ferry::Error`: "chat_template line 3: 'include' is not supported").
/// What a template raises with `raise_exception(msg)` is a ferry::Error whose message() is msg.

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::tokenizers {

/// One turn of a conversation: role "system", "user", "assistant" (or what the template knows, such
/// as "tool"), and its text.
struct ChatMessage {
  std::string role;
  std::string content;
};

/// How to render a conversation.
struct ChatRenderOptions {
  /// End with the header of the assistant's next turn (the prompt for generation).
  bool add_generation_prompt = true;
  /// Override the special tokens of tokenizer_config.json that the template reads.
  std::optional<std::string> bos_token, eos_token;
  /// The clock of `strftime_now` (Llama 3.x's "Today Date"), as local time; std::nullopt: now.
  std::optional<std::tm> now;
};

/// A parsed chat template with the special tokens it is rendered with. Cheap to copy (shared, immutable).
class ChatTemplate {
 public:
  /// Parses a template; a syntax error or an unsupported construct is ferry::Error naming it and its
  /// line ("<origin> line N: ..."). No special tokens are set: pass them in ChatRenderOptions.
  static ChatTemplate parse(std::string_view source, std::string origin = "chat_template");
  /// The template of a model directory, as transformers loads it: `dir`/chat_template.jinja when
  /// present, else tokenizer_config.json's chat_template; with tokenizer_config.json's special tokens
  /// (bos_token, eos_token, unk_token, pad_token, ...). std::nullopt when the directory has neither.
  static std::optional<ChatTemplate> from_model_dir(const std::string& dir);
  /// tokenizer_config.json's chat_template: a string, or the list form's entry named "default" (a list
  /// without one is an error); with its bos_token/eos_token/... (strings or {"content": ...} objects).
  /// std::nullopt when it has no chat_template.
  static std::optional<ChatTemplate> from_tokenizer_config(const std::string& path);

  /// The prompt for `messages`. Throws ferry::Error for what the template raises (message() is the
  /// template's message, e.g. Mistral's "Conversation roles must alternate user/assistant/...") and for
  /// errors while rendering (with the template line).
  std::string render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& options = {}) const;
  /// Renders with the template variables as a JSON object, for what ChatMessage cannot say: messages
  /// with tool_calls or reasoning_content, `tools`, `documents`, `enable_thinking`, ...
  ///     tmpl.render_json(R"({"messages": [{"role": "user", "content": "Hi"}], "enable_thinking": false})");
  /// Messages are normalised as apply_chat_template does (null fields dropped, reasoning aliases
  /// filled). Members override the defaults: tools and documents null, add_generation_prompt and the
  /// special tokens from `options`.
  std::string render_json(std::string_view variables_json, const ChatRenderOptions& options = {}) const;

  /// The template text.
  const std::string& source() const;
  /// Where it came from (a file path, or parse()'s `origin`).
  const std::string& origin() const;
  /// The special tokens it is rendered with, by name ("bos_token", ...), in tokenizer_config.json's order.
  const std::vector<std::pair<std::string, std::string>>& special_tokens() const;
  /// One special token ("bos_token", "eos_token", ...), if the config sets it.
  std::optional<std::string> special_token(std::string_view name) const;

 private:
  struct Impl;
  explicit ChatTemplate(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace ferry::tokenizers
