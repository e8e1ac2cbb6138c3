// Lexer: splits template text from tags, applies the whitespace rules, and tokenizes the inside of
// {{ }} and {% %} tags (see jinja_lexer.h).
#include "model/chat_template/jinja_lexer.h"

#include <cctype>

#include "model/byte_level.h"
#include "model/chat_template/jinja_value.h"

namespace lserve::jinja {

namespace {

[[noreturn]] void lex_error(int line, std::string_view message) {
  throw TemplateError(fmt::format("chat template line {}: {}", line, message));
}

bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

// "\r\n" and "\r" become "\n"; one trailing newline goes (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python string literal escapes, as jinja2 decodes them ("unicode-escape"); an unknown escape
// keeps its backslash.
std::string decode_string(std::string_view body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    auto hex = [&](size_t digits) {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size() || !is_hex(body[i + k])) lex_error(line, "truncated \\x, \\u or \\U escape in string");
        const char h = static_cast<char>(std::tolower(static_cast<unsigned char>(body[i + k])));
        cp = cp * 16 + static_cast<uint32_t>(is_digit(h) ? h - '0' : h - 'a' + 10);
      }
      i += digits;
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) lex_error(line, "escape is not a Unicode scalar value");
      append_utf8(cp, out);
    };
    switch (c) {
      case '\n': break;  // a backslash-newline continues the line
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default:
        if (c >= '0' && c <= '7') {
          uint32_t cp = 0;
          size_t k = 0;
          for (; k < 3 && i + k < body.size() && body[i + k] >= '0' && body[i + k] <= '7'; ++k) cp = cp * 8 + static_cast<uint32_t>(body[i + k] - '0');
          i += k - 1;
          append_utf8(cp, out);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize_newlines(source)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t open = find_tag_start(pos_);
      text(src_.substr(pos_, open - pos_));
      if (open == src_.size()) break;
      pos_ = open;
      tag();
    }
    tokens_.push_back({TokenType::End, "", line_});
    return std::move(tokens_);
  }

 private:
  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool strip_next_ = false;  // the previous tag ended with "-": strip the leading whitespace of the next text
  bool trim_next_ = false;   // the previous block tag ended plainly: drop one leading newline
  std::vector<Token> tokens_;

  size_t find_tag_start(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return src_.size();
  }

  void count_lines(std::string_view s) {
    for (char c : s)
      if (c == '\n') ++line_;
  }

  void text(std::string_view s) {
    count_lines(s);
    if (strip_next_) {
      size_t k = 0;
      while (k < s.size() && std::isspace(static_cast<unsigned char>(s[k]))) ++k;
      s.remove_prefix(k);
    } else if (trim_next_ && !s.empty() && s[0] == '\n') {
      s.remove_prefix(1);
    }
    strip_next_ = trim_next_ = false;
    if (!s.empty()) tokens_.push_back({TokenType::Text, std::string(s), line_});
  }

  // The text token right before a tag, if the tag follows it directly.
  Token* previous_text() {
    if (tokens_.empty() || tokens_.back().type != TokenType::Text) return nullptr;
    return &tokens_.back();
  }

  // Applies the opening whitespace control of a tag at pos_: "-" strips all whitespace before it;
  // lstrip_blocks (for {% and {# without "+") strips spaces and tabs back to the line start.
  void control_before(char kind, char modifier) {
    Token* prev = previous_text();
    if (modifier == '-') {
      if (prev) {
        while (!prev->text.empty() && std::isspace(static_cast<unsigned char>(prev->text.back()))) prev->text.pop_back();
        if (prev->text.empty()) tokens_.pop_back();
      }
      return;
    }
    if (kind == '{' || modifier == '+') return;
    // Only if nothing but spaces and tabs lie between the line start (or template start) and the tag.
    size_t k = pos_;
    while (k > 0 && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
    if (k > 0 && src_[k - 1] != '\n') return;
    const size_t n = pos_ - k;
    if (n == 0 || !prev) return;
    // The spaces may already have been stripped ("-%}" before them); trim what is left of them.
    size_t strip = 0;
    while (strip < n && strip < prev->text.size() &&
           (prev->text[prev->text.size() - 1 - strip] == ' ' || prev->text[prev->text.size() - 1 - strip] == '\t'))
      ++strip;
    prev->text.resize(prev->text.size() - strip);
    if (prev->text.empty()) tokens_.pop_back();
  }

  // After a closing delimiter: "-" strips the next text's leading whitespace; a plain block or
  // comment end drops one newline (trim_blocks).
  void control_after(char kind, char modifier) {
    if (modifier == '-') strip_next_ = true;
    else if (kind != '{' && modifier != '+') trim_next_ = true;
  }

  void tag() {
    const char kind = src_[pos_ + 1];
    const int start_line = line_;
    char modifier = 0;
    if (pos_ + 2 < src_.size() && (src_[pos_ + 2] == '-' || src_[pos_ + 2] == '+')) modifier = src_[pos_ + 2];
    if (kind == '{' && modifier == '+') modifier = 0;  // "{{+" is not a thing; "+" is an operator
    control_before(kind, modifier);
    pos_ += 2 + (modifier ? 1 : 0);
    if (kind == '#') {
      comment(start_line);
      return;
    }
    if (kind == '%' && raw_block(start_line)) return;
    tokens_.push_back({kind == '{' ? TokenType::ExprBegin : TokenType::StmtBegin, "", line_});
    inside_tag(kind);
  }

  void comment(int start_line) {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) lex_error(start_line, "unterminated comment '{#'");
    const char modifier = end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    count_lines(std::string_view(src_).substr(pos_, end - pos_));
    pos_ = end + 2;
    control_after('#', modifier);
  }

  // {% raw %}...{% endraw %}: the body is text as it stands.
  bool raw_block(int start_line) {
    size_t k = pos_;
    while (k < src_.size() && std::isspace(static_cast<unsigned char>(src_[k]))) ++k;
    if (src_.compare(k, 3, "raw") != 0 || (k + 3 < src_.size() && is_name_char(src_[k + 3]))) return false;
    k += 3;
    while (k < src_.size() && std::isspace(static_cast<unsigned char>(src_[k]))) ++k;
    char close_mod = 0;
    if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) close_mod = src_[k++];
    if (src_.compare(k, 2, "%}") != 0) lex_error(start_line, "expected '%}' after 'raw'");
    count_lines(std::string_view(src_).substr(pos_, k + 2 - pos_));
    pos_ = k + 2;
    control_after('%', close_mod);
    // Find {%[-+]? endraw [-+]?%}.
    for (size_t i = pos_; (i = src_.find("{%", i)) != std::string::npos; ++i) {
      size_t j = i + 2;
      char open_mod = 0;
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) open_mod = src_[j++];
      while (j < src_.size() && std::isspace(static_cast<unsigned char>(src_[j]))) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && std::isspace(static_cast<unsigned char>(src_[j]))) ++j;
      char end_mod = 0;
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) end_mod = src_[j++];
      if (src_.compare(j, 2, "%}") != 0) continue;
      text(std::string_view(src_).substr(pos_, i - pos_));
      pos_ = i;
      control_before('%', open_mod);
      count_lines(std::string_view(src_).substr(i, j + 2 - i));
      pos_ = j + 2;
      control_after('%', end_mod);
      return true;
    }
    lex_error(start_line, "missing '{% endraw %}'");
  }

  void inside_tag(char kind) {
    const int start_line = line_;
    const std::string_view close = kind == '{' ? "}}" : "%}";
    int depth = 0;  // open brackets: a "}}" inside {{ {'a': {}} }} closes a dict, not the tag
    while (true) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_]))) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size()) lex_error(start_line, fmt::format("unterminated tag: missing '{}'", close));
      if (depth == 0) {
        char modifier = 0;
        size_t k = pos_;
        if (src_[k] == '-' || (src_[k] == '+' && kind == '%')) modifier = src_[k++];
        if (src_.compare(k, 2, close) == 0) {
          pos_ = k + 2;
          tokens_.push_back({kind == '{' ? TokenType::ExprEnd : TokenType::StmtEnd, "", line_});
          control_after(kind, modifier);
          return;
        }
      }
      const char c = src_[pos_];
      if (is_name_start(c)) {
        const size_t start = pos_;
        while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
        tokens_.push_back({TokenType::Name, src_.substr(start, pos_ - start), line_});
      } else if (is_digit(c)) {
        number();
      } else if (c == '\'' || c == '"') {
        string_literal(c);
      } else {
        op(depth);
      }
    }
  }

  void number() {
    const size_t start = pos_;
    auto digits = [&] {
      while (pos_ < src_.size() && (is_digit(src_[pos_]) || (src_[pos_] == '_' && pos_ + 1 < src_.size() && is_digit(src_[pos_ + 1])))) ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
      ++pos_;
      digits();
      is_float = true;
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t k = pos_ + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && is_digit(src_[k])) {
        pos_ = k;
        digits();
        is_float = true;
      }
    }
    std::string spelled;
    for (size_t i = start; i < pos_; ++i)
      if (src_[i] != '_') spelled += src_[i];
    tokens_.push_back({is_float ? TokenType::Float : TokenType::Int, spelled, line_});
  }

  void string_literal(char quote) {
    const int start_line = line_;
    size_t i = pos_ + 1;
    while (i < src_.size() && src_[i] != quote) {
      if (src_[i] == '\\') ++i;
      ++i;
    }
    if (i >= src_.size()) lex_error(start_line, "unterminated string literal");
    const std::string_view body = std::string_view(src_).substr(pos_ + 1, i - pos_ - 1);
    count_lines(body);
    tokens_.push_back({TokenType::String, decode_string(body, start_line), start_line});
    pos_ = i + 1;
  }

  void op(int& depth) {
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (std::string_view two : kTwo) {
      if (src_.compare(pos_, 2, two) == 0) {
        tokens_.push_back({TokenType::Operator, std::string(two), line_});
        pos_ += 2;
        return;
      }
    }
    const char c = src_[pos_];
    if (std::string_view("+-*/%~<>=()[]{},.:|;").find(c) == std::string_view::npos)
      lex_error(line_, fmt::format("unexpected character '{}' in tag", c));
    if (c == '(' || c == '[' || c == '{') ++depth;
    if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
    tokens_.push_back({TokenType::Operator, std::string(1, c), line_});
    ++pos_;
  }
};

}  // namespace

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace lserve::jinja
