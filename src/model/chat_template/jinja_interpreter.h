// Interpreter: renders a parsed template. Scopes follow jinja2: the template's variables and its
// top-level {% set %}s share one scope; each for-loop iteration, macro call and call block gets
// its own child scope, so a {% set %} inside a loop is gone after the loop (templates carry
// state out of loops with namespace() objects, which are shared, not copied).
//
// Errors raised while rendering name the template line ("chat template line N: ..."), except
// raise_exception()'s RaisedException, whose message is exactly the template's.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/chat_template/jinja_ast.h"

namespace lserve::jinja {

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;

  const Value* lookup(std::string_view name) const;
  void set(std::string_view name, Value value);
};

class Interpreter {
 public:
  // `globals` are visible everywhere (builtins, strftime_now); `variables` are the render call's
  // (messages, add_generation_prompt, bos_token, ...).
  static std::string render(const Body& body, const std::vector<std::pair<std::string, Value>>& globals,
                            const std::vector<std::pair<std::string, Value>>& variables);

  Value call(const Value& callee, CallArgs& args);

  // Attribute and item access with jinja2's rules: obj.name looks for a method first and then an
  // item; obj[key] looks for an item first and then a method. Missing ones are Undefined.
  static Value get_attr(const Value& obj, std::string_view name);
  static Value get_item(const Value& obj, const Value& key);

 private:
  enum class Flow { Normal, Break, Continue };

  Flow exec(const Body& body, const std::shared_ptr<Scope>& scope, std::string& out);
  Flow exec_node(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out);
  void exec_for(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out);
  void exec_set(const Node& node, const std::shared_ptr<Scope>& scope);
  Value make_macro(const Node& node, const std::shared_ptr<Scope>& scope, std::string name);
  Value apply_block_filter(const Expr& filter, std::string body, const std::shared_ptr<Scope>& scope);

  Value eval(const Expr& e, const std::shared_ptr<Scope>& scope);
  Value eval_inner(const Expr& e, const std::shared_ptr<Scope>& scope);
  CallArgs eval_args(const Expr& e, const std::shared_ptr<Scope>& scope, size_t first);

  int depth_ = 0;  // nesting of macro calls, against runaway recursion
};

}  // namespace lserve::jinja
