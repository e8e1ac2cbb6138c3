// The builtins a template can name: filters (x | trim), tests (x is string), methods of strings,
// dicts and lists (x.startswith('a'), d.items()), and global functions (range, namespace, dict,
// raise_exception). Each follows jinja2 and Python, including their defaults and odd corners
// (unique and sort ignore case by default, indent leaves the first line alone, ...).
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/chat_template/jinja_value.h"

namespace lserve::jinja {

bool has_filter(std::string_view name);
bool has_test(std::string_view name);
Value apply_filter(Interpreter& interp, std::string_view name, const Value& input, CallArgs& args);
bool apply_test(Interpreter& interp, std::string_view name, const Value& input, CallArgs& args);

// obj.name when `name` is a method of obj's type (str.split, dict.items, ...): the bound method.
// nullopt when the type has no such method. Methods that would mutate (list.append,
// dict.update) throw TemplateError, as Hugging Face's immutable sandbox does.
std::optional<Value> get_method(const Value& obj, std::string_view name);

// range, namespace, dict, raise_exception.
std::vector<std::pair<std::string, Value>> builtin_globals();

// Binds a call's arguments to named parameters the way Python binds a signature: positionals
// first, then keywords by name. Missing ones are Undefined. Throws TemplateError naming
// `function` for too many positionals, unknown keywords, or a parameter given twice.
std::vector<Value> bind_args(std::string_view function, CallArgs& args, std::initializer_list<std::string_view> params);

// Python's iteration over a value: a list's items, a dict's keys, a string's characters; an
// Undefined iterates as empty (jinja2's default Undefined). Throws TemplateError otherwise.
std::vector<Value> iterate(const Value& v);

}  // namespace lserve::jinja
