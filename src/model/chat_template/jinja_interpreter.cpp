// Interpreter: walks the syntax tree, evaluating expressions with Python semantics and writing
// the output (see jinja_interpreter.h).
#include "model/chat_template/jinja_interpreter.h"

#include "model/chat_template/jinja_builtins.h"
#include "model/chat_template/jinja_operators.h"

namespace lserve::jinja {

namespace {

constexpr std::string_view kLinePrefix = "chat template line ";
constexpr int kMaxDepth = 256;  // nested macro calls; deeper is runaway recursion
// The most text a render may produce: far beyond any prompt, short of exhausting memory when a
// hostile template nests big loops.
constexpr size_t kMaxOutputBytes = size_t{1} << 28;

void check_size(const std::string& out) {
  if (out.size() > kMaxOutputBytes) throw TemplateError("the template's output exceeds 256 MiB");
}
// The name a {% filter %} or {% set x | f %} block's body is bound to while its filters run;
// the parser's placeholder is a Name expression with this (unspellable) empty name.
constexpr std::string_view kBlockBody;

std::shared_ptr<Scope> child_of(const std::shared_ptr<Scope>& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

std::string undefined_attr_hint(const Value& obj, std::string_view name) {
  if (obj.is_none()) return fmt::format("'None' has no attribute '{}'", name);
  return fmt::format("'{} object' has no attribute '{}'", obj.type_name(), name);
}

// Unpacks one loop item (or set value) into the targets: one name takes the value whole.
void assign_targets(Scope& scope, const std::vector<std::string>& targets, const Value& value) {
  if (targets.size() == 1) {
    scope.set(targets[0], value);
    return;
  }
  const std::vector<Value> parts = iterate(value);
  if (parts.size() != targets.size())
    throw TemplateError(fmt::format("cannot unpack {} values into {} names", parts.size(), targets.size()));
  for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], parts[i]);
}

std::optional<int64_t> slice_bound(const Value& v) {
  if (v.is_none() || v.is_undefined()) return std::nullopt;
  if (!v.is_int() && !v.is_bool())
    throw TemplateError("slice indices must be integers or None");
  return v.as_int();
}

}  // namespace

// --- Scope ------------------------------------------------------------------------------------------

const Value* Scope::lookup(std::string_view name) const {
  for (const Scope* s = this; s; s = s->parent.get())
    for (const auto& [k, v] : s->vars)
      if (k == name) return &v;
  return nullptr;
}

void Scope::set(std::string_view name, Value value) {
  for (auto& [k, v] : vars) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  vars.emplace_back(std::string(name), std::move(value));
}

// --- Rendering --------------------------------------------------------------------------------------

std::string Interpreter::render(const Body& body, const std::vector<std::pair<std::string, Value>>& globals,
                                const std::vector<std::pair<std::string, Value>>& variables) {
  auto global_scope = std::make_shared<Scope>();
  global_scope->vars = globals;
  auto scope = child_of(global_scope);
  for (const auto& [k, v] : variables) scope->set(k, v);
  Interpreter interp;
  std::string out;
  if (interp.exec(body, scope, out) != Flow::Normal) throw TemplateError("'break' or 'continue' outside a loop");
  return out;
}

Interpreter::Flow Interpreter::exec(const Body& body, const std::shared_ptr<Scope>& scope, std::string& out) {
  for (const NodePtr& node : body) {
    const Flow flow = exec_node(*node, scope, out);
    if (flow != Flow::Normal) return flow;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_node(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out) {
  switch (node.kind) {
    case Node::Kind::Text:
      out += node.text;
      check_size(out);
      break;
    case Node::Kind::Output:
      out += py_str(eval(*node.expr, scope));
      check_size(out);
      break;
    case Node::Kind::If:
      for (const auto& [condition, body] : node.branches)
        if (eval(*condition, scope).truthy()) return exec(body, scope, out);
      return exec(node.else_body, scope, out);
    case Node::Kind::For: exec_for(node, scope, out); break;
    case Node::Kind::Set: exec_set(node, scope); break;
    case Node::Kind::SetBlock: {
      std::string body;
      exec(node.body, child_of(scope), body);
      scope->set(node.targets[0], node.filter ? apply_block_filter(*node.filter, std::move(body), scope) : Value(std::move(body)));
      break;
    }
    case Node::Kind::Macro: scope->set(node.name, make_macro(node, scope, node.name)); break;
    case Node::Kind::CallBlock: {
      const Expr& call = *node.expr;
      const Value callee = eval(*call.args[0], scope);
      CallArgs args = eval_args(call, scope, 1);
      args.keyword.emplace_back("caller", make_macro(node, scope, "caller"));
      out += py_str(this->call(callee, args));
      break;
    }
    case Node::Kind::FilterBlock: {
      std::string body;
      exec(node.body, child_of(scope), body);
      out += py_str(apply_block_filter(*node.filter, std::move(body), scope));
      break;
    }
    case Node::Kind::Break: return Flow::Break;
    case Node::Kind::Continue: return Flow::Continue;
  }
  return Flow::Normal;
}

Value Interpreter::apply_block_filter(const Expr& filter, std::string body, const std::shared_ptr<Scope>& scope) {
  auto inner = child_of(scope);
  inner->set(kBlockBody, Value(std::move(body)));
  return eval(filter, inner);
}

void Interpreter::exec_for(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out) {
  const Value iterable = eval(*node.expr, scope);
  std::vector<Value> items;
  try {
    items = iterate(iterable);
  } catch (const TemplateError& e) {
    throw TemplateError(fmt::format("{}{}: {}", kLinePrefix, node.expr->line, e.what()));
  }
  if (node.condition) {  // {% for x in xs if cond %}: loop.index and loop.length count the kept ones
    std::vector<Value> kept;
    for (const Value& item : items) {
      auto s = child_of(scope);
      assign_targets(*s, node.targets, item);
      if (eval(*node.condition, s).truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    exec(node.else_body, scope, out);
    return;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    auto s = child_of(scope);
    assign_targets(*s, node.targets, items[static_cast<size_t>(i)]);
    Value loop = Value::dict({
        {"index", Value(i + 1)},
        {"index0", Value(i)},
        {"revindex", Value(n - i)},
        {"revindex0", Value(n - i - 1)},
        {"first", Value(i == 0)},
        {"last", Value(i == n - 1)},
        {"length", Value(n)},
        {"depth", Value(1)},
        {"depth0", Value(0)},
        {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item")},
        {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item")},
        {"cycle", Value::callable("loop.cycle", [i](Interpreter&, CallArgs& args) {
           if (args.positional.empty()) throw TemplateError("no items for cycling given");
           return args.positional[static_cast<size_t>(i) % args.positional.size()];
         })},
    });
    s->set("loop", std::move(loop));
    if (exec(node.body, s, out) == Flow::Break) break;
  }
}

void Interpreter::exec_set(const Node& node, const std::shared_ptr<Scope>& scope) {
  Value value = eval(*node.expr, scope);
  if (node.attr_of.empty()) {
    try {
      assign_targets(*scope, node.targets, value);
    } catch (const TemplateError& e) {
      throw TemplateError(fmt::format("{}{}: {}", kLinePrefix, node.line, e.what()));
    }
    return;
  }
  const Value* target = scope->lookup(node.attr_of);
  if (!target || !target->is_dict() || !target->dict_ref().is_namespace)
    throw TemplateError(fmt::format("{}{}: cannot assign attribute on non-namespace object '{}'", kLinePrefix, node.line, node.attr_of));
  target->dict_ref().set(Value(node.name), std::move(value));
}

// A macro (or a call block's caller) as a callable. It renders in a child of the scope it was
// defined in, so it sees the template's variables as they are when it is called.
Value Interpreter::make_macro(const Node& node, const std::shared_ptr<Scope>& scope, std::string name) {
  const Node* def = &node;
  return Value::callable(name, [def, scope, name](Interpreter& interp, CallArgs& args) {
    if (++interp.depth_ > kMaxDepth) throw TemplateError(fmt::format("macro '{}' nested too deeply", name));
    auto s = child_of(scope);
    const auto& params = def->params;
    if (args.positional.size() > params.size())
      throw TemplateError(fmt::format("macro '{}' takes not more than {} argument(s)", name, params.size()));
    std::vector<bool> bound(params.size(), false);
    for (size_t i = 0; i < args.positional.size(); ++i) {
      s->set(params[i].name, args.positional[i]);
      bound[i] = true;
    }
    for (auto& [key, value] : args.keyword) {
      size_t i = 0;
      while (i < params.size() && params[i].name != key) ++i;
      if (i < params.size()) {
        s->set(key, value);
        bound[i] = true;
      } else if (key == "caller") {
        s->set(key, value);
      } else {
        throw TemplateError(fmt::format("macro '{}' takes no keyword argument '{}'", name, key));
      }
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (bound[i]) continue;
      s->set(params[i].name, params[i].default_value ? interp.eval(*params[i].default_value, s)
                                                      : Value::undefined(fmt::format("parameter '{}' was not provided", params[i].name)));
    }
    std::string out;
    interp.exec(def->body, s, out);
    --interp.depth_;
    return Value(std::move(out));
  });
}

Value Interpreter::call(const Value& callee, CallArgs& args) {
  if (!callee.is_callable()) {
    callee.require_defined();
    throw TemplateError(fmt::format("'{}' object is not callable", callee.type_name()));
  }
  return callee.callable_ref().call(*this, args);
}

// --- Attribute and item access -----------------------------------------------------------------------

Value Interpreter::get_attr(const Value& obj, std::string_view name) {
  obj.require_defined();
  if (obj.is_dict() && obj.dict_ref().is_namespace) {
    if (const Value* v = obj.dict_ref().find(name)) return *v;
    return Value::undefined(undefined_attr_hint(obj, name));
  }
  if (auto method = get_method(obj, name)) return *method;
  if (obj.is_dict()) {
    if (const Value* v = obj.dict_ref().find(name)) return *v;
  }
  return Value::undefined(undefined_attr_hint(obj, name));
}

Value Interpreter::get_item(const Value& obj, const Value& key) {
  obj.require_defined();
  if (obj.is_dict()) {
    if (const Value* v = obj.dict_ref().find(key)) return *v;
  } else if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
    } else {
      const auto cps = code_points(obj.str());
      const int64_t n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(cps[static_cast<size_t>(i)]);
    }
    return Value::undefined(fmt::format("{} index out of range", obj.type_name()));
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined(fmt::format("'{} object' has no attribute {}", obj.type_name(), py_repr(key)));
}

// --- Expressions -------------------------------------------------------------------------------------------

CallArgs Interpreter::eval_args(const Expr& e, const std::shared_ptr<Scope>& scope, size_t first) {
  CallArgs args;
  for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i], scope));
  for (const auto& [key, value] : e.kwargs) args.keyword.emplace_back(key, eval(*value, scope));
  if (e.dyn_args) {
    for (Value& v : iterate(eval(*e.dyn_args, scope))) args.positional.push_back(std::move(v));
  }
  if (e.dyn_kwargs) {
    const Value d = eval(*e.dyn_kwargs, scope);
    if (!d.is_dict()) throw TemplateError(fmt::format("argument after ** must be a mapping, not {}", d.type_name()));
    for (const auto& [k, v] : d.dict_ref().items) args.keyword.emplace_back(py_str(k), v);
  }
  return args;
}

Value Interpreter::eval(const Expr& e, const std::shared_ptr<Scope>& scope) {
  try {
    return eval_inner(e, scope);
  } catch (const RaisedException&) {
    throw;
  } catch (const TemplateError& err) {
    if (std::string_view(err.what()).substr(0, kLinePrefix.size()) == kLinePrefix) throw;
    throw TemplateError(fmt::format("{}{}: {}", kLinePrefix, e.line, err.what()));
  }
}

Value Interpreter::eval_inner(const Expr& e, const std::shared_ptr<Scope>& scope) {
  switch (e.kind) {
    case Expr::Kind::Literal: return e.value;
    case Expr::Kind::Name: {
      if (const Value* v = scope->lookup(e.name)) return *v;
      return Value::undefined(fmt::format("'{}' is undefined", e.name));
    }
    case Expr::Kind::List:
    case Expr::Kind::Tuple: {
      std::vector<Value> items;
      items.reserve(e.args.size());
      for (const auto& a : e.args) items.push_back(eval(*a, scope));
      return Value::list(std::move(items), e.kind == Expr::Kind::Tuple);
    }
    case Expr::Kind::Dict: {
      Value d = Value::dict();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) d.dict_ref().set(eval(*e.args[i], scope), eval(*e.args[i + 1], scope));
      return d;
    }
    case Expr::Kind::Attr: return get_attr(eval(*e.args[0], scope), e.name);
    case Expr::Kind::Item: return get_item(eval(*e.args[0], scope), eval(*e.args[1], scope));
    case Expr::Kind::Slice: {
      const Value container = eval(*e.args[0], scope);
      auto bound = [&](size_t i) { return e.args[i] ? slice_bound(eval(*e.args[i], scope)) : std::nullopt; };
      return slice(container, bound(1), bound(2), bound(3));
    }
    case Expr::Kind::Call: {
      const Value callee = eval(*e.args[0], scope);
      CallArgs args = eval_args(e, scope, 1);
      return call(callee, args);
    }
    case Expr::Kind::Filter: {
      const Value input = eval(*e.args[0], scope);
      CallArgs args = eval_args(e, scope, 1);
      return apply_filter(*this, e.name, input, args);
    }
    case Expr::Kind::Test: {
      const Value input = eval(*e.args[0], scope);
      CallArgs args = eval_args(e, scope, 1);
      return Value(apply_test(*this, e.name, input, args) != e.negated);
    }
    case Expr::Kind::Unary: {
      const Value v = eval(*e.args[0], scope);
      if (e.name == "not") return Value(!v.truthy());
      if (e.name == "-") return negate(v);
      if (!v.is_number()) {
        v.require_defined();
        throw TemplateError(fmt::format("bad operand type for unary +: '{}'", v.type_name()));
      }
      return v;
    }
    case Expr::Kind::Binary: {
      Value a = eval(*e.args[0], scope);
      if (e.name == "and") return a.truthy() ? eval(*e.args[1], scope) : a;
      if (e.name == "or") return a.truthy() ? a : eval(*e.args[1], scope);
      const Value b = eval(*e.args[1], scope);
      if (e.name == "~") return Value(py_str(a) + py_str(b));
      return binary_op(e.name, a, b);
    }
    case Expr::Kind::Compare: {
      Value left = eval(*e.args[0], scope);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.args[i + 1], scope);
        const std::string& op = e.ops[i];
        bool ok;
        if (op == "==") ok = py_equal(left, right);
        else if (op == "!=") ok = !py_equal(left, right);
        else if (op == "<") ok = py_less(left, right);
        else if (op == ">") ok = py_less(right, left);
        else if (op == "<=") ok = !py_less(right, left);
        else if (op == ">=") ok = !py_less(left, right);
        else if (op == "in") ok = contains(right, left);
        else ok = !contains(right, left);
        if (!ok) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::Kind::Cond:
      if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
      if (e.args[2]) return eval(*e.args[2], scope);
      return Value::undefined("the inline if expression had no else");
  }
  return Value();
}

}  // namespace lserve::jinja
