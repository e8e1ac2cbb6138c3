#include "eval/python_strip.h"

#include <cstddef>

namespace lserve::eval {

namespace {

bool continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

// The code point of a UTF-8 sequence; a lone byte >= 0x80 (not UTF-8) gives U+FFFD, not a space.
char32_t code_point(std::string_view seq) {
  const auto b0 = static_cast<unsigned char>(seq[0]);
  if (seq.size() == 1) return b0 < 0x80 ? b0 : 0xfffd;
  char32_t c = b0 & (0x7fu >> seq.size());
  for (size_t k = 1; k < seq.size(); ++k) c = (c << 6) | (static_cast<unsigned char>(seq[k]) & 0x3fu);
  return c;
}

size_t first_length(std::string_view s) {
  size_t n = 1;
  while (n < s.size() && n < 4 && continuation_byte(s[n])) ++n;
  return n;
}

size_t last_length(std::string_view s) {
  size_t n = 1;
  while (n < s.size() && n < 4 && continuation_byte(s[s.size() - n])) ++n;
  return n;
}

}  // namespace

bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

std::string_view python_strip(std::string_view s) {
  while (!s.empty() && is_python_space(code_point(s.substr(0, first_length(s))))) s.remove_prefix(first_length(s));
  while (!s.empty() && is_python_space(code_point(s.substr(s.size() - last_length(s))))) s.remove_suffix(last_length(s));
  return s;
}

}  // namespace lserve::eval
