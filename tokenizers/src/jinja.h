// A Jinja engine for chat templates: the subset of jinja2 that Hugging Face chat templates use, in the
// environment transformers renders them in (trim_blocks, lstrip_blocks, loop controls, the sandbox's
// read-only objects, transformers' tojson, raise_exception and strftime_now). Anything else is refused
// by name and line when parsing. ChatTemplate (chat_template.h) is the public face. Internal.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "jinja_ast.h"
#include "jinja_value.h"

namespace ferry::tokenizers::jinja {

/// A template error: `message` without the location; `line` 0 when unknown.
struct TemplateError {
  int line;
  std::string message;
};

/// What raise_exception(message) throws: the template's own message.
struct RaisedException {
  std::string message;
};

/// Parses a template; throws TemplateError for a syntax error or a construct outside the subset.
Body parse(std::string_view source);

/// Renders `body` with `globals` as the template's variables (messages, bos_token, ..., and the
/// functions raise_exception, strftime_now, namespace, range, dict). Throws TemplateError or
/// RaisedException.
std::string render(const Body& body, const Object& globals);

}  // namespace ferry::tokenizers::jinja
