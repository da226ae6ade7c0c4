#!/usr/bin/env python3
"""Writes the chat-template references of tests/chat_template_test.cpp: for each template family,
tests/data/chat_templates/<family>.json with the template, its special tokens and cases (the template's
variables, add_generation_prompt) rendered by transformers itself: `apply_chat_template(tokenize=False)`
of a PreTrainedTokenizerFast that carries the template and the family's special tokens. A case the
template refuses records the message of its raise_exception. Also writes the model directories of the
from_model_dir tests (tests/data/chat_templates/models/).

Run with the project's virtual environment (transformers, jinja2, tokenizers from PyPI):

    .venv/bin/python scripts/make_chat_template_fixtures.py

The templates are the published ones, committed as tests/data/chat_templates/templates/<family>.jinja
(no Hub access here): each was copied from a public copy of the model's tokenizer_config.json
`chat_template` (see SOURCES) and, where a byte count was known, checked against it.
"""

import datetime as _datetime
import json
import os
import shutil

import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "chat_templates")
TEMPLATES = os.path.join(ROOT, "templates")

# Where each template's text comes from (the model, then the public copy it was read from).
SOURCES = {
    "llama2": "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (as quoted verbatim by several projects, "
              "e.g. llama.cpp tests/test-chat-template.cpp)",
    "llama3": "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (as quoted in llama.cpp "
              "tests/test-chat-template.cpp and others)",
    "llama3.2": "meta-llama/Llama-3.2-3B-Instruct (llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja)",
    "llama3.3": "meta-llama/Llama-3.3-70B-Instruct (llama.cpp models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja); "
                "Llama 3.1 Instruct's template has the same builtin_tools/tool-call logic (not compared here)",
    "qwen2.5": "Qwen/Qwen2.5-*-Instruct tokenizer_config.json (quoted verbatim in a public project's docstring)",
    "qwen3": "Qwen/Qwen3-0.6B (llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja)",
    "mistral-v0.1": "mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json "
                    "(llama-cpp-python llama_chat_format.py MISTRAL_INSTRUCT_CHAT_TEMPLATE)",
    "mistral-v0.3": "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json (quoted verbatim in a public project)",
    "gemma2": "google/gemma-2-2b-it (llama.cpp models/templates/google-gemma-2-2b-it.jinja)",
    "phi3.5": "microsoft/Phi-3.5-mini-instruct (llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja)",
    "chatml": "teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json "
              "(llama-cpp-python llama_chat_format.py CHATML_CHAT_TEMPLATE)",
}

SPECIAL = {
    "llama2": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "mistral-v0.1": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral-v0.3": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma2": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "phi3.5": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "chatml": {"bos_token": "<s>", "eos_token": "<|im_end|>"},
}

# strftime_now's clock, pinned so that references do not depend on the day they were made.
NOW = (2025, 3, 14, 15, 9, 26)


class _FixedDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(*NOW)


ctu.datetime = _FixedDatetime  # transformers' strftime_now reads chat_template_utils.datetime


def msg(role, content, **extra):
    return {"role": role, "content": content, **extra}


UNICODE = "Héllo wörld 👋🏽 — 日本語, ελληνικά, emoji ZWJ 👨‍👩‍👧 and a\u00a0no-break space"
TRICKY = ' He said "hi" and \'bye\'\n{{ not a tag }} {% if %} {# nor a comment #}\n\tback\\slash [INST] </s>  '

SYSTEM = msg("system", "You are a helpful assistant.")
HI = msg("user", "Hello! How are you?")
REPLY = msg("assistant", "I'm fine, thanks. And you?")
AGAIN = msg("user", "Tell me a joke.")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def base_cases(system_ok=True):
    """Cases every family renders (the system ones where the template allows a system message)."""
    cases = [
        ("user", {"messages": [HI]}, True),
        ("user_no_generation_prompt", {"messages": [HI]}, False),
        ("multi_turn", {"messages": [HI, REPLY, AGAIN]}, True),
        ("ends_with_assistant", {"messages": [HI, REPLY]}, False),
        ("unicode", {"messages": [msg("user", UNICODE), msg("assistant", UNICODE + " ✓"), msg("user", "日本語?")]}, True),
        ("quotes_newlines_braces", {"messages": [msg("user", TRICKY), msg("assistant", TRICKY), msg("user", TRICKY)]}, True),
        ("empty_content", {"messages": [msg("user", "")]}, True),
    ]
    if system_ok:
        cases += [
            ("system_user", {"messages": [SYSTEM, HI]}, True),
            ("system_multi_turn", {"messages": [SYSTEM, HI, REPLY, AGAIN]}, True),
            ("system_multiline", {"messages": [msg("system", "  Line one.\nLine two.\n\n"), HI]}, True),
        ]
    return cases


def family_cases(family):
    cases = []
    if family in ("mistral-v0.1", "gemma2"):
        cases += base_cases(system_ok=False)
        cases.append(("system_refused", {"messages": [SYSTEM, HI]}, True))
    else:
        cases += base_cases()
    if family in ("llama2", "mistral-v0.1", "mistral-v0.3", "gemma2"):
        cases.append(("roles_must_alternate", {"messages": [HI, AGAIN]}, True))
        cases.append(("starts_with_assistant", {"messages": [REPLY, HI]}, True))
    if family == "llama3.2":
        cases += [
            ("date_string", {"messages": [HI], "date_string": "01 Jan 2030"}, True),
            ("tools", {"messages": [SYSTEM, msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL]}, True),
            ("tools_in_system", {"messages": [SYSTEM, msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL],
                                 "tools_in_user_message": False}, True),
            ("tool_call_and_result", {"messages": [
                msg("user", "Weather in Paris?"),
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                    "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
                msg("tool", "{\"temperature\": 21}"),
                msg("tool", {"temperature": 21, "sky": "clear"}),
            ]}, True),
            ("two_tool_calls_refused", {"messages": [HI, {"role": "assistant", "tool_calls": [
                {"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]}]}, True),
            ("tools_without_user_refused", {"messages": [SYSTEM], "tools": [WEATHER_TOOL]}, True),
        ]
    if family == "llama3.3":
        cases += [
            ("builtin_tools", {"messages": [SYSTEM, HI], "builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}, True),
            ("builtin_tool_call", {"messages": [HI, {"role": "assistant", "tool_calls": [{"function": {
                "name": "brave_search", "arguments": {"query": "weather Paris"}}}]}, msg("ipython", "sunny")],
                "builtin_tools": ["brave_search"]}, True),
            ("custom_tools", {"messages": [msg("user", "  Weather in Paris?  ")], "custom_tools": [WEATHER_TOOL]}, True),
            ("json_tool_call", {"messages": [HI, {"role": "assistant", "tool_calls": [{"function": {
                "name": "get_weather", "arguments": {"city": "Zürich"}}}]}, msg("tool", [1, 2, "three"])]}, True),
        ]
    if family in ("qwen2.5", "qwen3"):
        cases += [
            ("tools", {"messages": [SYSTEM, msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL]}, True),
            ("tools_no_system", {"messages": [msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL]}, True),
            ("tool_calls_and_responses", {"messages": [
                msg("user", "Weather in Paris and Rome?"),
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
                msg("tool", "{\"temperature\": 21}"),
                msg("tool", "{\"temperature\": 25}"),
                msg("assistant", "Paris 21°C, Rome 25°C."),
                msg("user", "Thanks"),
            ], "tools": [WEATHER_TOOL]}, True),
        ]
    if family == "qwen3":
        think = "<think>\nThe user greets me.\nI should answer.\n</think>\n\nHello there!"
        cases += [
            ("think_in_history", {"messages": [HI, msg("assistant", think), AGAIN]}, True),
            ("think_in_last_turn", {"messages": [HI, msg("assistant", think)]}, False),
            ("reasoning_content", {"messages": [HI, msg("assistant", "Hello there!", reasoning_content="Greeting.")]}, False),
            ("reasoning_alias", {"messages": [HI, msg("assistant", "Hi!", reasoning="Short.")]}, False),
            ("enable_thinking_false", {"messages": [HI], "enable_thinking": False}, True),
            ("enable_thinking_true", {"messages": [HI], "enable_thinking": True}, True),
            ("tool_response_user", {"messages": [msg("user", "<tool_response>x</tool_response>"),
                                                 msg("assistant", "<think>a</think>b")]}, False),
            ("null_content_dropped", {"messages": [HI, {"role": "assistant", "content": "ok", "tool_calls": None}]}, False),
        ]
    if family == "mistral-v0.3":
        cases += [
            ("tools", {"messages": [SYSTEM, msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL]}, True),
            ("tool_call_and_result", {"messages": [
                msg("user", "Weather in Paris?"),
                {"role": "assistant", "tool_calls": [{"id": "abcdef123", "type": "function", "function": {
                    "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_call_id": "abcdef123", "content": {"content": 21}},
                msg("assistant", "21°C."),
                msg("user", "Thanks"),
            ], "tools": [WEATHER_TOOL]}, True),
            ("bad_tool_call_id", {"messages": [HI, {"role": "assistant", "tool_calls": [{"id": "short", "function": {
                "name": "f", "arguments": {}}}]}]}, True),
            ("unknown_role", {"messages": [HI, msg("narrator", "...")]}, True),
        ]
    return cases


# Small templates for the engine's features one by one, rendered in transformers' jinja2 environment
# (tests/data/chat_templates/engine.json).
ENGINE_SNIPPETS = [
    ("loop_variables", "{% for x in items %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}/{{ loop.previtem }}/{{ loop.nextitem }}|{% endfor %}", {"items": ["a", "b", "c"]}),
    ("loop_else_and_filter", "{% for x in items if x > 1 %}{{ x }}{% else %}none{% endfor %};{% for x in [] %}{{ x }}{% else %}empty{% endfor %}", {"items": [1, 2, 3]}),
    ("loop_cycle_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 5 %}{% break %}{% endif %}{{ loop.cycle('a', 'b') }}{{ x }} {% endfor %}", {}),
    ("loop_scope", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }} {% endfor %}{{ x }}", {}),
    ("namespace", "{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    ("reverse_slices", "{{ items[::-1] }} {{ items[1:] }} {{ items[:-1] }} {{ items[-1] }} {{ 'héllo'[1:3] }} {{ 'abc'[::-1] }} {{ items | reverse | list }} {% for x in items | reverse %}{{ x }}{% endfor %}", {"items": [1, 2, 3, 4]}),
    ("dict_iteration", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}{{ d.keys() | list }}{{ d.values() | list }}{{ d.get('a') }}{{ d.get('z', 'dflt') }}{{ d.get('z') }}", {"d": {"b": 1, "a": 2}}),
    ("macro", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}{{ suffix }}!{% endmacro %}{% set suffix = '?' %}{{ greet('Ann') }} {{ greet('Bob', greeting='Hi') }} {{ greet('Cy', 'Yo') }}", {}),
    ("set_block", "{% set block %}  inner {{ 1 + 2 }}  {% endset %}[{{ block }}] [{{ block | trim }}]", {}),
    ("tuple_unpack", "{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set t = (1, 2) %}{{ t | length }}", {}),
    ("operators", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 1 ~ 2 ~ 'x' }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 10 / 4 }} {{ -3 }} {{ 4 / 2 }}", {}),
    ("comparisons", "{{ 1 == 1.0 }} {{ 1 != 2 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ 2 > 1 >= 1 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ none == none }} {{ true == 1 }}", {}),
    ("logic", "{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' or [] }} {{ not none }} {{ 'a' if 0 else 'b' }} {{ 'c' if 1 }}|{{ 'd' if 0 }}|{{ none }}|{{ true }}|{{ undefined_thing }}|", {}),
    ("tests", "{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ 's' is string }} {{ 1 is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ {} is mapping }} {{ [] is iterable }} {{ 's' is iterable }} {{ x is sequence }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'a' is eq('a') }} {{ false is false }} {{ 0 is false }} {{ true is boolean }} {{ 1 is in [1] }} {{ 'ABC' is upper }} {{ x is not none }}", {"x": [1]}),
    ("filters_text", "{{ '  pad  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'hello world' | title }}|{{ 'hELLO' | capitalize }}|{{ 'MiXeD' | lower }}|{{ 'MiXeD' | upper }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'héllo' | length }}|{{ 'abc' | first }}{{ 'abc' | last }}|{{ 42 | string }}{{ none | string }}|{{ '12' | int + 1 }}|{{ '3.7' | int }}|{{ 'x' | int }}|{{ 2.9 | int }}|{{ '2.5' | float }}|{{ -3 | abs }}", {}),
    ("filters_lists", "{{ items | join(', ') }}|{{ items | length }}|{{ items | first }}|{{ items | last }}|{{ items | map(attribute='n') | list }}|{{ items | selectattr('n', 'gt', 1) | map(attribute='n') | join }}|{{ items | rejectattr('n', 'equalto', 2) | list | length }}|{{ items | selectattr('flag') | list | length }}|{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'a'] | unique | list }}|{{ [1, 2, 3] | select('odd') | list }}|{{ [1, 2, 3] | reject('odd') | list }}|{{ ['a', 'b'] | map('upper') | join }}|{{ [1, 2, 3] | sum }}|{{ items | map(attribute='n') | select('in', [1, 3]) | list }}", {"items": [{"n": 1, "flag": True}, {"n": 2}, {"n": 3, "flag": False}]}),
    ("default_filter", "{{ x | default('d') }} {{ y | default('d') }} {{ '' | default('e', true) }} {{ none | default('n') }} {{ y | d('dd') }}", {"x": "set"}),
    ("tojson", "{{ obj | tojson }}\n{{ obj | tojson(indent=2) }}\n{{ obj | tojson(indent=4, sort_keys=true) }}\n{{ 'quote \" backslash \\\\ newline \n tab \t é 日 👋 </script> & \\'' | tojson }}\n{{ [] | tojson(indent=2) }} {{ {} | tojson }} {{ [1.0, 2.5, -0.0, 1e-7, 123456789012345678] | tojson }} {{ none | tojson }} {{ true | tojson }}\n{{ obj | tojson(separators=(',', ':')) }}", {"obj": {"b": [1, {"c": None}], "a": "x", "u": "ü"}}),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' h') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ s.startswith('  he') }}|{{ s.endswith(('x', 'o  ')) }}|{{ s.upper() }}|{{ 'Hello World'.lower() }}|{{ 'hello world'.title() }}|{{ 'hello'.capitalize() }}|{{ 'aXbX'.replace('X', '-') }}|{{ 'hello'.find('l') }}|{{ 'hello'.count('l') }}|{{ ', '.join(['a', 'b']) }}|{{ '123'.isdigit() }}|{{ 'prefix_x'.removeprefix('prefix_') }}", {"s": "  hello  "}),
    ("whitespace_control", "<ul>\n    {% for x in items %}\n    <li>{{ x }}</li>\n    {% endfor %}\n</ul>\n  {%- if true %}\n  A  {{- ' B ' -}}  C\n  {%+ if true %}kept{% endif %}\n  {# comment #}\n  {%- endif %}\nend\n", {"items": [1, 2]}),
    ("comment_and_trim", "a {# c #} b\n{# line comment #}\nc\n{#- strip -#}\n   d\n", {}),
    ("print_values", "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} {{ {'a': [1, 2]} }} {{ \"it's\" }} {{ ['it\\'s', 'say \"x\"', 'both \\' \"'] }} {{ ['é\\n\\t'] }}", {}),
    ("string_escapes", "{{ 'a\\tb\\\\c\\x41\\u00e9\\101\\q' }}|{{ \"dq \\\" \\n\" }}|{{ 'adjacent' ' strings' }}", {}),
    ("attribute_and_item", "{{ d.a }} {{ d['a'] }} {{ d.missing is defined }} {{ l[0] }} {{ l.0 }} {{ l[5] is defined }} {{ 'abc'[1] }} {{ d.items is defined }} {{ d['items'] is defined }}", {"d": {"a": 1}, "l": [7]}),
    ("raise_exception", "before {{ raise_exception('Something went wrong: ' ~ n) }} after", {"n": 3}),
    ("dict_global_and_literals", "{{ dict(a=1, b='x') }} {{ {'k': [1, (2, 3)]} | tojson }} {{ (1, 2) | list }}", {}),
    ("strftime_now", "{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M:%S') }}", {}),
    ("is_defined_chain", "{% if x is defined and x.y is defined %}yes{% else %}no{% endif %} {{ x.y | default('none') }}", {"x": {"z": 1}}),
    ("undefined_attribute_error", "line one\n{{ nothing.attr }}", {}),
    ("int_overflow_free", "{{ 2 ** 40 }} {{ 10 ** 15 }} {{ 123456789 * 1000 }}", {}),
]


def engine_fixture():
    cases = []
    for name, template, variables in ENGINE_SNIPPETS:
        compiled = ctu._compile_jinja_template(template)
        case = {"name": name, "template": template, "variables": variables}
        try:
            case["expected"] = compiled.render(**variables)
        except Exception as e:
            case["error"] = f"{type(e).__name__}: {e}"
        cases.append(case)
    with open(os.path.join(ROOT, "engine.json"), "w", encoding="utf-8") as f:
        json.dump({"generated_by": f"jinja2 in transformers {transformers.__version__}'s chat-template environment",
                   "now": list(NOW), "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return f"engine: {len(cases)} cases ({sum('error' in c for c in cases)} errors)"


def tokenizer_for(template, special):
    vocab = {"[UNK]": 0}
    for token in special.values():
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **special)


def render(tokenizer, variables, add_generation_prompt):
    kwargs = {k: v for k, v in variables.items() if k not in ("messages",)}
    return tokenizer.apply_chat_template(
        variables["messages"], tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


def main():
    families = sorted(SOURCES)
    summary = []
    for family in families:
        with open(os.path.join(TEMPLATES, family + ".jinja"), encoding="utf-8", newline="") as f:
            template = f.read()
        special = SPECIAL[family]
        tokenizer = tokenizer_for(template, special)
        cases = []
        for name, variables, agp in family_cases(family):
            case = {"name": name, "variables": variables, "add_generation_prompt": agp}
            try:
                case["expected"] = render(tokenizer, variables, agp)
            except Exception as e:  # jinja2.exceptions.TemplateError from raise_exception
                case["error"] = str(e)
            cases.append(case)
        out = {
            "family": family,
            "source": SOURCES[family],
            "generated_by": f"transformers {transformers.__version__} apply_chat_template(tokenize=False)",
            "now": list(NOW),
            "special_tokens": special,
            "template": template,
            "cases": cases,
        }
        with open(os.path.join(ROOT, family + ".json"), "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
            f.write("\n")
        summary.append(f"{family}: {len(cases)} cases ({sum('error' in c for c in cases)} errors)")

    # Model directories for from_model_dir / from_tokenizer_config.
    models = os.path.join(ROOT, "models")
    shutil.rmtree(models, ignore_errors=True)

    def read(family):
        with open(os.path.join(TEMPLATES, family + ".jinja"), encoding="utf-8", newline="") as f:
            return f.read()

    def write_config(name, config, jinja=None):
        d = os.path.join(models, name)
        os.makedirs(d)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
        if jinja is not None:
            with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8", newline="") as f:
                f.write(jinja)

    added = lambda content: {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False}
    # The string form, special tokens as objects (older files) and strings.
    write_config("string_form", {"bos_token": added("<s>"), "eos_token": "</s>", "pad_token": None,
                                 "chat_template": read("mistral-v0.1"), "model_max_length": 32768})
    # The list form: the entry named "default" is the template.
    write_config("list_form", {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": [
        {"name": "tool_use", "template": "{{ 'not the default' }}"},
        {"name": "default", "template": read("qwen2.5")}]})
    # A list without "default".
    write_config("list_without_default", {"chat_template": [{"name": "rag", "template": "x"}]})
    # chat_template.jinja beside a config whose chat_template differs: the file wins.
    write_config("jinja_file", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "chat_template": "{{ 'the config entry, not the file' }}"}, read("llama3"))
    # No template at all.
    write_config("no_template", {"bos_token": "<s>", "eos_token": "</s>"})
    summary.append(engine_fixture())
    print("\n".join(summary))


if __name__ == "__main__":
    main()
