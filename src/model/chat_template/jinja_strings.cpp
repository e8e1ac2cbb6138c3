// Python's str methods on UTF-8 text (see jinja_strings.h).
#include "model/chat_template/jinja_strings.h"

#include <utf8proc.h>

#include <algorithm>

#include "model/byte_level.h"
#include "model/chat_template/jinja_value.h"

namespace lserve::jinja {

namespace {

utf8proc_category_t category(uint32_t cp) { return utf8proc_category(static_cast<utf8proc_int32_t>(cp)); }

bool is_cased(uint32_t cp) {
  const auto c = category(cp);
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
}

uint32_t to_upper(uint32_t cp) { return static_cast<uint32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(cp))); }
uint32_t to_lower(uint32_t cp) { return static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))); }
uint32_t to_title(uint32_t cp) { return static_cast<uint32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(cp))); }

template <typename F>
std::string map_code_points(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) append_utf8(f(next_codepoint(s, pos)), out);
  return out;
}

std::vector<uint32_t> decode(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) out.push_back(next_codepoint(s, pos));
  return out;
}

bool is_line_break(uint32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e || cp == 0x85 ||
         cp == 0x2028 || cp == 0x2029;
}

}  // namespace

bool is_space_cp(uint32_t cp) { return is_py_space(cp); }

bool is_alpha_cp(uint32_t cp) {
  const auto c = category(cp);
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO;
}

bool is_digit_cp(uint32_t cp) { return category(cp) == UTF8PROC_CATEGORY_ND; }

bool is_alnum_cp(uint32_t cp) {
  const auto c = category(cp);
  return is_alpha_cp(cp) || c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  const std::vector<uint32_t> strip_set = chars ? decode(*chars) : std::vector<uint32_t>{};
  auto stripped = [&](uint32_t cp) {
    if (!chars) return is_py_space(cp);
    return std::find(strip_set.begin(), strip_set.end(), cp) != strip_set.end();
  };
  const auto cps = code_points(s);
  size_t begin = 0;
  size_t end = cps.size();
  auto cp_at = [&](size_t i) {
    size_t pos = 0;
    return next_codepoint(cps[i], pos);
  };
  if (left)
    while (begin < end && stripped(cp_at(begin))) ++begin;
  if (right)
    while (end > begin && stripped(cp_at(end - 1))) --end;
  if (begin == end) return "";
  const size_t from = static_cast<size_t>(cps[begin].data() - s.data());
  const size_t to = static_cast<size_t>(cps[end - 1].data() - s.data()) + cps[end - 1].size();
  return std::string(s.substr(from, to - from));
}

std::string py_upper(std::string_view s) { return map_code_points(s, to_upper); }
std::string py_lower(std::string_view s) { return map_code_points(s, to_lower); }

std::string py_capitalize(std::string_view s) {
  bool first = true;
  return map_code_points(s, [&](uint32_t cp) {
    const uint32_t r = first ? to_title(cp) : to_lower(cp);
    first = false;
    return r;
  });
}

std::string py_title(std::string_view s) {
  bool previous_cased = false;
  return map_code_points(s, [&](uint32_t cp) {
    const uint32_t r = previous_cased ? to_lower(cp) : to_title(cp);
    previous_cased = is_cased(cp);
    return r;
  });
}

std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit,
                                  bool from_right) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) throw TemplateError("empty separator");
    if (!from_right) {
      size_t start = 0;
      for (size_t at; (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) && (at = s.find(*sep, start)) != std::string_view::npos;
           start = at + sep->size())
        out.emplace_back(s.substr(start, at - start));
      out.emplace_back(s.substr(start));
      return out;
    }
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      if (end < sep->size()) break;
      const size_t at = s.rfind(*sep, end - sep->size());
      if (at == std::string_view::npos) break;
      out.emplace_back(s.substr(at + sep->size(), end - at - sep->size()));
      end = at;
    }
    out.emplace_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  // Whitespace runs separate; leading and trailing whitespace yields no empty strings.
  const auto cps = code_points(s);
  auto space = [&](size_t i) {
    size_t pos = 0;
    return is_py_space(next_codepoint(cps[i], pos));
  };
  auto text = [&](size_t a, size_t b) {  // code points [a, b) as a string
    if (a >= b) return std::string();
    const size_t from = static_cast<size_t>(cps[a].data() - s.data());
    return std::string(s.substr(from, static_cast<size_t>(cps[b - 1].data() - s.data()) + cps[b - 1].size() - from));
  };
  if (!from_right) {
    size_t i = 0;
    while (true) {
      while (i < cps.size() && space(i)) ++i;
      if (i == cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t end = cps.size();
        while (end > i && space(end - 1)) --end;
        out.push_back(text(i, end));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !space(j)) ++j;
      out.push_back(text(i, j));
      i = j;
    }
    return out;
  }
  size_t i = cps.size();
  while (true) {
    while (i > 0 && space(i - 1)) --i;
    if (i == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t begin = 0;
      while (begin < i && space(begin)) ++begin;
      out.push_back(text(begin, i));
      break;
    }
    size_t j = i;
    while (j > 0 && !space(j - 1)) --j;
    out.push_back(text(j, i));
    i = j;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> py_splitlines(std::string_view s, bool keepends) {
  std::vector<std::string> out;
  std::string line;
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    const uint32_t cp = next_codepoint(s, pos);
    if (!is_line_break(cp)) {
      line.append(s.substr(start, pos - start));
      continue;
    }
    std::string_view end = s.substr(start, pos - start);
    if (cp == '\r' && pos < s.size() && s[pos] == '\n') {
      ++pos;
      end = s.substr(start, 2);
    }
    if (keepends) line.append(end);
    out.push_back(std::move(line));
    line.clear();
  }
  if (!line.empty()) out.push_back(std::move(line));
  return out;
}

std::string py_replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // inserts before every character and at the end
    const auto cps = code_points(s);
    for (const auto cp : cps) {
      if (count < 0 || done < count) {
        out += replacement;
        ++done;
      }
      out += cp;
    }
    if (count < 0 || done < count) out += replacement;
    return out;
  }
  size_t start = 0;
  for (size_t at; (count < 0 || done < count) && (at = s.find(old, start)) != std::string_view::npos; start = at + old.size()) {
    out.append(s.substr(start, at - start));
    out += replacement;
    ++done;
  }
  out.append(s.substr(start));
  return out;
}

namespace {

// str.islower() / str.isupper(): some cased character, and none of the other case.
bool all_cased_as(std::string_view s, utf8proc_category_t wanted) {
  bool any = false;
  for (size_t pos = 0; pos < s.size();) {
    const auto c = category(next_codepoint(s, pos));
    if (c == wanted) any = true;
    else if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return false;
  }
  return any;
}

}  // namespace

bool py_is_cased_lower(std::string_view s) { return all_cased_as(s, UTF8PROC_CATEGORY_LL); }
bool py_is_cased_upper(std::string_view s) { return all_cased_as(s, UTF8PROC_CATEGORY_LU); }

bool py_all_chars(std::string_view s, bool (*pred)(uint32_t)) {
  if (s.empty()) return false;
  for (size_t pos = 0; pos < s.size();)
    if (!pred(next_codepoint(s, pos))) return false;
  return true;
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

int64_t word_count(std::string_view s) {
  int64_t words = 0;
  bool in_word = false;
  for (size_t pos = 0; pos < s.size();) {
    const uint32_t cp = next_codepoint(s, pos);
    const bool w = cp == '_' || is_alnum_cp(cp);
    if (w && !in_word) ++words;
    in_word = w;
  }
  return words;
}

}  // namespace lserve::jinja
