// Python's str.strip() on UTF-8 text: the evaluation spec strips continuations and detects
// blank haystack lines the way python/eval_tasks.py does.
#pragma once

#include <string_view>

namespace lserve::eval {

bool is_python_space(char32_t c);  // str.isspace() of one code point
// `text` without the leading and trailing code points that str.isspace() accepts.
std::string_view python_strip(std::string_view text);

}  // namespace lserve::eval
