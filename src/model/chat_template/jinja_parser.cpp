// Parser: recursive descent over the lexer's tokens. Expression precedence follows jinja2's
// parser, loosest first:
//   a if c else b  <  or  <  and  <  not  <  comparisons, in, not in  <  + -  <  ~  <  * / // %
//   <  **  <  unary - +  <  postfix (.attr, [item], [a:b:c], call)  <  | filter, is test
// so "-x | abs" is "(-x) | abs", "a + b | trim" is "a + (b | trim)" and "not x is defined" is
// "not (x is defined)".
#include "model/chat_template/jinja_parser.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <initializer_list>

#include "model/chat_template/jinja_builtins.h"
#include "model/chat_template/jinja_lexer.h"

namespace lserve::jinja {

namespace {

ExprPtr make_expr(Expr::Kind kind, int line) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

NodePtr make_node(Node::Kind kind, int line) {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->line = line;
  return n;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;  // nesting of blocks and expressions being parsed

  // Templates come from model folders, which may be hostile: deeper nesting than any real template
  // has is refused before it can exhaust the stack (here, or later in the interpreter).
  static constexpr int kMaxNesting = 200;
  struct NestingGuard {
    Parser& p;
    explicit NestingGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxNesting) p.error(p.cur().line, "template nested too deeply");
    }
    ~NestingGuard() { --p.depth_; }
    NestingGuard(const NestingGuard&) = delete;
    NestingGuard& operator=(const NestingGuard&) = delete;
  };

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t ahead = 1) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Token& next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }

  [[noreturn]] void error(int line, std::string_view message) const {
    throw TemplateError(fmt::format("chat template line {}: {}", line, message));
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Text: return "template text";
      case TokenType::ExprBegin: return "'{{'";
      case TokenType::ExprEnd: return "'}}'";
      case TokenType::StmtBegin: return "'{%'";
      case TokenType::StmtEnd: return "'%}'";
      case TokenType::String: return "string literal";
      case TokenType::End: return "end of template";
      default: return "'" + t.text + "'";
    }
  }

  bool is_op(std::string_view op) const { return cur().type == TokenType::Operator && cur().text == op; }
  bool is_name(std::string_view name) const { return cur().type == TokenType::Name && cur().text == name; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) error(cur().line, fmt::format("expected '{}', got {}", op, describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != TokenType::Name) error(cur().line, fmt::format("expected a name, got {}", describe(cur())));
    return next().text;
  }
  void expect(TokenType type, std::string_view what) {
    if (cur().type != type) error(cur().line, fmt::format("expected {}, got {}", what, describe(cur())));
    next();
  }
  void expect_stmt_end() { expect(TokenType::StmtEnd, "'%}'"); }

  // --- Statements ----------------------------------------------------------------------------------

  // Parses nodes until one of `ends` opens a {% %} tag; returns with that keyword consumed (in
  // `end`) but not the rest of its tag. With no ends, parses to the end of the template.
  // `open_line` is the line of the tag that opened the block, for the error when it is not closed.
  Body parse_body(std::initializer_list<std::string_view> ends, std::string& end, int open_line = 0) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::End) {
        if (ends.size() == 0) return body;
        error(open_line, fmt::format("unexpected end of template: missing '{{% {} %}}' for the block that starts here",
                                      *(ends.end() - 1)));
      }
      if (t.type == TokenType::Text) {
        auto n = make_node(Node::Kind::Text, t.line);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == TokenType::ExprBegin) {
        next();
        auto n = make_node(Node::Kind::Output, t.line);
        n->expr = parse_tuple(true);
        expect(TokenType::ExprEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == TokenType::StmtBegin) {
        next();
        if (cur().type != TokenType::Name) error(cur().line, fmt::format("expected a tag name, got {}", describe(cur())));
        for (std::string_view e : ends) {
          if (cur().text == e) {
            end = next().text;
            return body;
          }
        }
        body.push_back(parse_statement());
      } else {
        error(t.line, fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  NodePtr parse_statement() {
    const NestingGuard guard(*this);
    const Token& t = cur();
    const std::string keyword = t.text;
    const int line = t.line;
    next();
    if (keyword == "if") return parse_if(line);
    if (keyword == "for") return parse_for(line);
    if (keyword == "set") return parse_set(line);
    if (keyword == "macro") return parse_macro(line);
    if (keyword == "call") return parse_call_block(line);
    if (keyword == "filter") return parse_filter_block(line);
    if (keyword == "break" || keyword == "continue") {
      expect_stmt_end();
      return make_node(keyword == "break" ? Node::Kind::Break : Node::Kind::Continue, line);
    }
    if (keyword == "generation") {
      // Hugging Face's {% generation %}: marks the assistant's tokens for training masks; the
      // text renders as is. Modeled as an if that is always true.
      expect_stmt_end();
      auto n = make_node(Node::Kind::If, line);
      std::string end;
      Body body = parse_body({"endgeneration"}, end, line);
      expect_stmt_end();
      auto always = make_expr(Expr::Kind::Literal, line);
      always->value = Value(true);
      n->branches.emplace_back(std::move(always), std::move(body));
      return n;
    }
    if (keyword.rfind("end", 0) == 0 || keyword == "else" || keyword == "elif")
      error(line, fmt::format("unexpected '{}'", keyword));
    error(line, fmt::format("unknown tag '{}'", keyword));
  }

  NodePtr parse_if(int line) {
    auto n = make_node(Node::Kind::If, line);
    ExprPtr condition = parse_tuple(true);
    while (true) {
      expect_stmt_end();
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, end, line);
      n->branches.emplace_back(std::move(condition), std::move(body));
      if (end == "elif") {
        condition = parse_tuple(true);
        continue;
      }
      if (end == "else") {
        expect_stmt_end();
        n->else_body = parse_body({"endif"}, end, line);
      }
      expect_stmt_end();
      return n;
    }
  }

  // Assignment targets: a name, or names separated by commas (optionally in parentheses).
  std::vector<std::string> parse_targets() {
    std::vector<std::string> targets;
    const bool paren = skip_op("(");
    do {
      targets.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return targets;
  }

  NodePtr parse_for(int line) {
    auto n = make_node(Node::Kind::For, line);
    n->targets = parse_targets();
    if (!skip_name("in")) error(cur().line, fmt::format("expected 'in' in for loop, got {}", describe(cur())));
    n->expr = parse_tuple(false);
    if (skip_name("if")) n->condition = parse_expression(true);
    if (is_name("recursive")) error(cur().line, "recursive for loops are not supported");
    expect_stmt_end();
    std::string end;
    n->body = parse_body({"else", "endfor"}, end, line);
    if (end == "else") {
      expect_stmt_end();
      n->else_body = parse_body({"endfor"}, end, line);
    }
    expect_stmt_end();
    return n;
  }

  NodePtr parse_set(int line) {
    if (cur().type == TokenType::Name && peek().type == TokenType::Operator && peek().text == "." &&
        peek(2).type == TokenType::Name) {
      auto n = make_node(Node::Kind::Set, line);
      n->attr_of = next().text;
      next();
      n->name = next().text;
      expect_op("=");
      n->expr = parse_tuple(true);
      expect_stmt_end();
      return n;
    }
    std::vector<std::string> targets = parse_targets();
    if (skip_op("=")) {
      auto n = make_node(Node::Kind::Set, line);
      n->targets = std::move(targets);
      n->expr = parse_tuple(true);
      expect_stmt_end();
      return n;
    }
    if (targets.size() != 1) error(line, "a set block assigns one name");
    auto n = make_node(Node::Kind::SetBlock, line);
    n->targets = std::move(targets);
    if (is_op("|")) n->filter = parse_filter_chain(line);
    expect_stmt_end();
    std::string end;
    n->body = parse_body({"endset"}, end, line);
    expect_stmt_end();
    return n;
  }

  // "| f(args) | g" applied to a placeholder: the value of the block's body at run time.
  ExprPtr parse_filter_chain(int line) {
    ExprPtr node = make_expr(Expr::Kind::Name, line);  // the placeholder: an empty name
    if (!is_op("|")) {  // {% filter f %}: the first filter has no pipe
      node = parse_filter(std::move(node));
    }
    while (is_op("|")) {
      next();
      node = parse_filter(std::move(node));
    }
    return node;
  }

  std::vector<Param> parse_params() {
    std::vector<Param> params;
    expect_op("(");
    while (!is_op(")")) {
      if (!params.empty()) expect_op(",");
      if (is_op(")")) break;
      Param p;
      p.name = expect_name();
      if (skip_op("=")) p.default_value = parse_expression(true);
      params.push_back(std::move(p));
    }
    expect_op(")");
    return params;
  }

  NodePtr parse_macro(int line) {
    auto n = make_node(Node::Kind::Macro, line);
    n->name = expect_name();
    n->params = parse_params();
    expect_stmt_end();
    std::string end;
    n->body = parse_body({"endmacro"}, end, line);
    if (cur().type == TokenType::Name) next();  // {% endmacro name %}
    expect_stmt_end();
    return n;
  }

  NodePtr parse_call_block(int line) {
    auto n = make_node(Node::Kind::CallBlock, line);
    if (is_op("(")) n->params = parse_params();
    n->expr = parse_expression(true);
    if (n->expr->kind != Expr::Kind::Call) error(line, "expected a macro call after 'call'");
    expect_stmt_end();
    std::string end;
    n->body = parse_body({"endcall"}, end, line);
    expect_stmt_end();
    return n;
  }

  NodePtr parse_filter_block(int line) {
    auto n = make_node(Node::Kind::FilterBlock, line);
    n->filter = parse_filter_chain(line);
    expect_stmt_end();
    std::string end;
    n->body = parse_body({"endfilter"}, end, line);
    expect_stmt_end();
    return n;
  }

  // --- Expressions ------------------------------------------------------------------------------------

  // Comma-separated expressions; more than one (or a trailing comma) make a tuple.
  ExprPtr parse_tuple(bool with_condexpr) {
    const int line = cur().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto tuple = make_expr(Expr::Kind::Tuple, line);
    tuple->args.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == TokenType::ExprEnd || cur().type == TokenType::StmtEnd || is_op(")")) break;
      tuple->args.push_back(parse_expression(with_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    const NestingGuard guard(*this);
    ExprPtr expr = parse_or();
    if (!with_condexpr) return expr;
    while (is_name("if")) {
      const int line = next().line;
      auto cond = make_expr(Expr::Kind::Cond, line);
      cond->args.push_back(std::move(expr));
      cond->args.push_back(parse_or());
      cond->args.push_back(skip_name("else") ? parse_expression(true) : nullptr);
      expr = std::move(cond);
    }
    return expr;
  }

  // One left-associative level: operands from `operand`, joined by any of `ops` (operators, or
  // the names "and" / "or").
  ExprPtr left_assoc(std::initializer_list<std::string_view> ops, ExprPtr (Parser::*operand)()) {
    ExprPtr left = (this->*operand)();
    while (true) {
      const bool match = std::any_of(ops.begin(), ops.end(), [&](std::string_view op) {
        return (cur().type == TokenType::Operator || cur().type == TokenType::Name) && cur().text == op;
      });
      if (!match) return left;
      const Token& op = next();
      auto e = make_expr(Expr::Kind::Binary, op.line);
      e->name = op.text;
      e->args.push_back(std::move(left));
      e->args.push_back((this->*operand)());
      left = std::move(e);
    }
  }

  ExprPtr parse_or() { return left_assoc({"or"}, &Parser::parse_and); }
  ExprPtr parse_and() { return left_assoc({"and"}, &Parser::parse_not); }

  ExprPtr parse_not() {
    const NestingGuard guard(*this);
    if (is_name("not")) {
      const int line = next().line;
      auto e = make_expr(Expr::Kind::Unary, line);
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == TokenType::Operator &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" || cur().text == ">" ||
           cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == TokenType::Name && peek().text == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make_expr(Expr::Kind::Compare, line);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() { return left_assoc({"+", "-"}, &Parser::parse_concat); }
  ExprPtr parse_concat() { return left_assoc({"~"}, &Parser::parse_math2); }
  ExprPtr parse_math2() { return left_assoc({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprPtr parse_pow() { return left_assoc({"**"}, &Parser::parse_unary_with_filter); }
  ExprPtr parse_unary_with_filter() { return parse_unary(true); }

  ExprPtr parse_unary(bool with_filter) {
    const NestingGuard guard(*this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      node = make_expr(Expr::Kind::Unary, op.line);
      node->name = op.text;
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case TokenType::Name: {
        next();
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = make_expr(Expr::Kind::Literal, t.line);
          e->value = Value(t.text[0] == 't' || t.text[0] == 'T');
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = make_expr(Expr::Kind::Literal, t.line);
          e->value = Value::none();
          return e;
        }
        auto e = make_expr(Expr::Kind::Name, t.line);
        e->name = t.text;
        return e;
      }
      case TokenType::String: {
        std::string s;
        const int line = t.line;
        while (cur().type == TokenType::String) s += next().text;  // 'a' 'b' is 'ab'
        auto e = make_expr(Expr::Kind::Literal, line);
        e->value = Value(std::move(s));
        return e;
      }
      case TokenType::Int: {
        next();
        auto e = make_expr(Expr::Kind::Literal, t.line);
        int64_t v = 0;
        const auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
        if (r.ec != std::errc()) error(t.line, fmt::format("integer literal {} is too large", t.text));
        e->value = Value(v);
        return e;
      }
      case TokenType::Float: {
        next();
        auto e = make_expr(Expr::Kind::Literal, t.line);
        e->value = Value(std::strtod(t.text.c_str(), nullptr));
        return e;
      }
      case TokenType::Operator:
        if (t.text == "(") {
          next();
          if (skip_op(")")) return make_expr(Expr::Kind::Tuple, t.line);
          ExprPtr inner = parse_tuple(true);
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          next();
          auto e = make_expr(Expr::Kind::List, t.line);
          while (!is_op("]")) {
            if (!e->args.empty()) expect_op(",");
            if (is_op("]")) break;
            e->args.push_back(parse_expression(true));
          }
          expect_op("]");
          return e;
        }
        if (t.text == "{") {
          next();
          auto e = make_expr(Expr::Kind::Dict, t.line);
          while (!is_op("}")) {
            if (!e->args.empty()) expect_op(",");
            if (is_op("}")) break;
            e->args.push_back(parse_expression(true));
            expect_op(":");
            e->args.push_back(parse_expression(true));
          }
          expect_op("}");
          return e;
        }
        break;
      default: break;
    }
    error(t.line, fmt::format("unexpected {}", describe(t)));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        const int line = next().line;
        if (cur().type == TokenType::Int) {  // x.0 is x[0]
          auto index = make_expr(Expr::Kind::Literal, line);
          index->value = Value(static_cast<int64_t>(std::stoll(next().text)));
          auto e = make_expr(Expr::Kind::Item, line);
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(index));
          node = std::move(e);
          continue;
        }
        auto e = make_expr(Expr::Kind::Attr, line);
        e->name = expect_name();
        e->args.push_back(std::move(node));
        node = std::move(e);
      } else if (is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const int line = next().line;  // '['
    ExprPtr bounds[3];
    int colons = 0;
    while (!is_op("]")) {
      if (skip_op(":")) {
        if (++colons > 2) error(line, "too many ':' in a slice");
        continue;
      }
      if (bounds[colons]) error(cur().line, fmt::format("unexpected {} in subscript", describe(cur())));
      bounds[colons] = colons == 0 ? parse_tuple(true) : parse_expression(true);
    }
    expect_op("]");
    if (colons == 0) {
      if (!bounds[0]) error(line, "empty subscript");
      auto e = make_expr(Expr::Kind::Item, line);
      e->args.push_back(std::move(node));
      e->args.push_back(std::move(bounds[0]));
      return e;
    }
    auto e = make_expr(Expr::Kind::Slice, line);
    e->args.push_back(std::move(node));
    for (auto& b : bounds) e->args.push_back(std::move(b));
    return e;
  }

  // "(a, b, key=c)" after `callee`; the arguments go to args[1..] and kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (skip_op("**")) {
        e.dyn_kwargs = parse_expression(true);
      } else if (skip_op("*")) {
        e.dyn_args = parse_expression(true);
      } else if (cur().type == TokenType::Name && peek().type == TokenType::Operator && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error(cur().line, "positional argument after keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make_expr(Expr::Kind::Call, cur().line);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter(ExprPtr input) {
    const int line = cur().line;
    auto e = make_expr(Expr::Kind::Filter, line);
    e->name = expect_name();
    if (!has_filter(e->name)) error(line, fmt::format("unknown filter '{}'", e->name));
    e->args.push_back(std::move(input));
    if (is_op("(")) parse_call_args(*e);
    return e;
  }

  ExprPtr parse_test(ExprPtr input) {
    const int line = cur().line;
    auto e = make_expr(Expr::Kind::Test, line);
    e->negated = skip_name("not");
    e->name = expect_name();
    if (!has_test(e->name)) error(line, fmt::format("unknown test '{}'", e->name));
    e->args.push_back(std::move(input));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == TokenType::Name || cur().type == TokenType::String || cur().type == TokenType::Int ||
                cur().type == TokenType::Float || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if")) {
      // "x is divisibleby 3", "x is sameas false": one argument without parentheses.
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        next();
        node = parse_filter(std::move(node));
      } else if (is_name("is")) {
        next();
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }
};

}  // namespace

Body parse_template(std::string_view source) { return Parser(tokenize(source)).parse(); }

}  // namespace lserve::jinja
