// ChatTemplate: finding a model's chat template and its special tokens, and rendering it with the
// variables transformers' apply_chat_template passes. The Jinja engine is jinja.h; see chat_template.h.
#include "ferry/tokenizers/chat_template.h"

#include <chrono>
#include <filesystem>

#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"
#include "jinja.h"

namespace ferry::tokenizers {

using io::JsonValue;
namespace fs = std::filesystem;

struct ChatTemplate::Impl {
  std::string source;
  std::string origin;
  jinja::Body body;
  std::vector<std::pair<std::string, std::string>> special_tokens;
};

namespace {

/// transformers' SPECIAL_TOKENS_ATTRIBUTES: the named special tokens a template sees as variables.
constexpr const char* kSpecialTokenNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};

jinja::Value from_json(const JsonValue& v) {
  switch (v.type()) {
    case JsonValue::Type::Null: return jinja::Value::none();
    case JsonValue::Type::Bool: return jinja::Value(*v.as_bool());
    case JsonValue::Type::Int:
    case JsonValue::Type::Uint:
      if (auto i = v.as_int64()) return jinja::Value(*i);
      return jinja::Value(*v.as_double());
    case JsonValue::Type::Double: return jinja::Value(*v.as_double());
    case JsonValue::Type::String: return jinja::Value(std::string(*v.as_string()));
    case JsonValue::Type::Array: {
      std::vector<jinja::Value> items;
      for (JsonValue e : v.elements()) items.push_back(from_json(e));
      return jinja::Value(std::move(items));
    }
    case JsonValue::Type::Object: {
      jinja::Object o;
      for (auto [k, e] : v.items()) o.set(std::string(k), from_json(e));
      return jinja::Value(std::move(o));
    }
  }
  return jinja::Value();
}

/// A message as apply_chat_template hands it to the template: fields that are None dropped, and the
/// reasoning under all its names (`{"thinking": r, **message, "reasoning_content": r}`).
jinja::Value normalize_message(const jinja::Value& m) {
  if (!m.is_object()) return m;
  jinja::Object kept;
  for (const auto& [k, v] : m.object().items)
    if (!v.is_none()) kept.items.emplace_back(k, v);
  std::optional<jinja::Value> reasoning;
  for (const char* name : {"reasoning_content", "thinking", "reasoning"})
    if (const jinja::Value* r = kept.find(name); r && !reasoning) reasoning = *r;
  if (!reasoning) return jinja::Value(std::move(kept));
  jinja::Object aliased;
  aliased.set("thinking", *reasoning);
  for (const auto& [k, v] : kept.items) aliased.set(k, v);
  aliased.set("reasoning_content", *reasoning);
  return jinja::Value(std::move(aliased));
}

std::string strftime_now(const std::string& format, const std::optional<std::tm>& now) {
  std::tm t;
  if (now) {
    t = *now;
  } else {
    std::time_t clock = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    localtime_r(&clock, &t);
  }
  if (format.empty()) return "";
  std::string out(256, '\0');
  for (int tries = 0; tries < 8; ++tries) {
    size_t n = std::strftime(out.data(), out.size(), format.c_str(), &t);
    if (n > 0) {
      out.resize(n);
      return out;
    }
    out.resize(out.size() * 4);
  }
  return "";
}

std::string token_text(const JsonValue& v) {
  if (auto s = v.as_string()) return std::string(*s);
  if (auto content = v.find("content"))
    if (auto s = content->as_string()) return std::string(*s);
  return "";
}

/// Renders `body` with transformers' variables: tools and documents None, add_generation_prompt, the
/// special tokens (the options' overrides first), strftime_now; then `vars` over them.
std::string render_with(const jinja::Body& body, const std::string& origin,
                        const std::vector<std::pair<std::string, std::string>>& special_tokens, jinja::Object vars,
                        const ChatRenderOptions& options) {
  jinja::Object globals;
  globals.set("tools", jinja::Value::none());
  globals.set("documents", jinja::Value::none());
  globals.set("add_generation_prompt", jinja::Value(options.add_generation_prompt));
  for (const auto& [name, text] : special_tokens) globals.set(name, jinja::Value(text));
  if (options.bos_token) globals.set("bos_token", jinja::Value(*options.bos_token));
  if (options.eos_token) globals.set("eos_token", jinja::Value(*options.eos_token));
  const std::optional<std::tm> now = options.now;
  globals.set("strftime_now", jinja::Value::function("strftime_now", [now](const jinja::Args& a) {
                return jinja::Value(strftime_now(a.positional.empty() ? "" : jinja::to_str(a.positional[0]), now));
              }));
  for (auto& [k, v] : vars.items) globals.set(k, std::move(v));
  try {
    return jinja::render(body, globals);
  } catch (const jinja::RaisedException& e) {
    throw Error("ChatTemplate::render", e.message);
  } catch (const jinja::TemplateError& e) {
    throw Error("ChatTemplate::render", origin + " line " + std::to_string(e.line) + ": " + e.message);
  }
}

}  // namespace

ChatTemplate ChatTemplate::parse(std::string_view source, std::string origin) {
  auto impl = std::make_shared<Impl>();
  impl->source = std::string(source);
  impl->origin = std::move(origin);
  try {
    impl->body = jinja::parse(impl->source);
  } catch (const jinja::TemplateError& e) {
    throw Error("ChatTemplate::parse", impl->origin + " line " + std::to_string(e.line) + ": " + e.message);
  }
  return ChatTemplate(std::move(impl));
}

std::optional<ChatTemplate> ChatTemplate::from_tokenizer_config(const std::string& path) {
  io::JsonDocument doc = [&] {
    try {
      return io::read_json_file(path);
    } catch (const Error& e) {
      throw e.in("ChatTemplate::from_tokenizer_config");
    }
  }();
  const JsonValue& root = doc.root();
  FERRY_CHECK(root.is_object(), path, " is not a JSON object");
  auto entry = root.find("chat_template");
  if (!entry || entry->is_null()) return std::nullopt;
  std::string source;
  std::string origin = path + " chat_template";
  if (auto s = entry->as_string()) {
    source = std::string(*s);
  } else if (entry->is_array()) {
    std::string names;
    bool found = false;
    for (JsonValue t : entry->elements()) {
      auto name = t.find("name");
      auto text = t.find("template");
      FERRY_CHECK(name && text && name->is_string() && text->is_string(), path,
                  ": each entry of the chat_template list needs a \"name\" and a \"template\" string, got ",
                  t.dump());
      names += (names.empty() ? "" : ", ") + std::string(*name->as_string());
      if (*name->as_string() == "default") {
        source = std::string(*text->as_string());
        origin = path + " chat_template \"default\"";
        found = true;
      }
    }
    FERRY_CHECK(found, path, " has several chat templates and none named \"default\" (it has: ", names, ")");
  } else {
    FERRY_FAIL(path, ": chat_template must be a string or a list of {\"name\", \"template\"}, got ", entry->dump());
  }
  ChatTemplate t = parse(source, origin);
  auto impl = std::const_pointer_cast<Impl>(t.impl_);
  for (const char* name : kSpecialTokenNames)
    if (auto v = root.find(name); v && !v->is_null()) impl->special_tokens.emplace_back(name, token_text(*v));
  return t;
}

std::optional<ChatTemplate> ChatTemplate::from_model_dir(const std::string& dir) {
  const fs::path jinja_file = fs::path(dir) / "chat_template.jinja";
  const fs::path config = fs::path(dir) / "tokenizer_config.json";
  std::error_code ec;
  const bool has_config = fs::is_regular_file(config, ec);
  if (fs::is_regular_file(jinja_file, ec)) {  // transformers prefers it to the config's entry
    ChatTemplate t = parse(io::read_regular_file(jinja_file.string(), "ChatTemplate::from_model_dir"),
                           jinja_file.string());
    if (has_config) {
      io::JsonDocument doc = io::read_json_file(config.string());
      auto impl = std::const_pointer_cast<Impl>(t.impl_);
      if (doc.root().is_object())
        for (const char* name : kSpecialTokenNames)
          if (auto v = doc.root().find(name); v && !v->is_null())
            impl->special_tokens.emplace_back(name, token_text(*v));
    }
    return t;
  }
  if (!has_config) return std::nullopt;
  return from_tokenizer_config(config.string());
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& options) const {
  std::vector<jinja::Value> list;
  for (const ChatMessage& m : messages) {
    jinja::Object o;
    o.set("role", jinja::Value(m.role));
    o.set("content", jinja::Value(m.content));
    list.emplace_back(std::move(o));
  }
  jinja::Object vars;
  vars.set("messages", jinja::Value(std::move(list)));
  return render_with(impl_->body, impl_->origin, impl_->special_tokens, std::move(vars), options);
}

std::string ChatTemplate::render_json(std::string_view variables_json, const ChatRenderOptions& options) const {
  io::JsonDocument doc = [&] {
    try {
      return io::parse_json(variables_json, "the chat template's variables");
    } catch (const Error& e) {
      throw e.in("ChatTemplate::render_json");
    }
  }();
  FERRY_CHECK(doc.root().is_object(), "the chat template's variables must be a JSON object, got ", doc.root().dump());
  jinja::Object vars;
  for (auto [k, v] : doc.root().items()) {
    jinja::Value value = from_json(v);
    if (k == "messages" && value.is_array()) {
      std::vector<jinja::Value> messages;
      for (const jinja::Value& m : value.array()) messages.push_back(normalize_message(m));
      value = jinja::Value(std::move(messages));
    }
    vars.set(std::string(k), std::move(value));
  }
  return render_with(impl_->body, impl_->origin, impl_->special_tokens, std::move(vars), options);
}

const std::string& ChatTemplate::source() const { return impl_->source; }
const std::string& ChatTemplate::origin() const { return impl_->origin; }
const std::vector<std::pair<std::string, std::string>>& ChatTemplate::special_tokens() const {
  return impl_->special_tokens;
}
std::optional<std::string> ChatTemplate::special_token(std::string_view name) const {
  for (const auto& [k, v] : impl_->special_tokens)
    if (k == name) return v;
  return std::nullopt;
}

}  // namespace ferry::tokenizers
