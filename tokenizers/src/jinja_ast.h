// The syntax tree of a parsed chat template: expressions and statements, each with its template line.
// jinja_parse.cpp builds it, jinja_render.cpp walks it. Internal to ferry_tokenizers.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jinja_value.h"

namespace ferry::tokenizers::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

/// One expression. Which fields a node uses depends on its kind (see each kind's comment).
struct Expr {
  enum class Kind {
    Literal,  // literal
    Name,     // name
    List,     // items
    Tuple,    // items
    Dict,     // items: key, value, key, value, ...
    Attr,     // a.name
    Index,    // a[b]
    Slice,    // a[b:c:d] (each of b, c, d may be null)
    Call,     // a(items..., kwargs...)
    Filter,   // a | name(items..., kwargs...)
    Test,     // a is [not: negated] name(items..., kwargs...)
    Unary,    // name ("-", "+", "not") a
    Binary,   // a name b: + - * / // % ** ~
    Compare,  // items[0] kwargs[0].first items[1] kwargs[1].first ...: == != < <= > >= in "not in"
    And,      // a and b
    Or,       // a or b
    Cond,     // a if b else c (c may be null)
  };
  Kind kind;
  int line;
  Value literal;
  std::string name;
  std::vector<ExprPtr> items;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr a, b, c;
  bool negated = false;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

/// One statement or piece of text.
struct Node {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // branches (condition, body); else_body
    For,       // targets in expr [if filter]: body; else_body
    Set,       // targets = expr, or (attr non-empty) targets[0].attr = expr
    SetBlock,  // {% set targets[0] %}body{% endset %}
    Macro,     // {% macro name(params) %}body{% endmacro %}
    Break,
    Continue,
    Generation,  // transformers' {% generation %}body{% endgeneration %}: rendered as is
  };
  Kind kind;
  int line;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // a macro's parameters with their defaults
};

}  // namespace ferry::tokenizers::jinja
