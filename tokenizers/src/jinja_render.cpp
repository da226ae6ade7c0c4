// Rendering a parsed chat template: evaluating expressions with Python's operators and jinja2's
// scoping (a `for` body is a new scope on each iteration, `if` is not, macros see the template's
// top-level names), and the globals jinja2 and transformers provide. See jinja.h.
#include <cmath>
#include <unordered_map>

#include "jinja.h"
#include "jinja_builtins.h"

namespace ferry::tokenizers::jinja {

namespace {

[[noreturn]] void fail(int line, std::string message) { throw TemplateError{line, std::move(message)}; }

using Scope = std::unordered_map<std::string, Value>;

enum class Flow { Normal, Break, Continue };

std::string binary_type_error(const std::string& op, const Value& a, const Value& b) {
  return "unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'";
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
    if (a.is_array() && b.is_array()) {
      std::vector<Value> out = a.array();
      out.insert(out.end(), b.array().begin(), b.array().end());
      return Value(std::move(out));
    }
  }
  if (op == "*" && ((a.is_string() || a.is_array()) && (b.is_int() || b.is_bool()))) {
    const int64_t n = b.as_int();
    if (a.is_string()) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += a.str();
      return Value(out);
    }
    std::vector<Value> out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), a.array().begin(), a.array().end());
    return Value(std::move(out));
  }
  if (op == "*" && (b.is_string() || b.is_array()) && (a.is_int() || a.is_bool())) return arithmetic(op, b, a);
  if (op == "%" && a.is_string()) fail(0, "'%' string formatting is not supported");
  if (!a.is_number() || !b.is_number()) fail(0, binary_type_error(op, a, b));
  const bool floating = a.is_float() || b.is_float();
  if (op == "/") {
    if (b.as_float() == 0) fail(0, "division by zero");
    return Value(a.as_float() / b.as_float());
  }
  if (floating) {
    const double x = a.as_float(), y = b.as_float();
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "**") return Value(std::pow(x, y));
    if (y == 0) fail(0, "float division by zero");
    if (op == "//") return Value(std::floor(x / y));
    double m = std::fmod(x, y);  // %: the sign of the divisor, as Python
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value(m);
  }
  const int64_t x = a.as_int(), y = b.as_int();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "**") {
    if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
    int64_t r = 1;
    for (int64_t i = 0; i < y; ++i) r *= x;
    return Value(r);
  }
  if (y == 0) fail(0, "integer division or modulo by zero");
  if (op == "//") return Value(floor_div(x, y));
  return Value(x - floor_div(x, y) * y);
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a == b;
  if (op == "!=") return a != b;
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  Args args;
  args.positional.push_back(b);
  return apply_test(op, a, args);
}

class Renderer {
 public:
  explicit Renderer(const Object& globals) {
    globals_ = default_globals();
    for (const auto& [k, v] : globals.items) globals_.set(k, v);
    scopes_.emplace_back();  // the template's top level
  }

  void render(const Body& body, std::string& out) { render_body(body, out); }

 private:
  static Object default_globals() {
    Object g;
    g.set("range", Value::function("range", [](const Args& a) {
      std::vector<int64_t> n;
      for (const Value& v : a.positional) {
        if (!v.is_int() && !v.is_bool()) fail(0, "range() arguments must be integers");
        n.push_back(v.as_int());
      }
      if (n.empty() || n.size() > 3) fail(0, "range expected 1 to 3 arguments");
      int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0], step = n.size() > 2 ? n[2] : 1;
      if (step == 0) fail(0, "range() arg 3 must not be zero");
      std::vector<Value> out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= 100000) fail(0, "range too big, the sandbox allows 100000 items");
        out.emplace_back(i);
      }
      return Value(std::move(out));
    }));
    g.set("namespace", Value::function("namespace", [](const Args& a) {
      Object ns;
      ns.is_namespace = true;
      for (const Value& v : a.positional) {
        if (!v.is_object()) fail(0, "namespace() takes keyword arguments or a dict");
        for (const auto& [k, x] : v.object().items) ns.set(k, x);
      }
      for (const auto& [k, v] : a.named) {
        if (!k.empty() && k[0] == '_') fail(0, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + k + "'. Please rename the attribute.");
        ns.set(k, v);
      }
      return Value(std::move(ns));
    }));
    g.set("dict", Value::function("dict", [](const Args& a) {
      Object d;
      for (const Value& v : a.positional) {
        if (!v.is_object()) fail(0, "dict() takes keyword arguments or a dict");
        for (const auto& [k, x] : v.object().items) d.set(k, x);
      }
      for (const auto& [k, v] : a.named) d.set(k, v);
      return Value(std::move(d));
    }));
    g.set("raise_exception", Value::function("raise_exception", [](const Args& a) -> Value {
      throw RaisedException{a.positional.empty() ? std::string() : to_str(a.positional[0])};
    }));
    return g;
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    if (const Value* v = globals_.find(name)) return *v;
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::vector<std::string>& targets, const Value& value, int line) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = value;
      return;
    }
    if (value.is_undefined()) undefined_error(value);
    std::vector<Value> items = iterate(value);
    if (items.size() != targets.size())
      fail(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) +
                     " names");
    for (size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = items[i];
  }

  Flow render_body(const Body& body, std::string& out) {
    for (const NodePtr& n : body) {
      Flow f = render_node(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow render_node(const Node& n, std::string& out) {
    try {
      switch (n.kind) {
        case Node::Kind::Text: out += n.text; break;
        case Node::Kind::Output: out += to_str(eval(*n.expr)); break;
        case Node::Kind::If:
          for (const auto& [cond, body] : n.branches)
            if (eval(*cond).truthy()) return render_body(body, out);
          return render_body(n.else_body, out);
        case Node::Kind::For: return render_for(n, out);
        case Node::Kind::Set:
          if (!n.attr.empty()) {
            Value ns = lookup(n.targets[0]);
            if (!ns.is_object() || !ns.object().is_namespace)
              fail(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
            if (n.attr[0] == '_')
              fail(n.line, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                               n.attr + "'. Please rename the attribute.");
            ns.mutable_object().set(n.attr, eval(*n.expr));
          } else {
            assign(n.targets, eval(*n.expr), n.line);
          }
          break;
        case Node::Kind::SetBlock: {
          std::string captured;
          render_body(n.body, captured);
          assign(n.targets, Value(captured), n.line);
          break;
        }
        case Node::Kind::Macro: scopes_.back()[n.name] = make_macro(n); break;
        case Node::Kind::Break: return Flow::Break;
        case Node::Kind::Continue: return Flow::Continue;
        case Node::Kind::Generation: return render_body(n.body, out);
      }
    } catch (TemplateError& e) {
      if (e.line == 0) e.line = n.line;
      throw;
    }
    return Flow::Normal;
  }

  Flow render_for(const Node& n, std::string& out) {
    std::vector<Value> items = iterate(eval(*n.expr));
    if (n.filter) {
      std::vector<Value> kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        assign(n.targets, item, n.line);
        const bool keep = eval(*n.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return render_body(n.else_body, out);
    const int64_t count = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < count; ++i) {
      Object loop;
      loop.set("index", Value(i + 1));
      loop.set("index0", Value(i));
      loop.set("revindex", Value(count - i));
      loop.set("revindex0", Value(count - i - 1));
      loop.set("first", Value(i == 0));
      loop.set("last", Value(i == count - 1));
      loop.set("length", Value(count));
      loop.set("depth", Value(int64_t{1}));
      loop.set("depth0", Value(int64_t{0}));
      loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < count ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](const Args& a) {
        if (a.positional.empty()) fail(0, "no items for cycling given");
        return a.positional[static_cast<size_t>(i) % a.positional.size()];
      }));
      scopes_.emplace_back();
      scopes_.back()["loop"] = Value(std::move(loop));
      assign(n.targets, items[static_cast<size_t>(i)], n.line);
      Flow f;
      try {
        f = render_body(n.body, out);
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Node& n) {
    const Node* node = &n;
    return Value::function(n.name, [this, node](const Args& a) {
      if (a.positional.size() > node->params.size())
        fail(node->line, "macro '" + node->name + "' takes not more than " + std::to_string(node->params.size()) +
                             " argument(s)");
      Scope args;
      for (size_t i = 0; i < node->params.size(); ++i) {
        const auto& [name, def] = node->params[i];
        auto given = a.get(i, name);
        args[name] = given ? *given : def ? eval(*def) : Value::undefined("'" + name + "' is undefined");
      }
      for (const auto& [k, v] : a.named) {
        bool known = false;
        for (const auto& p : node->params) known |= p.first == k;
        if (!known) fail(node->line, "macro '" + node->name + "' takes no keyword argument '" + k + "'");
      }
      std::vector<Scope> saved = std::move(scopes_);
      scopes_ = {saved.front(), std::move(args)};
      std::string out;
      try {
        render_body(node->body, out);
      } catch (...) {
        scopes_ = std::move(saved);
        throw;
      }
      scopes_ = std::move(saved);
      return Value(out);
    });
  }

  Args eval_args(const Expr& e) {
    Args a;
    for (const ExprPtr& x : e.items) a.positional.push_back(eval(*x));
    for (const auto& [k, x] : e.kwargs) a.named.emplace_back(k, eval(*x));
    return a;
  }

  Value eval(const Expr& e) {
    try {
      return eval_unchecked(e);
    } catch (TemplateError& err) {
      if (err.line == 0) err.line = e.line;
      throw;
    }
  }

  Value eval_unchecked(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        std::vector<Value> items;
        for (const ExprPtr& x : e.items) items.push_back(eval(*x));
        return Value(std::move(items));
      }
      case Expr::Kind::Dict: {
        Object o;
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          Value k = eval(*e.items[i]);
          if (!k.is_string()) fail(e.line, "dict keys other than strings are not supported");
          o.set(k.str(), eval(*e.items[i + 1]));
        }
        return Value(std::move(o));
      }
      case Expr::Kind::Attr: return get_attr(eval(*e.a), e.name);
      case Expr::Kind::Index: return get_item(eval(*e.a), eval(*e.b));
      case Expr::Kind::Slice: {
        Value obj = eval(*e.a);
        Value start = e.b ? eval(*e.b) : Value::none();
        Value stop = e.c ? eval(*e.c) : Value::none();
        Value step = e.items[0] ? eval(*e.items[0]) : Value::none();
        return get_slice(obj, start, stop, step);
      }
      case Expr::Kind::Call: {
        Value callee = eval(*e.a);
        Args args = eval_args(e);
        if (callee.is_undefined()) undefined_error(callee);
        if (!callee.is_function()) fail(e.line, "'" + callee.type_name() + "' object is not callable");
        return callee.fn()(args);
      }
      case Expr::Kind::Filter: {
        Value v = eval(*e.a);
        return apply_filter(e.name, v, eval_args(e));
      }
      case Expr::Kind::Test: {
        Value v = eval(*e.a);
        const bool r = apply_test(e.name, v, eval_args(e));
        return Value(e.negated ? !r : r);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.a);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number()) fail(e.line, "bad operand type for unary " + e.name + ": '" + v.type_name() + "'");
        if (e.name == "+") return v.is_float() ? v : Value(v.as_int());
        return v.is_float() ? Value(-v.as_float()) : Value(-v.as_int());
      }
      case Expr::Kind::Binary: {
        Value a = eval(*e.a);
        Value b = eval(*e.b);
        const std::string& op = e.name;
        if (op == "~") return Value(to_str(a) + to_str(b));
        return arithmetic(op, a, b);
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.items[0]);
        for (size_t i = 0; i < e.kwargs.size(); ++i) {
          Value right = eval(*e.items[i + 1]);
          const std::string& op = e.kwargs[i].first;
          const bool holds = op == "in" ? contains(right, left) : op == "not in" ? !contains(right, left) : compare(op, left, right);
          if (!holds) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::And: {
        Value a = eval(*e.a);
        return a.truthy() ? eval(*e.b) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.a);
        return a.truthy() ? a : eval(*e.b);
      }
      case Expr::Kind::Cond:
        if (eval(*e.b).truthy()) return eval(*e.a);
        return e.c ? eval(*e.c) : Value::undefined("the inline if expression evaluated to false and has no else");
    }
    return Value();
  }

  Object globals_;
  std::vector<Scope> scopes_;
};

}  // namespace

std::string render(const Body& body, const Object& globals) {
  Renderer r(globals);
  std::string out;
  r.render(body, out);
  return out;
}

}  // namespace ferry::tokenizers::jinja
