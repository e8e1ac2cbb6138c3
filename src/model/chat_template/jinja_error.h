// The errors of template parsing and rendering; both are lserve::Error, so the CLI and the server
// report them like any bad input (the server as a 400).
#pragma once

#include "core/error.h"

namespace lserve::jinja {

// Every failure while parsing or rendering a template: a syntax error, an unknown filter, a type
// error, an undefined value used. The message names the template line when it is known.
class TemplateError : public Error {
 public:
  using Error::Error;
};

// The template itself called raise_exception(message): what() is exactly that message, which is
// meant for the client (for example "Conversation roles must alternate user/assistant/...").
class RaisedException : public TemplateError {
 public:
  using TemplateError::TemplateError;
};

}  // namespace lserve::jinja
