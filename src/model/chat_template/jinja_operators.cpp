// Python's operators on Values (see jinja_operators.h).
#include "model/chat_template/jinja_operators.h"

#include <algorithm>
#include <cmath>

#include "model/chat_template/jinja_strings.h"

namespace lserve::jinja {

namespace {

[[noreturn]] void unsupported(std::string_view op, const Value& a, const Value& b) {
  a.require_defined();
  b.require_defined();
  if (op == "+" && a.is_string())
    throw TemplateError(fmt::format("can only concatenate str (not \"{}\") to str", b.type_name()));
  if (op == "+" && a.is_list())
    throw TemplateError(fmt::format("can only concatenate list (not \"{}\") to list", b.type_name()));
  throw TemplateError(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
}

// Python ints do not overflow; ours stop at 64 bits with an error.
int64_t checked_op(std::string_view op, int64_t x, int64_t y) {
  int64_t r = 0;
  bool overflow = false;
  if (op == "+") overflow = __builtin_add_overflow(x, y, &r);
  else if (op == "-") overflow = __builtin_sub_overflow(x, y, &r);
  else overflow = __builtin_mul_overflow(x, y, &r);
  if (overflow) throw TemplateError("integer overflow");
  return r;
}

// 'ab' * n and [x] * n, refused beyond 256 Mi bytes or items (a hostile template's memory bomb).
Value repeat(const Value& seq, int64_t n) {
  constexpr double kMaxSize = double(1 << 28);
  const double size = seq.is_string() ? double(seq.str().size()) : double(seq.items().size());
  if (size * double(std::max<int64_t>(n, 0)) > kMaxSize) throw TemplateError("repetition result too large");
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return seq.is_markup() ? Value::markup(std::move(out)) : Value(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return Value::list(std::move(out), seq.list_ref().is_tuple);
}

Value arithmetic(std::string_view op, const Value& a, const Value& b) {
  const bool ints = !a.is_float() && !b.is_float();
  if (op == "/") {
    if (b.as_float() == 0.0) throw TemplateError("division by zero");
    return Value(a.as_float() / b.as_float());
  }
  if (ints) {
    const int64_t x = a.as_int();
    const int64_t y = b.as_int();
    if (op == "+" || op == "-" || op == "*") return Value(checked_op(op, x, y));
    if (op == "//" || op == "%") {
      if (y == 0) throw TemplateError("integer division or modulo by zero");
      int64_t q = x / y;
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value(op == "//" ? q : m);
    }
    if (op == "**") {
      if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t result = 1;
      for (int64_t i = 0; i < y; ++i) result = checked_op("*", result, x);
      return Value(result);
    }
  }
  const double x = a.as_float();
  const double y = b.as_float();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "**") return Value(std::pow(x, y));
  if (y == 0.0) throw TemplateError("float division by zero");
  if (op == "//") return Value(std::floor(x / y));
  double m = std::fmod(x, y);
  if (m != 0.0 && ((m < 0) != (y < 0))) m += y;
  return Value(m);
}

// Python's slice.indices(): clamps start and stop into the sequence for the step's direction.
std::vector<size_t> slice_positions(size_t length, const std::optional<int64_t>& start_in,
                                    const std::optional<int64_t>& stop_in, const std::optional<int64_t>& step_in) {
  const int64_t n = static_cast<int64_t>(length);
  const int64_t step = step_in.value_or(1);
  if (step == 0) throw TemplateError("slice step cannot be zero");
  auto clamp = [&](const std::optional<int64_t>& v, int64_t dflt) {
    if (!v) return dflt;
    int64_t i = *v;
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t start = clamp(start_in, step > 0 ? 0 : n - 1);
  const int64_t stop = clamp(stop_in, step > 0 ? n : -1);
  std::vector<size_t> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(static_cast<size_t>(i));
  return out;
}

}  // namespace

Value binary_op(std::string_view op, const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return arithmetic(op, a, b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      if (!a.is_markup() && !b.is_markup()) return Value(a.str() + b.str());
      // Markup + str escapes the plain side (markupsafe's __add__ and __radd__).
      return Value::markup((a.is_markup() ? a.str() : html_escape(a.str())) + (b.is_markup() ? b.str() : html_escape(b.str())));
    }
    if (a.is_list() && b.is_list() && a.list_ref().is_tuple == b.list_ref().is_tuple) {
      std::vector<Value> out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(out), a.list_ref().is_tuple);
    }
  } else if (op == "*") {
    if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, a.as_int());
  } else if (op == "%" && a.is_string()) {
    b.require_defined();
    return Value(percent_format(a.str(), b));
  }
  unsupported(op, a, b);
}

Value negate(const Value& v) {
  if (v.is_float()) return Value(-v.as_float());
  if (v.is_number()) return Value(checked_op("-", 0, v.as_int()));
  v.require_defined();
  throw TemplateError(fmt::format("bad operand type for unary -: '{}'", v.type_name()));
}

bool contains(const Value& container, const Value& item) {
  switch (container.type()) {
    case Value::Type::String:
      if (!item.is_string()) {
        item.require_defined();
        throw TemplateError(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Type::List:
      for (const Value& v : container.items())
        if (py_equal(v, item)) return true;
      return false;
    case Value::Type::Dict: return container.dict_ref().find(item) != nullptr;
    case Value::Type::Undefined: return false;  // jinja2's Undefined iterates as empty
    default: throw TemplateError(fmt::format("argument of type '{}' is not iterable", container.type_name()));
  }
}

Value slice(const Value& container, const std::optional<int64_t>& start, const std::optional<int64_t>& stop,
            const std::optional<int64_t>& step) {
  if (container.is_string()) {
    const auto cps = code_points(container.str());
    std::string out;
    for (size_t i : slice_positions(cps.size(), start, stop, step)) out += cps[i];
    return Value(std::move(out));
  }
  if (container.is_list()) {
    const auto& items = container.items();
    std::vector<Value> out;
    for (size_t i : slice_positions(items.size(), start, stop, step)) out.push_back(items[i]);
    return Value::list(std::move(out), container.list_ref().is_tuple);
  }
  container.require_defined();
  throw TemplateError(fmt::format("'{}' object is not subscriptable", container.type_name()));
}

std::string percent_format(std::string_view fmt, const Value& args) {
  std::vector<Value> values = args.is_list() && args.list_ref().is_tuple ? args.items() : std::vector<Value>{args};
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) throw TemplateError("incomplete format");
    const char c = fmt[i];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (next >= values.size()) throw TemplateError("not enough arguments for format string");
    const Value& v = values[next++];
    switch (c) {
      case 's': out += py_str(v); break;
      case 'r': out += py_repr(v); break;
      case 'd':
      case 'i':
        if (!v.is_number()) throw TemplateError(fmt::format("%{} format: a real number is required, not {}", c, v.type_name()));
        out += std::to_string(v.is_float() ? static_cast<int64_t>(v.as_float()) : v.as_int());
        break;
      case 'f':
        if (!v.is_number()) throw TemplateError(fmt::format("%f format: a real number is required, not {}", v.type_name()));
        out += fmt::format("{:.6f}", v.as_float());
        break;
      case 'x':
        if (!v.is_int()) throw TemplateError("%x format: an integer is required");
        out += fmt::format("{:x}", v.as_int());
        break;
      default: throw TemplateError(fmt::format("unsupported format character '{}'", c));
    }
  }
  if (next < values.size()) throw TemplateError("not all arguments converted during string formatting");
  return out;
}

}  // namespace lserve::jinja
