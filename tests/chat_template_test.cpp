// Chat templates against transformers: every case of tests/data/chat_templates/<family>.json (made by
// scripts/make_chat_template_fixtures.py with transformers' apply_chat_template) renders byte for byte,
// and what the template raises is a ferry::Error with its message; engine.json checks the Jinja features
// one by one against jinja2 in transformers' environment; refused constructs and syntax errors name
// themselves and their line; models/ holds the directories of from_model_dir.
#include "ferry/tokenizers/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "ferry/core/error.h"

namespace {

using ferry::tokenizers::ChatMessage;
using ferry::tokenizers::ChatRenderOptions;
using ferry::tokenizers::ChatTemplate;
using Json = nlohmann::ordered_json;  // key order matters: templates print dicts with tojson

const std::string kDir = std::string(FERRY_TEST_DATA_DIR) + "/chat_templates";

Json load(const std::string& name) {
  std::ifstream in(kDir + "/" + name);
  EXPECT_TRUE(in.good()) << name;
  return Json::parse(in);
}

std::tm tm_of(const Json& now) {
  std::tm t{};
  t.tm_year = now[0].get<int>() - 1900;
  t.tm_mon = now[1].get<int>() - 1;
  t.tm_mday = now[2].get<int>();
  t.tm_hour = now[3].get<int>();
  t.tm_min = now[4].get<int>();
  t.tm_sec = now[5].get<int>();
  std::mktime(&t);  // fills the weekday and the day of the year
  return t;
}

/// The messages of a case when they are plain {role, content} strings (what render() takes).
std::optional<std::vector<ChatMessage>> plain_messages(const Json& variables) {
  if (variables.size() != 1) return std::nullopt;
  std::vector<ChatMessage> out;
  for (const Json& m : variables["messages"]) {
    if (m.size() != 2 || !m.contains("role") || !m.contains("content") || !m["content"].is_string())
      return std::nullopt;
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

const char* const kFamilies[] = {"chatml", "gemma2", "llama2", "llama3", "llama3.2", "llama3.3",
                                 "mistral-v0.1", "mistral-v0.3", "phi3.5", "qwen2.5", "qwen3"};

class ChatTemplateFamily : public ::testing::TestWithParam<const char*> {};

TEST_P(ChatTemplateFamily, RendersAsTransformers) {
  const Json fixture = load(std::string(GetParam()) + ".json");
  const ChatTemplate tmpl = ChatTemplate::parse(fixture["template"].get<std::string>(), GetParam());
  ChatRenderOptions base;
  base.now = tm_of(fixture["now"]);
  const Json& special = fixture["special_tokens"];
  if (special.contains("bos_token")) base.bos_token = special["bos_token"].get<std::string>();
  if (special.contains("eos_token")) base.eos_token = special["eos_token"].get<std::string>();
  int checked = 0;
  for (const Json& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    ChatRenderOptions options = base;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    const std::string variables = c["variables"].dump();
    const auto plain = plain_messages(c["variables"]);
    if (c.contains("expected")) {
      const std::string expected = c["expected"].get<std::string>();
      EXPECT_EQ(tmpl.render_json(variables, options), expected);
      if (plain) {
        EXPECT_EQ(tmpl.render(*plain, options), expected);
      }
    } else {
      const std::string error = c["error"].get<std::string>();
      try {
        tmpl.render_json(variables, options);
        ADD_FAILURE() << "expected the template to raise: " << error;
      } catch (const ferry::Error& e) {
        EXPECT_EQ(e.message(), error);
      }
      if (plain) {
        try {
          tmpl.render(*plain, options);
          ADD_FAILURE() << "expected the template to raise: " << error;
        } catch (const ferry::Error& e) {
          EXPECT_EQ(e.message(), error);
        }
      }
    }
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

INSTANTIATE_TEST_SUITE_P(Published, ChatTemplateFamily, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(ChatTemplateEngine, FeaturesRenderAsJinja2) {
  const Json fixture = load("engine.json");
  ChatRenderOptions options;
  options.now = tm_of(fixture["now"]);
  for (const Json& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const ChatTemplate tmpl = ChatTemplate::parse(c["template"].get<std::string>(), c["name"].get<std::string>());
    // The snippets use their own variables only; messages is empty.
    Json variables = c["variables"];
    variables["messages"] = Json::array();
    if (c.contains("expected")) {
      EXPECT_EQ(tmpl.render_json(variables.dump(), options), c["expected"].get<std::string>());
    } else {
      const std::string error = c["error"].get<std::string>();  // "TemplateError: message"
      const std::string message = error.substr(error.find(": ") + 2);
      try {
        tmpl.render_json(variables.dump(), options);
        ADD_FAILURE() << "expected an error: " << error;
      } catch (const ferry::Error& e) {
        EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
      }
    }
  }
}

std::string parse_error(const std::string& source) {
  try {
    ChatTemplate::parse(source);
  } catch (const ferry::Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(ChatTemplateEngine, RefusesUnsupportedConstructsByNameAndLine) {
  EXPECT_EQ(parse_error("{% include 'other.jinja' %}"), "chat_template line 1: 'include' is not supported");
  EXPECT_EQ(parse_error("a\nb\n{% extends 'base' %}"), "chat_template line 3: 'extends' is not supported");
  EXPECT_EQ(parse_error("{% raw %}x{% endraw %}"), "chat_template line 1: 'raw' is not supported");
  EXPECT_EQ(parse_error("{% call m() %}x{% endcall %}"), "chat_template line 1: 'call' is not supported");
  EXPECT_EQ(parse_error("x\n{{ text | indent(4) }}"), "chat_template line 2: filter 'indent' is not supported");
  EXPECT_EQ(parse_error("{% if x is divisible %}{% endif %}"), "chat_template line 1: test 'divisible' is not supported");
  EXPECT_EQ(parse_error("\n\n\n{{ '{} and {}'.format(a, b) }}"), "chat_template line 4: method 'format()' is not supported");
  EXPECT_EQ(parse_error("{% for m in messages recursive %}{% endfor %}"),
            "chat_template line 1: 'recursive' loops are not supported");
  EXPECT_EQ(parse_error("{{ f(*args) }}"), "chat_template line 1: '*args' and '**kwargs' in calls are not supported");
  EXPECT_EQ(parse_error("{% frobnicate %}"), "chat_template line 1: 'frobnicate' is not supported (an unknown tag)");
}

TEST(ChatTemplateEngine, SyntaxErrorsNameTheirLine) {
  EXPECT_EQ(parse_error("{% for m in messages %}\n{{ m }}"),
            "chat_template line 1: this block is never closed: the template ends where 'endfor' or 'else' was expected");
  EXPECT_EQ(parse_error("ok\n{{ 1 + }}"), "chat_template line 2: expected an expression, got '}}'");
  EXPECT_EQ(parse_error("\n{% endif %}"), "chat_template line 2: unexpected 'endif'");
  EXPECT_EQ(parse_error("{{ 'open }}"), "chat_template line 1: unterminated string literal");
  EXPECT_EQ(parse_error("x\ny\n{{ a"), "chat_template line 3: unclosed tag: '{{' without '}}'");
  EXPECT_EQ(parse_error("{# never closed"), "chat_template line 1: unclosed comment: '{#' without '#}'");
  EXPECT_EQ(parse_error("{% if x %}{% else %}{% elif y %}{% endif %}"),
            "chat_template line 1: unexpected 'elif'");
  EXPECT_EQ(parse_error("{{ a ) }}"), "chat_template line 1: unexpected ')'");
  try {
    ChatTemplate::parse("{% if %}", "my.jinja");
    ADD_FAILURE();
  } catch (const ferry::Error& e) {
    EXPECT_EQ(std::string(e.what()), "[ChatTemplate::parse] my.jinja line 1: expected an expression, got '%}'");
  }
}

TEST(ChatTemplateEngine, RenderErrorsNameTheirLine) {
  const ChatTemplate t = ChatTemplate::parse("line 1\n{{ messages[0].nope.deeper }}");
  try {
    t.render({{"user", "hi"}});
    ADD_FAILURE();
  } catch (const ferry::Error& e) {
    EXPECT_EQ(e.message(), "chat_template line 2: 'dict object' has no attribute 'nope'");
  }
  const ChatTemplate u = ChatTemplate::parse("{{ 'a' + 1 }}");
  EXPECT_THROW(u.render({}), ferry::Error);
}

TEST(ChatTemplateEngine, RaiseExceptionIsTheTemplatesMessage) {
  const ChatTemplate t =
      ChatTemplate::parse("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok");
  EXPECT_EQ(t.render({{"user", "hi"}}), "ok");
  try {
    t.render({{"system", "s"}, {"user", "hi"}});
    ADD_FAILURE();
  } catch (const ferry::Error& e) {
    EXPECT_EQ(e.message(), "System role not supported");
    EXPECT_EQ(e.function(), "ChatTemplate::render");
  }
}

TEST(ChatTemplateEngine, OptionsOverrideSpecialTokens) {
  const ChatTemplate t = ChatTemplate::parse("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}");
  EXPECT_EQ(t.render({}), "||True");
  ChatRenderOptions o;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  o.add_generation_prompt = false;
  EXPECT_EQ(t.render({}, o), "<s>|</s>|False");
}

// ---- model directories -----------------------------------------------------------------------

std::string expected_of(const std::string& family, const std::string& case_name) {
  const Json fixture = load(family + ".json");
  for (const Json& c : fixture["cases"])
    if (c["name"] == case_name) return c["expected"].get<std::string>();
  ADD_FAILURE() << family << " has no case " << case_name;
  return "";
}

ChatRenderOptions generation(bool on) {
  ChatRenderOptions o;
  o.add_generation_prompt = on;
  return o;
}

const std::vector<ChatMessage> kHi = {{"user", "Hello! How are you?"}};
const std::vector<ChatMessage> kMultiTurn = {
    {"user", "Hello! How are you?"}, {"assistant", "I'm fine, thanks. And you?"}, {"user", "Tell me a joke."}};

TEST(ChatTemplateModelDir, StringFormWithTokenObjects) {
  auto t = ChatTemplate::from_model_dir(kDir + "/models/string_form");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->special_token("bos_token"), "<s>");  // {"content": "<s>", ...}
  EXPECT_EQ(t->special_token("eos_token"), "</s>");
  EXPECT_EQ(t->special_token("pad_token"), std::nullopt);  // null
  EXPECT_EQ(t->render(kMultiTurn), expected_of("mistral-v0.1", "multi_turn"));
  auto same = ChatTemplate::from_tokenizer_config(kDir + "/models/string_form/tokenizer_config.json");
  ASSERT_TRUE(same.has_value());
  EXPECT_EQ(same->render(kMultiTurn), expected_of("mistral-v0.1", "multi_turn"));
  EXPECT_NE(same->origin().find("tokenizer_config.json"), std::string::npos);
}

TEST(ChatTemplateModelDir, ListFormUsesDefault) {
  auto t = ChatTemplate::from_model_dir(kDir + "/models/list_form");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->special_token("bos_token"), std::nullopt);
  EXPECT_EQ(t->render(kHi), expected_of("qwen2.5", "user"));
  EXPECT_EQ(t->render(kHi, generation(false)), expected_of("qwen2.5", "user_no_generation_prompt"));
}

TEST(ChatTemplateModelDir, ListWithoutDefaultIsAnError) {
  try {
    ChatTemplate::from_model_dir(kDir + "/models/list_without_default");
    ADD_FAILURE();
  } catch (const ferry::Error& e) {
    EXPECT_NE(e.message().find("none named \"default\" (it has: rag)"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplateModelDir, JinjaFileWinsOverTheConfig) {
  auto t = ChatTemplate::from_model_dir(kDir + "/models/jinja_file");
  ASSERT_TRUE(t.has_value());
  EXPECT_NE(t->origin().find("chat_template.jinja"), std::string::npos);
  EXPECT_EQ(t->render(kMultiTurn), expected_of("llama3", "multi_turn"));  // bos_token from the config
}

TEST(ChatTemplateModelDir, NoTemplateIsNullopt) {
  EXPECT_FALSE(ChatTemplate::from_model_dir(kDir + "/models/no_template").has_value());
  EXPECT_FALSE(ChatTemplate::from_model_dir(kDir + "/models/does_not_exist").has_value());
  EXPECT_FALSE(ChatTemplate::from_tokenizer_config(kDir + "/models/no_template/tokenizer_config.json").has_value());
  EXPECT_THROW(ChatTemplate::from_tokenizer_config(kDir + "/models/does_not_exist/tokenizer_config.json"), ferry::Error);
}

}  // namespace
