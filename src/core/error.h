// Errors: lserve reports bad input (files, requests, flags) by throwing lserve::Error with a
// one-line message that names the thing at fault; the CLI and server catch it at their edge.
// Broken internal invariants use LSERVE_CHECK, which also names the source location.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace lserve {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error with a formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// An invariant of ours was broken (a bug, not bad input): throw with the location. (File and
// line come from the macro rather than std::source_location, which clang 14's fuzzer builds lack.)
[[noreturn]] void check_failed(const char* condition, const std::string& message, const char* file, int line);

}  // namespace lserve

#define LSERVE_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) [[unlikely]]                                                            \
      ::lserve::check_failed(#cond, ::fmt::format("" __VA_ARGS__), __FILE__, __LINE__);   \
  } while (0)
