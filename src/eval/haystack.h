// Haystack: the sentences the evaluation prompts are filled with (eval/haystack.txt, one per
// line) and the token counting that decides how many of them fit (docs/eval_tasks.md, "Length").
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace lserve {
class Tokenizer;
}

namespace lserve::eval {

// Tokens of a string without special tokens: the spec's cost(s).
using CostFn = std::function<int64_t(std::string_view)>;
CostFn tokenizer_cost(const Tokenizer& tokenizer);  // the tokenizer must outlive the function

// Splits file text into lines as Python's text mode reads them (\n, \r\n and \r end a line) and
// keeps the lines that are not blank (str.strip() leaves something), as they are.
std::vector<std::string> haystack_lines(std::string_view text);

class Haystack {
 public:
  // Throws Error naming the file when it cannot be read or has no sentence.
  static Haystack load(const std::filesystem::path& file, CostFn cost);
  Haystack(std::vector<std::string> lines, CostFn cost);  // lines must not be empty

  int64_t size() const { return static_cast<int64_t>(lines_.size()); }  // N
  const std::string& line(int64_t i) const { return lines_[static_cast<size_t>(i % size())]; }  // i >= 0, wraps
  int64_t text_cost(std::string_view text) const { return cost_(text); }
  // cost(" " + line(i)), counted once and remembered. Not thread-safe.
  int64_t line_cost(int64_t i) const;

  struct Fill {
    int64_t sentences = 0;  // n: lines start, start+1, ... (mod N)
    int64_t tokens = 0;     // their summed costs (<= budget)
  };
  // The most lines from `start` on whose costs add up to at most `budget`; the first line that
  // does not fit ends the haystack (n = 0 when budget <= 0).
  Fill fill(int64_t start, int64_t budget) const;

 private:
  std::vector<std::string> lines_;
  CostFn cost_;
  mutable std::vector<int64_t> line_costs_;  // -1: not counted yet
};

}  // namespace lserve::eval
