// Value: what a Jinja expression evaluates to, with the Python semantics that Hugging Face's
// chat templates see under jinja2: dicts keep insertion order, 1 and 1.0 print differently,
// str(True) is "True", str(None) is "None", lists print as Python reprs, and Undefined prints
// as "" but fails when used in arithmetic or looked into.
//
// Lists and dicts are shared (Python's reference semantics); templates cannot mutate them anyway
// (Hugging Face renders in an immutable sandbox), except through namespace() objects.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "model/chat_template/jinja_error.h"

namespace lserve::jinja {

class Value;
class Interpreter;

struct List {
  std::vector<Value> items;
  bool is_tuple = false;  // prints as (a, b) instead of [a, b]
};

// An insertion-ordered dict. Keys are compared with Python's ==, by a linear scan: template dicts
// (messages, tool schemas) have a handful of keys.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  bool is_namespace = false;  // a namespace(): attributes may be assigned with {% set ns.x = %}

  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct Callable {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&)> call;
};

class Value {
 public:
  enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Callable };

  // Undefined; `hint` is what an error says when it is used ("'foo' is undefined").
  Value() : v_(UndefinedTag{}) {}
  static Value undefined(std::string hint) { Value v; v.v_ = UndefinedTag{std::move(hint)}; return v; }
  static Value none() { Value v; v.v_ = nullptr; return v; }
  Value(bool b) : v_(b) {}  // NOLINT: implicit on purpose, like the ones below
  Value(int64_t i) : v_(i) {}
  Value(int i) : v_(static_cast<int64_t>(i)) {}
  Value(double f) : v_(f) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(const char* s) : v_(std::string(s)) {}
  // A string marked safe (jinja2's Markup, from the safe and escape filters): `+` with a plain
  // string HTML-escapes the plain one, as Markup.__add__ does.
  static Value markup(std::string s) { Value v(std::move(s)); v.markup_ = true; return v; }
  static Value list(std::vector<Value> items = {}, bool tuple = false);
  static Value dict(std::vector<std::pair<Value, Value>> items = {});
  static Value callable(std::string name, std::function<Value(Interpreter&, CallArgs&)> fn);

  Type type() const { return static_cast<Type>(v_.index()); }
  bool is_undefined() const { return type() == Type::Undefined; }
  bool is_none() const { return type() == Type::None; }
  bool is_bool() const { return type() == Type::Bool; }
  bool is_int() const { return type() == Type::Int; }
  bool is_float() const { return type() == Type::Float; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }  // Python: bool is an int
  bool is_string() const { return type() == Type::String; }
  bool is_markup() const { return markup_; }
  bool is_list() const { return type() == Type::List; }
  bool is_dict() const { return type() == Type::Dict; }
  bool is_callable() const { return type() == Type::Callable; }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const;    // ints and bools
  double as_float() const;   // any number
  const std::string& str() const { return std::get<std::string>(v_); }
  const std::string& undefined_hint() const { return std::get<UndefinedTag>(v_).hint; }
  List& list_ref() const { return *std::get<std::shared_ptr<List>>(v_); }
  const std::vector<Value>& items() const { return list_ref().items; }
  Dict& dict_ref() const { return *std::get<std::shared_ptr<Dict>>(v_); }
  const Callable& callable_ref() const { return *std::get<std::shared_ptr<Callable>>(v_); }

  bool truthy() const;            // Python's bool()
  std::string type_name() const;  // Python's type(x).__name__, for error messages
  // Throws TemplateError ("'foo' is undefined") when this is Undefined: for uses that jinja2's
  // Undefined refuses (arithmetic, calls, attribute access).
  void require_defined() const;

  static Value from_json(const nlohmann::ordered_json& j);
  // Python's json.dumps(value, ensure_ascii=False, indent=..., separators=..., sort_keys=...),
  // which is Hugging Face's tojson filter. indent < 0 means None.
  std::string to_json(int indent, std::string_view item_sep, std::string_view key_sep, bool sort_keys) const;

 private:
  struct UndefinedTag { std::string hint; };
  std::variant<UndefinedTag, std::nullptr_t, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Dict>, std::shared_ptr<Callable>>
      v_;
  bool markup_ = false;
};

// Python's str() and repr(). Undefined gives "" (that is how jinja2 prints it).
std::string py_str(const Value& v);
std::string py_repr(const Value& v);
std::string py_float_repr(double d);
// Python's ==, and <, which throws TemplateError for unorderable types.
bool py_equal(const Value& a, const Value& b);
bool py_less(const Value& a, const Value& b);

// --- UTF-8 strings as Python sees them: sequences of code points ----------------------------------
std::vector<std::string_view> code_points(std::string_view s);
size_t code_point_count(std::string_view s);
bool is_py_space(uint32_t cp);  // str.isspace()

}  // namespace lserve::jinja
