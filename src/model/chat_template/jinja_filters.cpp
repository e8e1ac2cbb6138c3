// The filters and tests of jinja2 that chat templates use, with jinja2's signatures and defaults;
// tojson is Hugging Face's (json.dumps with ensure_ascii=False, keys in insertion order).
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "model/byte_level.h"
#include "model/chat_template/jinja_builtins.h"
#include "model/chat_template/jinja_interpreter.h"
#include "model/chat_template/jinja_operators.h"
#include "model/chat_template/jinja_strings.h"

namespace lserve::jinja {

namespace {

using FilterFn = Value (*)(Interpreter&, const Value&, CallArgs&);
using TestFn = bool (*)(Interpreter&, const Value&, CallArgs&);

// --- Argument helpers ---------------------------------------------------------------------------------

bool flag(const Value& v, bool dflt) { return v.is_undefined() ? dflt : v.truthy(); }

int64_t int_arg(const Value& v, int64_t dflt, std::string_view what) {
  if (v.is_undefined()) return dflt;
  if (!v.is_int() && !v.is_bool()) throw TemplateError(fmt::format("{} must be an integer, not {}", what, v.type_name()));
  return v.as_int();
}

std::optional<std::string> opt_string(const Value& v) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  return py_str(v);
}

// jinja2's attribute getter for filters (map, selectattr, sort, ...): "a.b.0" walks items first,
// like obj['a']['b'][0].
Value lookup_path(const Value& obj, const Value& path) {
  if (path.is_int()) return Interpreter::get_item(obj, path);
  Value cur = obj;
  const std::string p = py_str(path);
  size_t start = 0;
  while (true) {
    const size_t dot = p.find('.', start);
    const std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    Value key(part);
    if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
      key = Value(static_cast<int64_t>(std::stoll(part)));
    cur = Interpreter::get_item(cur, key);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// A filter's string result: Markup when its input was (jinja2 filters go through soft_str, and
// Markup's string methods return Markup).
Value same_kind(const Value& input, std::string s) {
  return input.is_markup() ? Value::markup(std::move(s)) : Value(std::move(s));
}

// The sort key of the sort/dictsort/unique/min/max filters: strings lowered unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(py_lower(v.str()));
  return v;
}

// --- Filters ------------------------------------------------------------------------------------------

Value f_abs(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("abs", args, {});
  if (v.is_float()) return Value(std::fabs(v.as_float()));
  if (v.is_number()) return v.as_int() < 0 ? negate(v) : Value(v.as_int());
  v.require_defined();
  throw TemplateError(fmt::format("bad operand type for abs(): '{}'", v.type_name()));
}

Value f_attr(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("attr", args, {"name"});
  return Interpreter::get_attr(v, py_str(a[0]));
}

Value f_capitalize(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("capitalize", args, {});
  return same_kind(v, py_capitalize(py_str(v)));
}

Value f_center(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("center", args, {"width"});
  const std::string s = py_str(v);
  const int64_t width = int_arg(a[0], 80, "width");
  const int64_t len = static_cast<int64_t>(code_point_count(s));
  if (width <= len) return Value(s);
  const int64_t pad = width - len;
  // Python's str.center puts the odd space on the left when the width is odd.
  const int64_t left = pad / 2 + (pad & width & 1);
  return Value(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(pad - left), ' '));
}

Value f_default(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("default", args, {"default_value", "boolean"});
  const Value dflt = a[0].is_undefined() ? Value("") : a[0];
  if (v.is_undefined() || (flag(a[1], false) && !v.truthy())) return dflt;
  return v;
}

Value f_dictsort(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("dictsort", args, {"case_sensitive", "by", "reverse"});
  if (!v.is_dict()) throw TemplateError(fmt::format("dictsort expects a dict, got {}", v.type_name()));
  const bool cs = flag(a[0], false);
  const std::string by = a[1].is_undefined() ? "key" : py_str(a[1]);
  if (by != "key" && by != "value") throw TemplateError("You can only sort by either 'key' or 'value'");
  const size_t pos = by == "key" ? 0 : 1;
  std::vector<Value> pairs;
  for (const auto& [k, val] : v.dict_ref().items) pairs.push_back(Value::list({k, val}, true));
  std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& x, const Value& y) {
    return py_less(sort_key(x.items()[pos], cs), sort_key(y.items()[pos], cs));
  });
  if (flag(a[2], false)) std::reverse(pairs.begin(), pairs.end());
  return Value::list(std::move(pairs));
}

Value f_escape(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("escape", args, {});
  if (v.is_markup()) return v;
  return Value::markup(html_escape(py_str(v)));
}

Value f_first(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("first", args, {});
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Value f_last(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("last", args, {});
  v.require_defined();
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

std::optional<double> parse_float(std::string_view s) {
  const std::string t = py_strip(s, std::nullopt, true, true);
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) return std::nullopt;
  return d;
}

Value f_float(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("float", args, {"default"});
  const Value dflt = a[0].is_undefined() ? Value(0.0) : a[0];
  if (v.is_number()) return Value(v.as_float());
  if (v.is_string())
    if (auto d = parse_float(v.str())) return Value(*d);
  return dflt;
}

Value f_int(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("int", args, {"default", "base"});
  const Value dflt = a[0].is_undefined() ? Value(int64_t{0}) : a[0];
  const int64_t base = int_arg(a[1], 10, "base");
  if (v.is_float()) return std::isfinite(v.as_float()) ? Value(static_cast<int64_t>(v.as_float())) : dflt;
  if (v.is_number()) return Value(v.as_int());
  if (v.is_string()) {
    std::string t = py_strip(v.str(), std::nullopt, true, true);
    t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
    if (!t.empty()) {
      char* end = nullptr;
      errno = 0;
      const long long i = std::strtoll(t.c_str(), &end, static_cast<int>(base));
      if (end == t.c_str() + t.size() && errno == 0) return Value(static_cast<int64_t>(i));
    }
    if (auto d = parse_float(v.str()); d && std::isfinite(*d)) return Value(static_cast<int64_t>(*d));
  }
  return dflt;
}

Value f_format(Interpreter&, const Value& v, CallArgs& args) {
  if (!args.keyword.empty()) throw TemplateError("the format filter takes positional arguments only here");
  return Value(percent_format(py_str(v), Value::list(args.positional, true)));
}

Value f_indent(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("indent", args, {"width", "first", "blank"});
  const std::string indentation = a[0].is_string() ? a[0].str() : std::string(static_cast<size_t>(int_arg(a[0], 4, "width")), ' ');
  std::string s = py_str(v) + "\n";  // as jinja2 does, so that splitlines sees a last empty line
  const auto lines = py_splitlines(s, false);
  std::string out;
  if (flag(a[2], false)) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) out += "\n" + indentation;
      out += lines[i];
    }
  } else {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) out += "\n" + (lines[i].empty() ? std::string() : indentation);
      out += lines[i];
    }
  }
  if (flag(a[1], false)) out = indentation + out;
  return same_kind(v, std::move(out));
}

Value f_items(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("items", args, {});
  if (v.is_undefined()) return Value::list();
  if (!v.is_dict()) throw TemplateError(fmt::format("items filter expects a mapping, got {}", v.type_name()));
  std::vector<Value> pairs;
  for (const auto& [k, val] : v.dict_ref().items) pairs.push_back(Value::list({k, val}, true));
  return Value::list(std::move(pairs));
}

Value f_join(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("join", args, {"d", "attribute"});
  const std::string sep = a[0].is_undefined() ? "" : py_str(a[0]);
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += py_str(a[1].is_undefined() ? item : lookup_path(item, a[1]));
  }
  return Value(std::move(out));
}

Value f_length(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("length", args, {});
  switch (v.type()) {
    case Value::Type::Undefined: return Value(int64_t{0});
    case Value::Type::String: return Value(static_cast<int64_t>(code_point_count(v.str())));
    case Value::Type::List: return Value(static_cast<int64_t>(v.items().size()));
    case Value::Type::Dict: return Value(static_cast<int64_t>(v.dict_ref().items.size()));
    default: throw TemplateError(fmt::format("object of type '{}' has no len()", v.type_name()));
  }
}

Value f_list(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("list", args, {});
  return Value::list(iterate(v));
}

Value f_lower(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("lower", args, {});
  return same_kind(v, py_lower(py_str(v)));
}

Value f_upper(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("upper", args, {});
  return same_kind(v, py_upper(py_str(v)));
}

Value f_map(Interpreter& interp, const Value& v, CallArgs& args) {
  std::vector<Value> out;
  if (!v.truthy()) return Value::list();  // jinja2 maps nothing over a falsy value, None included
  const auto items = iterate(v);
  const bool by_attribute = std::any_of(args.keyword.begin(), args.keyword.end(), [](const auto& kw) { return kw.first == "attribute"; });
  if (by_attribute) {
    const auto a = bind_args("map", args, {"attribute", "default"});
    for (const Value& item : items) {
      Value r = lookup_path(item, a[0]);
      out.push_back(r.is_undefined() && !a[1].is_undefined() ? a[1] : r);
    }
    return Value::list(std::move(out));
  }
  if (args.positional.empty()) throw TemplateError("map requires a filter name or attribute=");
  const std::string filter = py_str(args.positional[0]);
  if (!has_filter(filter)) throw TemplateError(fmt::format("unknown filter '{}'", filter));
  for (const Value& item : items) {
    CallArgs rest{{args.positional.begin() + 1, args.positional.end()}, args.keyword};
    out.push_back(apply_filter(interp, filter, item, rest));
  }
  return Value::list(std::move(out));
}

Value min_max(const Value& v, CallArgs& args, bool want_max) {
  const auto a = bind_args(want_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined(fmt::format("No aggregated item, sequence was empty."));
  const bool cs = flag(a[0], false);
  auto key = [&](const Value& x) { return sort_key(a[1].is_undefined() ? x : lookup_path(x, a[1]), cs); };
  const Value* best = &items[0];
  for (const Value& item : items)
    if (want_max ? py_less(key(*best), key(item)) : py_less(key(item), key(*best))) best = &item;
  return *best;
}

Value f_max(Interpreter&, const Value& v, CallArgs& args) { return min_max(v, args, true); }
Value f_min(Interpreter&, const Value& v, CallArgs& args) { return min_max(v, args, false); }

// select / reject / selectattr / rejectattr: keep the items whose test (truthiness by default)
// is `keep`.
Value select_items(Interpreter& interp, const Value& v, CallArgs& args, bool by_attribute, bool keep) {
  size_t at = 0;
  Value attribute;
  if (by_attribute) {
    if (args.positional.empty()) throw TemplateError("selectattr/rejectattr need an attribute name");
    attribute = args.positional[at++];
  }
  std::string test;
  if (at < args.positional.size()) test = py_str(args.positional[at++]);
  if (!test.empty() && !has_test(test)) throw TemplateError(fmt::format("unknown test '{}'", test));
  std::vector<Value> out;
  if (!v.truthy()) return Value::list();  // jinja2 selects nothing from a falsy value, None included
  for (const Value& item : iterate(v)) {
    const Value subject = by_attribute ? lookup_path(item, attribute) : item;
    bool passed;
    if (test.empty()) {
      passed = subject.truthy();
    } else {
      CallArgs rest{{args.positional.begin() + static_cast<std::ptrdiff_t>(at), args.positional.end()}, args.keyword};
      passed = apply_test(interp, test, subject, rest);
    }
    if (passed == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value f_select(Interpreter& i, const Value& v, CallArgs& a) { return select_items(i, v, a, false, true); }
Value f_reject(Interpreter& i, const Value& v, CallArgs& a) { return select_items(i, v, a, false, false); }
Value f_selectattr(Interpreter& i, const Value& v, CallArgs& a) { return select_items(i, v, a, true, true); }
Value f_rejectattr(Interpreter& i, const Value& v, CallArgs& a) { return select_items(i, v, a, true, false); }

Value f_replace(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("replace", args, {"old", "new", "count"});
  return Value(py_replace(py_str(v), py_str(a[0]), py_str(a[1]), a[2].is_undefined() || a[2].is_none() ? -1 : int_arg(a[2], -1, "count")));
}

Value f_reverse(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("reverse", args, {});
  if (v.is_string()) return slice(v, std::nullopt, std::nullopt, -1);
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_round(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("round", args, {"precision", "method"});
  const int64_t precision = int_arg(a[0], 0, "precision");
  const std::string method = a[1].is_undefined() ? "common" : py_str(a[1]);
  if (!v.is_number()) throw TemplateError(fmt::format("round expects a number, got {}", v.type_name()));
  // Python's round(int, n) is the int itself (for n >= 0).
  if (method == "common" && !v.is_float() && precision >= 0) return Value(v.as_int());
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_float() * scale;
  double r;
  if (method == "common") r = std::nearbyint(x);  // Python's round(): halves to even
  else if (method == "ceil") r = std::ceil(x);
  else if (method == "floor") r = std::floor(x);
  else throw TemplateError("method must be 'common', 'ceil' or 'floor'");
  return Value(r / scale);
}

Value f_safe(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("safe", args, {});
  return Value::markup(py_str(v));
}

Value f_sort(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("sort", args, {"reverse", "case_sensitive", "attribute"});
  auto items = iterate(v);
  const bool cs = flag(a[1], false);
  auto key = [&](const Value& x) { return sort_key(a[2].is_undefined() ? x : lookup_path(x, a[2]), cs); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) { return py_less(key(x), key(y)); });
  if (flag(a[0], false)) {
    // Python's sorted(reverse=True) keeps equal items in their original order.
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) { return py_less(key(y), key(x)); });
  }
  return Value::list(std::move(items));
}

Value f_string(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("string", args, {});
  return same_kind(v, py_str(v));
}

Value f_sum(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("sum", args, {"attribute", "start"});
  Value total = a[1].is_undefined() ? Value(int64_t{0}) : a[1];
  for (const Value& item : iterate(v)) total = binary_op("+", total, a[0].is_undefined() ? item : lookup_path(item, a[0]));
  return total;
}

Value f_title(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("title", args, {});
  // jinja2's title: split before runs of '-', whitespace and opening brackets, then uppercase
  // each piece's first character and lowercase the rest.
  const std::string s = py_str(v);
  std::string out;
  bool start = true;
  for (size_t pos = 0; pos < s.size();) {
    const size_t begin = pos;
    const uint32_t cp = next_codepoint(s, pos);
    const bool separator = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || is_py_space(cp);
    const std::string_view ch(s.data() + begin, pos - begin);
    if (separator) {
      out += ch;
      start = true;
    } else {
      out += start ? py_upper(ch) : py_lower(ch);
      start = false;
    }
  }
  return Value(std::move(out));
}

std::string escape_non_ascii(std::string_view json) {
  std::string out;
  for (size_t pos = 0; pos < json.size();) {
    const size_t begin = pos;
    uint32_t cp = next_codepoint(json, pos);
    if (cp < 0x80) {
      out.append(json.substr(begin, pos - begin));
    } else if (cp < 0x10000) {
      out += fmt::format("\\u{:04x}", cp);
    } else {
      cp -= 0x10000;
      out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    }
  }
  return out;
}

Value f_tojson(Interpreter&, const Value& v, CallArgs& args) {
  // Hugging Face's signature: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
  const auto a = bind_args("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  int indent = -1;
  std::string indent_str;
  if (a[1].is_int()) indent = static_cast<int>(std::max<int64_t>(0, a[1].as_int()));
  else if (a[1].is_string()) throw TemplateError("tojson: a string indent is not supported");
  std::string item_sep = indent >= 0 ? "," : ", ";
  std::string key_sep = ": ";
  if (a[2].is_list()) {
    if (a[2].items().size() != 2) throw TemplateError("tojson: separators must be a pair");
    item_sep = py_str(a[2].items()[0]);
    key_sep = py_str(a[2].items()[1]);
  }
  std::string json = v.to_json(indent, item_sep, key_sep, flag(a[3], false));
  if (flag(a[0], false)) json = escape_non_ascii(json);
  return Value(std::move(json));
}

Value f_trim(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("trim", args, {"chars"});
  return same_kind(v, py_strip(py_str(v), opt_string(a[0]), true, true));
}

Value f_truncate(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("truncate", args, {"length", "killwords", "end", "leeway"});
  const std::string s = py_str(v);
  const int64_t length = int_arg(a[0], 255, "length");
  const std::string end = a[2].is_undefined() ? "..." : py_str(a[2]);
  const int64_t leeway = int_arg(a[3], 5, "leeway");
  const auto cps = code_points(s);
  const int64_t n = static_cast<int64_t>(cps.size());
  if (n <= length + leeway) return Value(s);
  const int64_t keep = std::max<int64_t>(0, length - static_cast<int64_t>(code_point_count(end)));
  std::string head;
  for (int64_t i = 0; i < keep; ++i) head += cps[static_cast<size_t>(i)];
  if (flag(a[1], false)) return Value(head + end);
  const size_t space = head.rfind(' ');
  return Value((space == std::string::npos ? head : head.substr(0, space)) + end);
}

Value f_unique(Interpreter&, const Value& v, CallArgs& args) {
  const auto a = bind_args("unique", args, {"case_sensitive", "attribute"});
  const bool cs = flag(a[0], false);
  std::vector<Value> out, seen;
  for (const Value& item : iterate(v)) {
    const Value key = sort_key(a[1].is_undefined() ? item : lookup_path(item, a[1]), cs);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return py_equal(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::list(std::move(out));
}

Value f_wordcount(Interpreter&, const Value& v, CallArgs& args) {
  bind_args("wordcount", args, {});
  return Value(word_count(py_str(v)));
}

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const std::map<std::string, FilterFn, std::less<>> table = {
      {"abs", f_abs},         {"attr", f_attr},         {"capitalize", f_capitalize}, {"center", f_center},
      {"count", f_length},    {"d", f_default},         {"default", f_default},       {"dictsort", f_dictsort},
      {"e", f_escape},        {"escape", f_escape},     {"first", f_first},           {"float", f_float},
      {"format", f_format},   {"indent", f_indent},     {"int", f_int},               {"items", f_items},
      {"join", f_join},       {"last", f_last},         {"length", f_length},         {"list", f_list},
      {"lower", f_lower},     {"map", f_map},           {"max", f_max},               {"min", f_min},
      {"reject", f_reject},   {"rejectattr", f_rejectattr}, {"replace", f_replace},   {"reverse", f_reverse},
      {"round", f_round},     {"safe", f_safe},         {"select", f_select},         {"selectattr", f_selectattr},
      {"sort", f_sort},       {"string", f_string},     {"sum", f_sum},               {"title", f_title},
      {"tojson", f_tojson},   {"trim", f_trim},         {"truncate", f_truncate},     {"unique", f_unique},
      {"upper", f_upper},     {"wordcount", f_wordcount},
  };
  return table;
}

// --- Tests --------------------------------------------------------------------------------------------

Value one_arg(std::string_view test, CallArgs& args) { return bind_args(test, args, {"other"})[0]; }

bool t_defined(Interpreter&, const Value& v, CallArgs& a) { bind_args("defined", a, {}); return !v.is_undefined(); }
bool t_undefined(Interpreter&, const Value& v, CallArgs& a) { bind_args("undefined", a, {}); return v.is_undefined(); }
bool t_none(Interpreter&, const Value& v, CallArgs& a) { bind_args("none", a, {}); return v.is_none(); }
bool t_boolean(Interpreter&, const Value& v, CallArgs& a) { bind_args("boolean", a, {}); return v.is_bool(); }
bool t_true(Interpreter&, const Value& v, CallArgs& a) { bind_args("true", a, {}); return v.is_bool() && v.as_bool(); }
bool t_false(Interpreter&, const Value& v, CallArgs& a) { bind_args("false", a, {}); return v.is_bool() && !v.as_bool(); }
bool t_integer(Interpreter&, const Value& v, CallArgs& a) { bind_args("integer", a, {}); return v.is_int(); }
bool t_float(Interpreter&, const Value& v, CallArgs& a) { bind_args("float", a, {}); return v.is_float(); }
bool t_number(Interpreter&, const Value& v, CallArgs& a) { bind_args("number", a, {}); return v.is_number(); }
bool t_string(Interpreter&, const Value& v, CallArgs& a) { bind_args("string", a, {}); return v.is_string(); }
bool t_mapping(Interpreter&, const Value& v, CallArgs& a) {
  bind_args("mapping", a, {});
  return v.is_dict() && !v.dict_ref().is_namespace;
}
bool t_iterable(Interpreter&, const Value& v, CallArgs& a) {
  bind_args("iterable", a, {});
  return v.is_string() || v.is_list() || (v.is_dict() && !v.dict_ref().is_namespace) || v.is_undefined();
}
bool t_sequence(Interpreter&, const Value& v, CallArgs& a) {
  bind_args("sequence", a, {});
  return v.is_string() || v.is_list() || (v.is_dict() && !v.dict_ref().is_namespace) || v.is_undefined();
}
bool t_callable(Interpreter&, const Value& v, CallArgs& a) { bind_args("callable", a, {}); return v.is_callable(); }
bool t_lower(Interpreter&, const Value& v, CallArgs& a) { bind_args("lower", a, {}); return py_is_cased_lower(py_str(v)); }
bool t_upper(Interpreter&, const Value& v, CallArgs& a) { bind_args("upper", a, {}); return py_is_cased_upper(py_str(v)); }

int64_t need_int(const Value& v, std::string_view test) {
  if (!v.is_number() || v.is_float()) throw TemplateError(fmt::format("test '{}' expects an integer, got {}", test, v.type_name()));
  return v.as_int();
}
bool t_odd(Interpreter&, const Value& v, CallArgs& a) { bind_args("odd", a, {}); return need_int(v, "odd") % 2 != 0; }
bool t_even(Interpreter&, const Value& v, CallArgs& a) { bind_args("even", a, {}); return need_int(v, "even") % 2 == 0; }
bool t_divisibleby(Interpreter&, const Value& v, CallArgs& a) {
  const Value num = bind_args("divisibleby", a, {"num"})[0];
  return py_equal(binary_op("%", v, num), Value(int64_t{0}));
}
bool t_eq(Interpreter&, const Value& v, CallArgs& a) { return py_equal(v, one_arg("eq", a)); }
bool t_ne(Interpreter&, const Value& v, CallArgs& a) { return !py_equal(v, one_arg("ne", a)); }
bool t_lt(Interpreter&, const Value& v, CallArgs& a) { return py_less(v, one_arg("lt", a)); }
bool t_le(Interpreter&, const Value& v, CallArgs& a) { return !py_less(one_arg("le", a), v); }
bool t_gt(Interpreter&, const Value& v, CallArgs& a) { return py_less(one_arg("gt", a), v); }
bool t_ge(Interpreter&, const Value& v, CallArgs& a) { return !py_less(v, one_arg("ge", a)); }
bool t_in(Interpreter&, const Value& v, CallArgs& a) { return contains(bind_args("in", a, {"seq"})[0], v); }
bool t_sameas(Interpreter&, const Value& v, CallArgs& a) {
  const Value other = one_arg("sameas", a);
  if (v.type() != other.type()) return false;
  if (v.is_list()) return &v.list_ref() == &other.list_ref();
  if (v.is_dict()) return &v.dict_ref() == &other.dict_ref();
  return py_equal(v, other);
}
bool t_filter(Interpreter&, const Value& v, CallArgs& a) { bind_args("filter", a, {}); return v.is_string() && has_filter(v.str()); }
bool t_test(Interpreter&, const Value& v, CallArgs& a) { bind_args("test", a, {}); return v.is_string() && has_test(v.str()); }
bool t_escaped(Interpreter&, const Value&, CallArgs& a) { bind_args("escaped", a, {}); return false; }  // no Markup here

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const std::map<std::string, TestFn, std::less<>> table = {
      {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none},         {"boolean", t_boolean},
      {"true", t_true},       {"false", t_false},         {"integer", t_integer},   {"float", t_float},
      {"number", t_number},   {"string", t_string},       {"mapping", t_mapping},   {"iterable", t_iterable},
      {"sequence", t_sequence}, {"callable", t_callable}, {"lower", t_lower},       {"upper", t_upper},
      {"odd", t_odd},         {"even", t_even},           {"divisibleby", t_divisibleby},
      {"eq", t_eq},           {"equalto", t_eq},          {"==", t_eq},             {"ne", t_ne},
      {"!=", t_ne},           {"lt", t_lt},               {"lessthan", t_lt},       {"<", t_lt},
      {"le", t_le},           {"<=", t_le},               {"gt", t_gt},             {"greaterthan", t_gt},
      {">", t_gt},            {"ge", t_ge},               {">=", t_ge},             {"in", t_in},
      {"sameas", t_sameas},   {"filter", t_filter},       {"test", t_test},         {"escaped", t_escaped},
  };
  return table;
}

}  // namespace

bool has_filter(std::string_view name) { return filters().count(name) != 0; }
bool has_test(std::string_view name) { return tests().count(name) != 0; }

Value apply_filter(Interpreter& interp, std::string_view name, const Value& input, CallArgs& args) {
  const auto it = filters().find(name);
  if (it == filters().end()) throw TemplateError(fmt::format("unknown filter '{}'", name));
  return it->second(interp, input, args);
}

bool apply_test(Interpreter& interp, std::string_view name, const Value& input, CallArgs& args) {
  const auto it = tests().find(name);
  if (it == tests().end()) throw TemplateError(fmt::format("unknown test '{}'", name));
  return it->second(interp, input, args);
}

}  // namespace lserve::jinja
