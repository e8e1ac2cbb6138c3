// Parser: tokens -> syntax tree, for the Jinja subset that chat templates use: if/elif/else, for
// (with else, an if filter, tuple targets, break/continue), set (names, tuples, namespace
// attributes, set blocks), macro, call, filter blocks, generation blocks (their body is rendered
// as is), and jinja2's full expression grammar with its precedence.
//
// Filters and tests are checked against the builtins here, so an unknown name fails at parse time
// with its line, as jinja2 fails at compile time.
#pragma once

#include <string_view>

#include "model/chat_template/jinja_ast.h"

namespace lserve::jinja {

// Throws TemplateError "chat template line N: ..." on a syntax error.
Body parse_template(std::string_view source);

}  // namespace lserve::jinja
