// Lexer: template source -> tokens, with jinja2's whitespace rules as Hugging Face configures
// them (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False):
//   - "{%-", "{{-", "{#-" strip all whitespace before the tag; "-%}", "-}}", "-#}" all after it;
//   - trim_blocks: the first newline after a block tag or comment is dropped ("+%}" keeps it);
//   - lstrip_blocks: spaces and tabs between the start of a line and a block tag or comment are
//     dropped ("{%+" keeps them); expression tags "{{" are left alone;
//   - newlines are normalized to "\n" and one trailing newline of the template is dropped.
// Comments vanish here, and {% raw %}...{% endraw %} comes out as one Text token.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lserve::jinja {

enum class TokenType {
  Text,        // template text between tags
  ExprBegin,   // {{
  ExprEnd,     // }}
  StmtBegin,   // {%
  StmtEnd,     // %}
  Name,        // identifiers and keywords (if, for, in, not, true, ...)
  String,      // a string literal, escapes already decoded
  Int,
  Float,
  Operator,    // + - * / // % ** ~ == != < <= > >= = ( ) [ ] { } , . : | ;
  End,
};

struct Token {
  TokenType type;
  std::string text;  // the decoded value for String, the spelling otherwise
  int line;          // 1-based line in the template
};

// Throws TemplateError ("chat template line N: ...") for an unterminated tag, comment or string
// and for characters that cannot start a token.
std::vector<Token> tokenize(std::string_view source);

}  // namespace lserve::jinja
