// The syntax tree of a parsed template: expressions (Expr) and statements (Node). Plain structs
// with a kind tag; which fields a kind uses is written beside each kind.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/chat_template/jinja_value.h"

namespace lserve::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // value
    Name,      // name
    List,      // args: the items
    Tuple,     // args: the items
    Dict,      // args: key0, value0, key1, value1, ...
    Attr,      // args[0].name
    Item,      // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]]; a missing bound is nullptr
    Call,      // args[0](args[1..], kwargs, *dyn_args, **dyn_kwargs)
    Filter,    // args[0] | name(args[1..], kwargs)
    Test,      // args[0] is [not] name(args[1..], kwargs); negated for "is not"
    Unary,     // name ("-", "+", "not") args[0]
    Binary,    // args[0] name args[1], name one of + - * / // % ** ~ and or
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ..., ops from == != < <= > >= in "not in"
    Cond,      // args[0] if args[1] else args[2] (args[2] nullptr when there is no else)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
  ExprPtr dyn_args;    // f(*xs): a list spliced into the positional arguments
  ExprPtr dyn_kwargs;  // f(**d): a dict spliced into the keyword arguments
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

// A macro's parameter: its name and default (nullptr for none).
struct Param {
  std::string name;
  ExprPtr default_value;
};

struct Node {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // branches: (condition, body)...; else_body
    For,          // targets in expr [if condition]: body; else_body
    Set,          // targets = expr; or attr_of.name = expr when attr_of is set (namespace attribute)
    SetBlock,     // {% set targets[0] | filter %}body{% endset %}; filter is nullptr or a Filter
                  // chain whose innermost argument is a Literal placeholder
    Macro,        // {% macro name(params) %}body{% endmacro %}
    CallBlock,    // {% call(params) expr %}body{% endcall %}: expr is a Call, body is caller()
    FilterBlock,  // {% filter ... %}body{% endfilter %}; filter as for SetBlock
    Break,
    Continue,
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::string name;
  std::string attr_of;
  ExprPtr expr;
  ExprPtr condition;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::vector<Param> params;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

}  // namespace lserve::jinja
