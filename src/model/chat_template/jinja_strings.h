// Python's str methods on UTF-8 text, shared by the filters (trim, upper, title, indent, ...) and
// the string methods templates call (s.strip(), s.split(), ...). They work on code points, as
// Python does, with utf8proc's simple case mappings.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lserve::jinja {

// str.strip/lstrip/rstrip: `chars` absent strips whitespace (str.isspace).
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_capitalize(std::string_view s);  // first character title-cased, the rest lowered
std::string py_title(std::string_view s);       // str.title(): each run of cased letters capitalized
// str.split(sep, maxsplit) and str.rsplit; no sep splits on whitespace runs and drops empties.
std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit,
                                  bool from_right);
std::vector<std::string> py_splitlines(std::string_view s, bool keepends);
std::string py_replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count);
bool py_is_cased_lower(std::string_view s);  // str.islower()
bool py_is_cased_upper(std::string_view s);  // str.isupper()
// Whether every character is in a class (str.isdigit and friends); false for "".
bool py_all_chars(std::string_view s, bool (*pred)(uint32_t));
bool is_alpha_cp(uint32_t cp);
bool is_digit_cp(uint32_t cp);
bool is_alnum_cp(uint32_t cp);
bool is_space_cp(uint32_t cp);
// markupsafe's escape: & < > " ' as entities.
std::string html_escape(std::string_view s);
// \w+ matches, the wordcount filter.
int64_t word_count(std::string_view s);

}  // namespace lserve::jinja
