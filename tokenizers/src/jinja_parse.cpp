// Lexing and parsing chat templates into the tree of jinja_ast.h, following jinja2's lexer (whitespace
// control with trim_blocks and lstrip_blocks, as transformers configures it) and its parser (operator
// precedence, filters and tests, the statements chat templates use). See jinja.h.
#include <cctype>
#include <cstdlib>
#include <set>

#include "jinja.h"
#include "jinja_builtins.h"

namespace ferry::tokenizers::jinja {

namespace {

[[noreturn]] void fail(int line, std::string message) { throw TemplateError{line, std::move(message)}; }

// ---- lexer -------------------------------------------------------------------------------------

struct Token {
  enum Type { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };
  Type type;
  std::string text;  // data, a name, a decoded string, an operator
  int line;
  int64_t int_value = 0;
  double float_value = 0;
};

bool is_space_at(const std::string& s, size_t i, size_t* length) {
  // Python's \s (unicode): ASCII whitespace here, and the multi-byte spaces of is_py_space.
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *length = 1;
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
  }
  size_t n = (c >= 0xf0) ? 4 : (c >= 0xe0) ? 3 : (c >= 0xc0) ? 2 : 1;
  if (i + n > s.size()) return false;
  std::u32string cp = decode_utf8(std::string_view(s).substr(i, n));
  *length = n;
  return cp.size() == 1 && is_py_space(cp[0]);
}

std::string rstrip_space(const std::string& s) {
  std::u32string cps = decode_utf8(s);
  while (!cps.empty() && is_py_space(cps.back())) cps.pop_back();
  return encode_utf8(cps);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// A string literal's body decoded as jinja2 does (Python's unicode-escape).
std::string decode_string(std::string_view body, int line) {
  std::u32string out;
  std::u32string in = decode_utf8(body);
  for (size_t i = 0; i < in.size(); ++i) {
    char32_t c = in[i];
    if (c != '\\' || i + 1 >= in.size()) {
      out.push_back(c);
      continue;
    }
    char32_t e = in[++i];
    auto hex = [&](size_t digits) -> char32_t {
      char32_t v = 0;
      for (size_t k = 0; k < digits; ++k) {
        int h = (i + 1 < in.size() && in[i + 1] < 128) ? hex_value(static_cast<char>(in[i + 1])) : -1;
        if (h < 0) fail(line, "truncated \\x, \\u or \\U escape in a string literal");
        v = v * 16 + static_cast<char32_t>(h);
        ++i;
      }
      return v;
    };
    switch (e) {
      case '\n': break;
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'v': out.push_back('\v'); break;
      case 'x': out.push_back(hex(2)); break;
      case 'u': out.push_back(hex(4)); break;
      case 'U': out.push_back(hex(8)); break;
      case 'N': fail(line, "'\\N{...}' escapes are not supported");
      default:
        if (e >= '0' && e <= '7') {
          char32_t v = e - '0';
          for (int k = 0; k < 2 && i + 1 < in.size() && in[i + 1] >= '0' && in[i + 1] <= '7'; ++k)
            v = v * 8 + (in[++i] - '0');
          out.push_back(v);
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return encode_utf8(out);
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    // jinja2 reads "\r\n" and "\r" as "\n" and, without keep_trailing_newline, drops one final newline.
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t start = pos_;
      while ((start = src_.find('{', start)) != std::string::npos) {
        if (start + 1 < src_.size() && (src_[start + 1] == '{' || src_[start + 1] == '%' || src_[start + 1] == '#'))
          break;
        ++start;
      }
      if (start == std::string::npos) {
        add_data(src_.substr(pos_));
        pos_ = src_.size();
        break;
      }
      const char kind = src_[start + 1];
      size_t p = start + 2;
      const char mod = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (mod) ++p;
      std::string data = src_.substr(pos_, start - pos_);
      const bool line_starting = pos_ == 0 || src_[pos_ - 1] == '\n';
      if (mod == '-') {
        data = rstrip_space(data);
      } else if (mod != '+' && kind != '{') {  // lstrip_blocks: a block or comment tag alone on its line
        size_t l_pos = data.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && data.find_first_not_of(" \t", l_pos) == std::string::npos)
          data.resize(l_pos);
      }
      add_data(data);
      line_ = line_at(start);
      pos_ = p;
      if (kind == '#') {
        size_t end = src_.find("#}", pos_);
        if (end == std::string::npos) fail(line_, "unclosed comment: '{#' without '#}'");
        const bool strip = end > pos_ && src_[end - 1] == '-';
        pos_ = end + 2;
        after_tag_end(strip, true);
      } else {
        lex_tag(kind == '%');
      }
    }
    tokens_.push_back({Token::Eof, "", line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  int line_at(size_t p) {
    for (; counted_ < p && counted_ < src_.size(); ++counted_)
      if (src_[counted_] == '\n') ++counted_line_;
    return counted_line_;
  }

  void add_data(std::string data) {
    if (!data.empty()) tokens_.push_back({Token::Data, std::move(data), line_at(pos_)});
  }

  /// After `%}`, `#}` or `}}`: `-` strips all whitespace that follows; trim_blocks one newline.
  void after_tag_end(bool strip, bool trim) {
    if (strip) {
      size_t n;
      while (pos_ < src_.size() && is_space_at(src_, pos_, &n)) pos_ += n;
    } else if (trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
  }

  void lex_tag(bool block) {
    const int begin_line = line_;
    tokens_.push_back({block ? Token::BlockBegin : Token::VarBegin, "", begin_line});
    std::vector<char> balance;
    while (true) {
      size_t n;
      while (pos_ < src_.size() && is_space_at(src_, pos_, &n)) pos_ += n;
      if (pos_ >= src_.size())
        fail(begin_line, block ? "unclosed tag: '{%' without '%}'" : "unclosed tag: '{{' without '}}'");
      const int line = line_at(pos_);
      std::string_view rest = std::string_view(src_).substr(pos_);
      if (balance.empty()) {
        if (block) {
          for (const char* end : {"-%}", "+%}", "%}"}) {
            if (rest.substr(0, std::char_traits<char>::length(end)) == end) {
              tokens_.push_back({Token::BlockEnd, "", line});
              pos_ += std::char_traits<char>::length(end);
              after_tag_end(end[0] == '-', end[0] == '%');
              return;
            }
          }
        } else {
          for (const char* end : {"-}}", "}}"}) {
            if (rest.substr(0, std::char_traits<char>::length(end)) == end) {
              tokens_.push_back({Token::VarEnd, "", line});
              pos_ += std::char_traits<char>::length(end);
              after_tag_end(end[0] == '-', false);
              return;
            }
          }
        }
      }
      const char c = rest[0];
      if (c == '\'' || c == '"') {
        size_t i = 1;
        while (i < rest.size() && rest[i] != c) i += rest[i] == '\\' ? 2 : 1;
        if (i >= rest.size()) fail(line, "unterminated string literal");
        tokens_.push_back({Token::String, decode_string(rest.substr(1, i - 1), line), line});
        pos_ += i + 1;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number(rest, line);
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t i = 1;
        while (i < rest.size() && (std::isalnum(static_cast<unsigned char>(rest[i])) || rest[i] == '_')) ++i;
        tokens_.push_back({Token::Name, std::string(rest.substr(0, i)), line});
        pos_ += i;
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%", "~", "[",
                                           "]",  "(",  ")",  "{",  "}",  "<",  ">", "=", ".", ":", "|", ",", ";"};
        const char* op = nullptr;
        for (const char* o : kOps)
          if (rest.substr(0, std::char_traits<char>::length(o)) == o) {
            op = o;
            break;
          }
        if (!op) fail(line, "unexpected character '" + std::string(1, c) + "'");
        std::string text = op;
        if (text == "(" || text == "[" || text == "{") {
          balance.push_back(text[0]);
        } else if (text == ")" || text == "]" || text == "}") {
          const char open = text == ")" ? '(' : text == "]" ? '[' : '{';
          if (balance.empty() || balance.back() != open) fail(line, "unexpected '" + text + "'");
          balance.pop_back();
        }
        tokens_.push_back({Token::Op, text, line});
        pos_ += text.size();
      }
    }
  }

  void lex_number(std::string_view rest, int line) {
    auto digits = [&](size_t i, auto is_digit) {
      while (i < rest.size() && (is_digit(rest[i]) || (rest[i] == '_' && i + 1 < rest.size() && is_digit(rest[i + 1]))))
        ++i;
      return i;
    };
    auto dec = [](char ch) { return ch >= '0' && ch <= '9'; };
    if (rest.size() > 2 && rest[0] == '0' && std::string_view("xXoObB").find(rest[1]) != std::string_view::npos) {
      const int base = (rest[1] == 'x' || rest[1] == 'X') ? 16 : (rest[1] == 'o' || rest[1] == 'O') ? 8 : 2;
      size_t end = digits(2, [&](char ch) {
        int h = hex_value(ch);
        return h >= 0 && h < base;
      });
      std::string text;
      for (char ch : rest.substr(2, end - 2))
        if (ch != '_') text += ch;
      tokens_.push_back({Token::Int, std::string(rest.substr(0, end)), line, std::strtoll(text.c_str(), nullptr, base)});
      pos_ += end;
      return;
    }
    size_t end = digits(0, dec);
    bool is_float = false;
    if (end + 1 < rest.size() && rest[end] == '.' && dec(rest[end + 1])) {
      end = digits(end + 1, dec);
      is_float = true;
    }
    if (end < rest.size() && (rest[end] == 'e' || rest[end] == 'E')) {
      size_t e = end + 1;
      if (e < rest.size() && (rest[e] == '+' || rest[e] == '-')) ++e;
      if (e < rest.size() && dec(rest[e])) {
        end = digits(e, dec);
        is_float = true;
      }
    }
    std::string text;
    for (char ch : rest.substr(0, end))
      if (ch != '_') text += ch;
    Token t{is_float ? Token::Float : Token::Int, std::string(rest.substr(0, end)), line};
    if (is_float) t.float_value = std::strtod(text.c_str(), nullptr);
    else t.int_value = std::strtoll(text.c_str(), nullptr, 10);
    tokens_.push_back(std::move(t));
    pos_ += end;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  size_t counted_ = 0;
  int counted_line_ = 1;
  std::vector<Token> tokens_;
};

// ---- parser ------------------------------------------------------------------------------------

/// Tags of jinja2 (and its extensions) that chat templates may use but this engine does not.
const std::set<std::string> kUnsupportedTags = {
    "include", "import", "from", "extends", "block", "call", "filter", "with", "autoescape",
    "raw", "do", "trans", "pluralize", "endtrans", "debug"};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, &end, 0);
    return body;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& next() { return t_[i_++]; }
  bool is_op(const char* op) const { return cur().type == Token::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Token::Name && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    ++i_;
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Token::Data: return "text";
      case Token::VarBegin: return "'{{'";
      case Token::VarEnd: return "'}}'";
      case Token::BlockBegin: return "'{%'";
      case Token::BlockEnd: return "'%}'";
      case Token::String: return "string";
      case Token::Int:
      case Token::Float: return "number";
      case Token::Eof: return "end of template";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void unexpected(const char* wanted) const {
    fail(cur().line, std::string("expected ") + wanted + ", got " + describe(cur()));
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) unexpected((std::string("'") + op + "'").c_str());
  }
  std::string expect_name() {
    if (cur().type != Token::Name) unexpected("a name");
    return next().text;
  }
  void expect_block_end() {
    if (cur().type != Token::BlockEnd) unexpected("'%}'");
    ++i_;
  }

  static ExprPtr make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  /// Statements up to one of `end_tags` ({% endfor %}, {% else %}, ...): returns with the cursor after
  /// that tag's name, the name in *end. With no end tags, up to the end of the template.
  Body parse_body(const std::vector<std::string>& end_tags, std::string* end, int opened_line) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Token::Eof) {
        if (!end_tags.empty()) {
          std::string wanted;
          for (const auto& tag : end_tags) wanted += (wanted.empty() ? "'" : " or '") + tag + "'";
          fail(opened_line, "this block is never closed: the template ends where " + wanted + " was expected");
        }
        return body;
      }
      if (t.type == Token::Data) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->text = t.text;
        body.push_back(std::move(n));
        ++i_;
      } else if (t.type == Token::VarBegin) {
        ++i_;
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        n->expr = parse_tuple(true);
        if (cur().type != Token::VarEnd) unexpected("'}}'");
        ++i_;
        body.push_back(std::move(n));
      } else if (t.type == Token::BlockBegin) {
        ++i_;
        if (cur().type != Token::Name) unexpected("a tag name");
        const std::string tag = cur().text;
        for (const auto& e : end_tags)
          if (tag == e) {
            ++i_;
            *end = tag;
            return body;
          }
        body.push_back(parse_statement());
      } else {
        unexpected("text, '{{' or '{%'");
      }
    }
  }

  NodePtr parse_statement() {
    const Token& t = next();
    const std::string& tag = t.text;
    const int line = t.line;
    auto n = std::make_unique<Node>();
    n->line = line;
    if (tag == "if") {
      n->kind = Node::Kind::If;
      ExprPtr cond = parse_tuple(true);
      expect_block_end();
      while (true) {
        std::string end;
        Body body = parse_body({"elif", "else", "endif"}, &end, line);
        n->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "elif") {
          cond = parse_tuple(true);
          expect_block_end();
          continue;
        }
        if (end == "else") {
          expect_block_end();
          n->else_body = parse_body({"endif"}, &end, line);
        }
        expect_block_end();
        break;
      }
    } else if (tag == "for") {
      n->kind = Node::Kind::For;
      const bool paren = skip_op("(");
      do n->targets.push_back(expect_name());
      while (skip_op(","));
      if (paren) expect_op(")");
      if (!skip_name("in")) unexpected("'in'");
      n->expr = parse_tuple(false);
      if (skip_name("if")) n->filter = parse_tuple(true);
      if (is_name("recursive")) fail(cur().line, "'recursive' loops are not supported");
      expect_block_end();
      std::string end;
      n->body = parse_body({"endfor", "else"}, &end, line);
      if (end == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"}, &end, line);
      }
      expect_block_end();
    } else if (tag == "set") {
      n->targets.push_back(expect_name());
      if (skip_op(".")) {
        n->attr = expect_name();
      } else {
        while (skip_op(",")) n->targets.push_back(expect_name());
      }
      if (skip_op("=")) {
        n->kind = Node::Kind::Set;
        n->expr = parse_tuple(true);
        expect_block_end();
      } else {
        if (n->targets.size() != 1 || !n->attr.empty()) unexpected("'='");
        if (is_op("|")) fail(cur().line, "'set' blocks with filters are not supported");
        n->kind = Node::Kind::SetBlock;
        expect_block_end();
        std::string end;
        n->body = parse_body({"endset"}, &end, line);
        expect_block_end();
      }
    } else if (tag == "macro") {
      n->kind = Node::Kind::Macro;
      n->name = expect_name();
      expect_op("(");
      while (!skip_op(")")) {
        if (!n->params.empty()) expect_op(",");
        std::string param = expect_name();
        ExprPtr def;
        if (skip_op("=")) def = parse_expression(true);
        n->params.emplace_back(std::move(param), std::move(def));
      }
      expect_block_end();
      std::string end;
      n->body = parse_body({"endmacro"}, &end, line);
      if (cur().type == Token::Name) ++i_;  // {% endmacro name %}
      expect_block_end();
    } else if (tag == "break" || tag == "continue") {
      n->kind = tag == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end();
    } else if (tag == "generation") {
      n->kind = Node::Kind::Generation;
      expect_block_end();
      std::string end;
      n->body = parse_body({"endgeneration"}, &end, line);
      expect_block_end();
    } else if (kUnsupportedTags.count(tag)) {
      fail(line, "'" + tag + "' is not supported");
    } else if (tag == "elif" || tag == "else" || tag.rfind("end", 0) == 0) {
      fail(line, "unexpected '" + tag + "'");
    } else {
      fail(line, "'" + tag + "' is not supported (an unknown tag)");
    }
    return n;
  }

  // Expressions, from the loosest binding to the tightest, as jinja2's parser has them.

  /// `a, b` is a tuple where jinja2 allows one (output, set, for, if).
  ExprPtr parse_tuple(bool with_condexpr) {
    const int line = cur().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto tuple = make(Expr::Kind::Tuple, line);
    tuple->items.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == Token::VarEnd || cur().type == Token::BlockEnd || is_op(")")) break;
      tuple->items.push_back(parse_expression(with_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    if (!with_condexpr) return parse_or();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const int line = next().line;
      auto cond = make(Expr::Kind::Cond, line);
      cond->a = std::move(e);
      cond->b = parse_or();
      if (skip_name("else")) cond->c = parse_expression(true);
      e = std::move(cond);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto n = make(Expr::Kind::Or, next().line);
      n->a = std::move(e);
      n->b = parse_and();
      e = std::move(n);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto n = make(Expr::Kind::And, next().line);
      n->a = std::move(e);
      n->b = parse_not();
      e = std::move(n);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      auto n = make(Expr::Kind::Unary, next().line);
      n->name = "not";
      n->a = parse_not();
      return n;
    }
    return parse_compare();
  }

  /// Comparisons chain as Python's do: `a < b <= c` is `a < b and b <= c` (b evaluated once).
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    ExprPtr chain;
    while (true) {
      std::string op;
      const int line = cur().line;
      if (cur().type == Token::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++i_;
        op = "in";
      } else if (is_name("not") && t_[i_ + 1].type == Token::Name && t_[i_ + 1].text == "in") {
        i_ += 2;
        op = "not in";
      } else {
        return chain ? std::move(chain) : std::move(e);
      }
      if (!chain) {
        chain = make(Expr::Kind::Compare, line);
        chain->items.push_back(std::move(e));
      }
      chain->kwargs.emplace_back(op, nullptr);
      chain->items.push_back(parse_math1());
    }
  }

  ExprPtr binary(ExprPtr left, const std::string& op, int line, ExprPtr right) {
    auto n = make(Expr::Kind::Binary, line);
    n->name = op;
    n->a = std::move(left);
    n->b = std::move(right);
    return n;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(std::move(e), t.text, t.line, parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& t = next();
      e = binary(std::move(e), "~", t.line, parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(std::move(e), t.text, t.line, parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token& t = next();
      e = binary(std::move(e), "**", t.line, parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      e = make(Expr::Kind::Unary, t.line);
      e->name = t.text;
      e->a = parse_unary(false);
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case Token::Name: {
        ++i_;
        if (t.text == "true" || t.text == "True") return literal(Value(true), t.line);
        if (t.text == "false" || t.text == "False") return literal(Value(false), t.line);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.line);
        auto n = make(Expr::Kind::Name, t.line);
        n->name = t.text;
        return n;
      }
      case Token::String: {
        std::string s;
        const int line = t.line;
        while (cur().type == Token::String) s += next().text;  // "a" "b" is "ab"
        return literal(Value(std::move(s)), line);
      }
      case Token::Int: ++i_; return literal(Value(t.int_value), t.line);
      case Token::Float: ++i_; return literal(Value(t.float_value), t.line);
      case Token::Op:
        if (t.text == "(") {
          ++i_;
          if (skip_op(")")) return make(Expr::Kind::Tuple, t.line);
          ExprPtr e = parse_expression(true);
          if (is_op(",")) {
            auto tuple = make(Expr::Kind::Tuple, t.line);
            tuple->items.push_back(std::move(e));
            while (skip_op(",")) {
              if (is_op(")")) break;
              tuple->items.push_back(parse_expression(true));
            }
            e = std::move(tuple);
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          ++i_;
          auto list = make(Expr::Kind::List, t.line);
          while (!skip_op("]")) {
            if (!list->items.empty()) {
              expect_op(",");
              if (skip_op("]")) break;
            }
            list->items.push_back(parse_expression(true));
          }
          return list;
        }
        if (t.text == "{") {
          ++i_;
          auto dict = make(Expr::Kind::Dict, t.line);
          while (!skip_op("}")) {
            if (!dict->items.empty()) {
              expect_op(",");
              if (skip_op("}")) break;
            }
            dict->items.push_back(parse_expression(true));
            expect_op(":");
            dict->items.push_back(parse_expression(true));
          }
          return dict;
        }
        break;
      default: break;
    }
    unexpected("an expression");
  }

  static ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::Literal, line);
    e->literal = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const int line = cur().line;
      if (skip_op(".")) {
        auto n = make(Expr::Kind::Attr, line);
        if (cur().type == Token::Int) {  // foo.0 is foo[0]
          n->kind = Expr::Kind::Index;
          n->b = literal(Value(next().int_value), line);
        } else {
          n->name = expect_name();
          if (is_op("(") && is_unsupported_method(n->name))
            fail(line, "method '" + n->name + "()' is not supported");
        }
        n->a = std::move(e);
        e = std::move(n);
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object, int line) {
    ExprPtr parts[3];
    int part = 0;
    bool is_slice = false;
    while (!is_op("]")) {
      if (skip_op(":")) {
        is_slice = true;
        if (++part > 2) unexpected("']'");
        continue;
      }
      if (parts[part]) unexpected("':' or ']'");
      parts[part] = parse_expression(true);
    }
    ++i_;
    auto n = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Index, line);
    n->a = std::move(object);
    if (!is_slice && !parts[0]) fail(line, "expected an index inside '[]'");
    n->b = std::move(parts[0]);
    n->c = std::move(parts[1]);
    if (is_slice) {
      n->items.push_back(std::move(parts[2]));
    }
    return n;
  }

  /// `(args)` after a callee, filter or test: positional arguments, then name=value ones.
  void parse_args(Expr& call) {
    expect_op("(");
    while (!skip_op(")")) {
      if (!call.items.empty() || !call.kwargs.empty()) {
        expect_op(",");
        if (skip_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail(cur().line, "'*args' and '**kwargs' in calls are not supported");
      if (cur().type == Token::Name && t_[i_ + 1].type == Token::Op && t_[i_ + 1].text == "=") {
        std::string name = next().text;
        ++i_;
        call.kwargs.emplace_back(std::move(name), parse_expression(true));
      } else {
        if (!call.kwargs.empty()) fail(cur().line, "a positional argument follows a keyword argument");
        call.items.push_back(parse_expression(true));
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto n = make(Expr::Kind::Call, cur().line);
    n->a = std::move(callee);
    parse_args(*n);
    return n;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        auto n = make(Expr::Kind::Filter, next().line);
        n->name = expect_name();
        if (!has_filter(n->name)) fail(n->line, "filter '" + n->name + "' is not supported");
        n->a = std::move(e);
        if (is_op("(")) parse_args(*n);
        e = std::move(n);
      } else if (is_name("is")) {
        auto n = make(Expr::Kind::Test, next().line);
        n->negated = skip_name("not");
        n->name = expect_name();
        if (!has_test(n->name)) fail(n->line, "test '" + n->name + "' is not supported");
        n->a = std::move(e);
        if (is_op("(")) {
          parse_args(*n);
        } else if ((cur().type == Token::Name || cur().type == Token::String || cur().type == Token::Int ||
                    cur().type == Token::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail(cur().line, "tests cannot be chained with 'is'");
          n->items.push_back(parse_postfix(parse_primary()));  // `x is divisibleby 3`
        }
        e = std::move(n);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
};

}  // namespace

Body parse(std::string_view source) { return Parser(Lexer(source).run()).parse_template(); }

}  // namespace ferry::tokenizers::jinja
