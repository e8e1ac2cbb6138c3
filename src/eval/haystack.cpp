#include "eval/haystack.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "eval/python_strip.h"
#include "model/tokenizer.h"

namespace lserve::eval {

CostFn tokenizer_cost(const Tokenizer& tokenizer) {
  return [&tokenizer](std::string_view s) {
    return static_cast<int64_t>(tokenizer.encode(s, /*add_special_tokens=*/false).size());
  };
}

std::vector<std::string> haystack_lines(std::string_view text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find_first_of("\r\n", begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(begin, end - begin);
    if (!python_strip(line).empty()) lines.emplace_back(line);
    begin = end + (text.substr(end, 2) == "\r\n" ? 2 : 1);
  }
  return lines;
}

Haystack Haystack::load(const std::filesystem::path& file, CostFn cost) {
  std::vector<std::string> lines = haystack_lines(read_text_file(file));
  if (lines.empty()) fail("{}: no sentences in the haystack file", file.string());
  return Haystack(std::move(lines), std::move(cost));
}

Haystack::Haystack(std::vector<std::string> lines, CostFn cost)
    : lines_(std::move(lines)), cost_(std::move(cost)), line_costs_(lines_.size(), -1) {
  LSERVE_CHECK(!lines_.empty(), "a haystack needs at least one line");
}

int64_t Haystack::line_cost(int64_t i) const {
  int64_t& c = line_costs_[static_cast<size_t>(i % size())];
  if (c < 0) {
    c = cost_(" " + line(i));
    LSERVE_CHECK(c > 0, "haystack line {} costs {} tokens", i % size(), c);  // else fill() would not end
  }
  return c;
}

Haystack::Fill Haystack::fill(int64_t start, int64_t budget) const {
  Fill f;
  while (budget > 0) {
    const int64_t c = line_cost(start + f.sentences);
    if (f.tokens + c > budget) break;
    f.tokens += c;
    ++f.sentences;
  }
  return f;
}

}  // namespace lserve::eval
