// Methods of str, dict and list that templates call (s.strip(), d.items(), d.get(k)), the
// global functions (range, namespace, dict, raise_exception), and argument binding.
#include <algorithm>

#include "model/chat_template/jinja_builtins.h"
#include "model/chat_template/jinja_interpreter.h"
#include "model/chat_template/jinja_strings.h"

namespace lserve::jinja {

namespace {

// jinja2's sandbox caps range() at this many items.
constexpr int64_t kMaxRange = 100000;

std::optional<std::string> opt_chars(const Value& v) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  if (!v.is_string()) throw TemplateError(fmt::format("strip arg must be None or str, not {}", v.type_name()));
  return v.str();
}

int64_t opt_int(const Value& v, int64_t dflt) {
  if (v.is_undefined() || v.is_none()) return dflt;
  if (!v.is_int() && !v.is_bool()) throw TemplateError(fmt::format("'{}' object cannot be interpreted as an integer", v.type_name()));
  return v.as_int();
}

const std::string& str_arg(const Value& v, std::string_view method) {
  if (!v.is_string()) {
    v.require_defined();
    throw TemplateError(fmt::format("{}() argument must be str, not {}", method, v.type_name()));
  }
  return v.str();
}

Value string_list(std::vector<std::string> parts) {
  std::vector<Value> out;
  out.reserve(parts.size());
  for (auto& p : parts) out.emplace_back(std::move(p));
  return Value::list(std::move(out));
}

// startswith/endswith take a string or a tuple of strings.
bool affix_match(const std::string& s, const Value& affix, bool prefix, std::string_view method) {
  auto one = [&](const Value& a) {
    const std::string& x = str_arg(a, method);
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) return std::any_of(affix.items().begin(), affix.items().end(), one);
  return one(affix);
}

// str.format: {} {0} {name} fields (format specs other than empty are refused), {{ and }}.
std::string str_format(const std::string& fmt_str, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    const char c = fmt_str[i];
    if (c == '}') {
      if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '}') ++i;
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = fmt_str.find('}', i);
    if (close == std::string::npos) throw TemplateError("Single '{' encountered in format string");
    std::string field = fmt_str.substr(i + 1, close - i - 1);
    if (field.find(':') != std::string::npos || field.find('!') != std::string::npos)
      throw TemplateError("str.format: format specs and conversions are not supported");
    const Value* v = nullptr;
    if (field.empty()) field = std::to_string(auto_index++);
    if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      const size_t k = std::stoul(field);
      if (k >= args.positional.size()) throw TemplateError("Replacement index out of range for positional args tuple");
      v = &args.positional[k];
    } else {
      for (const auto& [key, val] : args.keyword)
        if (key == field) v = &val;
      if (!v) throw TemplateError(fmt::format("KeyError: '{}'", field));
    }
    out += py_str(*v);
    i = close;
  }
  return out;
}

Value call_string_method(const std::string& s, std::string_view name, CallArgs& args) {
  const auto bind = [&](std::initializer_list<std::string_view> params) { return bind_args(name, args, params); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const auto a = bind({"chars"});
    return Value(py_strip(s, opt_chars(a[0]), name != "rstrip", name != "lstrip"));
  }
  if (name == "upper") return bind({}), Value(py_upper(s));
  if (name == "lower" || name == "casefold") return bind({}), Value(py_lower(s));
  if (name == "title") return bind({}), Value(py_title(s));
  if (name == "capitalize") return bind({}), Value(py_capitalize(s));
  if (name == "startswith" || name == "endswith") {
    const auto a = bind({"prefix"});
    return Value(affix_match(s, a[0], name == "startswith", name));
  }
  if (name == "split" || name == "rsplit") {
    const auto a = bind({"sep", "maxsplit"});
    std::optional<std::string> sep;
    if (!a[0].is_undefined() && !a[0].is_none()) sep = str_arg(a[0], name);
    return string_list(py_split(s, sep, opt_int(a[1], -1), name == "rsplit"));
  }
  if (name == "splitlines") {
    const auto a = bind({"keepends"});
    return string_list(py_splitlines(s, a[0].truthy()));
  }
  if (name == "replace") {
    const auto a = bind({"old", "new", "count"});
    return Value(py_replace(s, str_arg(a[0], name), str_arg(a[1], name), opt_int(a[2], -1)));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const auto a = bind({"sub"});
    const std::string& sub = str_arg(a[0], name);
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(code_point_count(s) + 1));
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value(n);
    }
    const size_t at = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (at == std::string::npos) {
      if (name == "index" || name == "rindex") throw TemplateError("substring not found");
      return Value(int64_t{-1});
    }
    return Value(static_cast<int64_t>(code_point_count(std::string_view(s).substr(0, at))));
  }
  if (name == "join") {
    const auto a = bind({"iterable"});
    std::string out;
    bool first = true;
    for (const Value& item : iterate(a[0])) {
      if (!first) out += s;
      first = false;
      out += str_arg(item, "join");
    }
    return Value(std::move(out));
  }
  if (name == "format") return Value(str_format(s, args));
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric") return bind({}), Value(py_all_chars(s, is_digit_cp));
  if (name == "isalpha") return bind({}), Value(py_all_chars(s, is_alpha_cp));
  if (name == "isalnum") return bind({}), Value(py_all_chars(s, is_alnum_cp));
  if (name == "isspace") return bind({}), Value(py_all_chars(s, is_space_cp));
  if (name == "islower") return bind({}), Value(py_is_cased_lower(s));
  if (name == "isupper") return bind({}), Value(py_is_cased_upper(s));
  throw TemplateError(fmt::format("'str' object has no attribute '{}'", name));
}

// Markup's string methods return Markup (lists of it for split).
Value as_markup(Value v) {
  if (v.is_string()) return Value::markup(v.str());
  if (v.is_list()) {
    std::vector<Value> items;
    for (const Value& item : v.items()) items.push_back(as_markup(item));
    return Value::list(std::move(items));
  }
  return v;
}

constexpr std::string_view kStringMethods[] = {
    "strip", "lstrip", "rstrip", "upper", "lower", "casefold", "title", "capitalize", "startswith", "endswith",
    "split", "rsplit", "splitlines", "replace", "find", "rfind", "index", "rindex", "count", "join", "format",
    "isdigit", "isdecimal", "isnumeric", "isalpha", "isalnum", "isspace", "islower", "isupper"};

Value dict_method(const Value& obj, std::string_view name, CallArgs& args) {
  const Dict& d = obj.dict_ref();
  if (name == "items" || name == "keys" || name == "values") {
    bind_args(name, args, {});
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) {
      if (name == "items") out.push_back(Value::list({k, v}, true));
      else out.push_back(name == "keys" ? k : v);
    }
    return Value::list(std::move(out));
  }
  if (name == "get") {
    const auto a = bind_args(name, args, {"key", "default"});
    if (const Value* v = d.find(a[0])) return *v;
    return a[1].is_undefined() ? Value::none() : a[1];
  }
  if (name == "copy") {
    bind_args(name, args, {});
    return Value::dict(d.items);
  }
  throw TemplateError(fmt::format("'dict' object has no attribute '{}'", name));
}

Value list_method(const Value& obj, std::string_view name, CallArgs& args) {
  List& l = obj.list_ref();
  if (name == "index" || name == "count") {
    const auto a = bind_args(name, args, {"value"});
    int64_t n = 0;
    for (size_t i = 0; i < l.items.size(); ++i) {
      if (!py_equal(l.items[i], a[0])) continue;
      if (name == "index") return Value(static_cast<int64_t>(i));
      ++n;
    }
    if (name == "index") throw TemplateError(fmt::format("{} is not in list", py_repr(a[0])));
    return Value(n);
  }
  if (name == "copy") {
    bind_args(name, args, {});
    return Value::list(l.items);
  }
  // pop and clear are not on jinja2's list of mutating methods, so Hugging Face's sandbox allows them.
  if (name == "pop") {
    const auto a = bind_args(name, args, {"index"});
    if (l.items.empty()) throw TemplateError("pop from empty list");
    int64_t i = opt_int(a[0], -1);
    const int64_t n = static_cast<int64_t>(l.items.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw TemplateError("pop index out of range");
    Value v = l.items[static_cast<size_t>(i)];
    l.items.erase(l.items.begin() + i);
    return v;
  }
  if (name == "clear") {
    bind_args(name, args, {});
    l.items.clear();
    return Value::none();
  }
  throw TemplateError(fmt::format("'list' object has no attribute '{}'", name));
}

bool is_one_of(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

Value bound(const Value& obj, std::string_view name, Value (*method)(const Value&, std::string_view, CallArgs&)) {
  std::string n(name);
  return Value::callable(obj.type_name() + "." + n, [obj, n, method](Interpreter&, CallArgs& args) { return method(obj, n, args); });
}

}  // namespace

std::optional<Value> get_method(const Value& obj, std::string_view name) {
  const auto unsafe = [&] {
    return TemplateError(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, obj.type_name()));
  };
  if (obj.is_string()) {
    if (std::find(std::begin(kStringMethods), std::end(kStringMethods), name) == std::end(kStringMethods)) return std::nullopt;
    return bound(obj, name, [](const Value& o, std::string_view n, CallArgs& a) {
      Value r = call_string_method(o.str(), n, a);
      return o.is_markup() ? as_markup(std::move(r)) : r;
    });
  }
  if (obj.is_dict() && !obj.dict_ref().is_namespace) {
    if (is_one_of(name, {"items", "keys", "values", "get", "copy"})) return bound(obj, name, dict_method);
    if (is_one_of(name, {"clear", "pop", "popitem", "setdefault", "update"})) throw unsafe();
    return std::nullopt;
  }
  if (obj.is_list() && !obj.list_ref().is_tuple) {
    if (is_one_of(name, {"index", "count", "copy", "pop", "clear"})) return bound(obj, name, list_method);
    if (is_one_of(name, {"append", "reverse", "insert", "sort", "extend", "remove"})) throw unsafe();
    return std::nullopt;
  }
  if (obj.is_list() && is_one_of(name, {"index", "count"})) return bound(obj, name, list_method);
  return std::nullopt;
}

std::vector<Value> iterate(const Value& v) {
  switch (v.type()) {
    case Value::Type::Undefined: return {};
    case Value::Type::String: {
      std::vector<Value> out;
      for (auto cp : code_points(v.str())) out.emplace_back(cp);
      return out;
    }
    case Value::Type::List: return v.items();
    case Value::Type::Dict:
      if (!v.dict_ref().is_namespace) {
        std::vector<Value> out;
        for (const auto& [k, val] : v.dict_ref().items) out.push_back(k);
        return out;
      }
      break;
    default: break;
  }
  throw TemplateError(fmt::format("'{}' object is not iterable", v.type_name()));
}

std::vector<Value> bind_args(std::string_view function, CallArgs& args, std::initializer_list<std::string_view> params) {
  if (args.positional.size() > params.size())
    throw TemplateError(fmt::format("{}() takes at most {} argument(s) ({} given)", function, params.size(), args.positional.size()));
  std::vector<Value> out(params.size());
  for (size_t i = 0; i < args.positional.size(); ++i) out[i] = args.positional[i];
  for (auto& [key, value] : args.keyword) {
    const auto it = std::find(params.begin(), params.end(), key);
    if (it == params.end()) throw TemplateError(fmt::format("{}() got an unexpected keyword argument '{}'", function, key));
    const size_t i = static_cast<size_t>(it - params.begin());
    if (i < args.positional.size()) throw TemplateError(fmt::format("{}() got multiple values for argument '{}'", function, key));
    out[i] = value;
  }
  return out;
}

std::vector<std::pair<std::string, Value>> builtin_globals() {
  std::vector<std::pair<std::string, Value>> g;
  g.emplace_back("range", Value::callable("range", [](Interpreter&, CallArgs& args) {
    if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3)
      throw TemplateError("range() takes 1 to 3 positional arguments");
    std::vector<int64_t> a;
    for (const Value& v : args.positional) a.push_back(opt_int(v, 0));
    const int64_t start = a.size() == 1 ? 0 : a[0];
    const int64_t stop = a.size() == 1 ? a[0] : a[1];
    const int64_t step = a.size() == 3 ? a[2] : 1;
    if (step == 0) throw TemplateError("range() arg 3 must not be zero");
    std::vector<Value> out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (static_cast<int64_t>(out.size()) >= kMaxRange)
        throw TemplateError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      out.emplace_back(i);
    }
    return Value::list(std::move(out));
  }));
  const auto make_dict = [](CallArgs& args, bool is_namespace) {
    Value d = Value::dict();
    d.dict_ref().is_namespace = is_namespace;
    if (args.positional.size() > 1) throw TemplateError("expected at most 1 positional argument");
    if (!args.positional.empty()) {
      const Value& init = args.positional[0];
      if (!init.is_dict()) throw TemplateError(fmt::format("cannot build a dict from {}", init.type_name()));
      for (const auto& [k, v] : init.dict_ref().items) d.dict_ref().set(k, v);
    }
    for (auto& [k, v] : args.keyword) d.dict_ref().set(Value(k), v);
    return d;
  };
  g.emplace_back("namespace", Value::callable("namespace", [make_dict](Interpreter&, CallArgs& args) { return make_dict(args, true); }));
  g.emplace_back("dict", Value::callable("dict", [make_dict](Interpreter&, CallArgs& args) { return make_dict(args, false); }));
  g.emplace_back("raise_exception", Value::callable("raise_exception", [](Interpreter&, CallArgs& args) -> Value {
    const auto a = bind_args("raise_exception", args, {"message"});
    throw RaisedException(py_str(a[0]));
  }));
  return g;
}

}  // namespace lserve::jinja
