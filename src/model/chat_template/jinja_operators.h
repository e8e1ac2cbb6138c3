// Python's operators on Values: arithmetic (+ - * / // % **, with int/float promotion, floor
// division and a modulo that takes the divisor's sign), string and list concatenation and
// repetition, "%" string formatting, `in`, and slicing with negative indices and steps.
#pragma once

#include <optional>
#include <string_view>

#include "model/chat_template/jinja_value.h"

namespace lserve::jinja {

// op is one of + - * / // % **. Throws TemplateError with Python's message for bad operand types.
Value binary_op(std::string_view op, const Value& a, const Value& b);
Value negate(const Value& v);
// `item in container`.
bool contains(const Value& container, const Value& item);
// container[start:stop:step] for strings (by code point) and lists; nullopt bounds are omitted.
Value slice(const Value& container, const std::optional<int64_t>& start, const std::optional<int64_t>& stop,
            const std::optional<int64_t>& step);
// "fmt % args" with %s %r %d %i %f %x %%.
std::string percent_format(std::string_view fmt, const Value& args);

}  // namespace lserve::jinja
