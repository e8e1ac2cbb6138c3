// StopMatcher: finds stop strings in streamed text. Text that might be the start of a stop
// string is held back until it is known not to be, so a client never sees part of a stop
// string; on a match, the text before it is released and generation ends (the stop string
// itself is not returned, as in the OpenAI API).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lserve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was found; nothing more will be emitted
  };
  Result push(std::string_view text);
  // Releases whatever is held back (at the end of generation).
  std::string flush();

 private:
  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace lserve
