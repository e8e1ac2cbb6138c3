#include "sparse/head_pattern.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/mapped_file.h"

namespace lserve {

namespace {
// DuoAttention's gates are trained with clamping to [0, 1] but published values stray by ~1e-3.
constexpr double kGateSlack = 0.05;
}  // namespace

HeadPattern HeadPattern::all_retrieval(int64_t num_layers, int64_t num_kv_heads) {
  HeadPattern p;
  p.scores_.assign(static_cast<size_t>(num_layers), std::vector<double>(static_cast<size_t>(num_kv_heads), 1.0));
  p.kinds_.assign(static_cast<size_t>(num_layers),
                  std::vector<HeadKind>(static_cast<size_t>(num_kv_heads), HeadKind::Retrieval));
  p.source_ = "dense";
  return p;
}

HeadPattern HeadPattern::from_scores(std::vector<std::vector<double>> scores, const HeadRule& rule,
                                     const std::string& source) {
  if (scores.empty()) fail("{}: no layers in the head pattern", source);
  const size_t heads = scores[0].size();
  for (size_t l = 0; l < scores.size(); ++l)
    if (scores[l].size() != heads || heads == 0)
      fail("{}: layer {} has {} head scores, layer 0 has {}", source, l, scores[l].size(), heads);
  HeadPattern p;
  p.source_ = source;
  p.rule_ = rule;
  p.kinds_.assign(scores.size(), std::vector<HeadKind>(heads, HeadKind::Retrieval));
  if (rule.streaming_ratio) {
    const double r = *rule.streaming_ratio;
    if (!(r >= 0 && r <= 1)) fail("{}: streaming ratio {} must be in [0, 1]", source, r);
    // The lowest-scoring round(r * N) heads stream; ties broken by (layer, head) so the result
    // is deterministic (DuoAttention adds noise instead).
    std::vector<std::pair<size_t, size_t>> order;
    for (size_t l = 0; l < scores.size(); ++l)
      for (size_t h = 0; h < heads; ++h) order.emplace_back(l, h);
    std::stable_sort(order.begin(), order.end(),
                     [&](const auto& a, const auto& b) { return scores[a.first][a.second] < scores[b.first][b.second]; });
    const auto n = static_cast<size_t>(std::llround(r * static_cast<double>(order.size())));
    for (size_t i = 0; i < n; ++i) p.kinds_[order[i].first][order[i].second] = HeadKind::Streaming;
  } else {
    const double t = rule.threshold.value_or(0.5);
    for (size_t l = 0; l < scores.size(); ++l)
      for (size_t h = 0; h < heads; ++h)
        if (scores[l][h] < t) p.kinds_[l][h] = HeadKind::Streaming;
  }
  p.scores_ = std::move(scores);
  return p;
}

HeadPattern HeadPattern::load(const std::filesystem::path& path, const HeadRule& override_rule) {
  const std::string text = read_text_file(path);
  const std::string src = path.string();
  HeadRule rule;
  std::vector<std::vector<double>> scores;
  std::istringstream lines(text);
  std::string line;
  int line_no = 0;
  bool strict = true;  // lserve format: values must be in [0, 1]
  if (path.extension() == ".tsv") strict = false;
  while (std::getline(lines, line)) {
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string first;
    if (!(words >> first)) continue;  // blank or comment
    if (first == "streaming_ratio" || first == "threshold") {
      double v;
      std::string extra;
      if (!(words >> v) || (words >> extra)) fail("{}:{}: '{}' needs one number", src, line_no, first);
      if (rule.threshold || rule.streaming_ratio)
        fail("{}:{}: a second rule line ('{}'); a file has at most one", src, line_no, first);
      (first == "threshold" ? rule.threshold : rule.streaming_ratio) = v;
      continue;
    }
    std::vector<double> row;
    std::istringstream values(line);
    std::string word;
    while (values >> word) {
      char* end = nullptr;
      const double v = std::strtod(word.c_str(), &end);
      if (end == word.c_str() || *end != '\0' || !std::isfinite(v))
        fail("{}:{}: '{}' is not a number", src, line_no, word);
      const double lo = strict ? 0.0 : -kGateSlack, hi = strict ? 1.0 : 1.0 + kGateSlack;
      if (v < lo || v > hi) fail("{}:{}: score {} is outside [0, 1]", src, line_no, v);
      row.push_back(std::clamp(v, 0.0, 1.0));
    }
    if (!scores.empty() && row.size() != scores[0].size())
      fail("{}:{}: {} scores, the first row has {}", src, line_no, row.size(), scores[0].size());
    scores.push_back(std::move(row));
  }
  if (override_rule.streaming_ratio || override_rule.threshold) rule = override_rule;
  if (!rule.streaming_ratio && !rule.threshold) rule.threshold = 0.5;  // DuoAttention's default
  return from_scores(std::move(scores), rule, src);
}

HeadPattern HeadPattern::uniform(int64_t num_layers, int64_t num_kv_heads, double ratio) {
  if (!(ratio >= 0 && ratio <= 1)) fail("streaming ratio {} must be in [0, 1]", ratio);
  // Scores that interleave layers and heads, so the ratio rule spreads streaming heads evenly.
  std::vector<std::vector<double>> scores(static_cast<size_t>(num_layers));
  const auto total = static_cast<double>(num_layers * num_kv_heads);
  for (int64_t l = 0; l < num_layers; ++l)
    for (int64_t h = 0; h < num_kv_heads; ++h) {
      const int64_t rank = (h * num_layers + l * 7919) % (num_layers * num_kv_heads);  // a fixed scramble
      scores[static_cast<size_t>(l)].push_back((static_cast<double>(rank) + 0.5) / total);
    }
  HeadPattern p = from_scores(std::move(scores), HeadRule{ratio, std::nullopt}, "uniform");
  return p;
}

void HeadPattern::validate(int64_t num_layers, int64_t num_kv_heads) const {
  if (this->num_layers() != num_layers || this->num_kv_heads() != num_kv_heads)
    fail("{}: head pattern has {} layers x {} KV heads, the model has {} x {}", source_, this->num_layers(),
         this->num_kv_heads(), num_layers, num_kv_heads);
}

int64_t HeadPattern::num_streaming(int64_t layer) const {
  return std::count(kinds_[layer].begin(), kinds_[layer].end(), HeadKind::Streaming);
}

int64_t HeadPattern::num_streaming() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_layers(); ++l) n += num_streaming(l);
  return n;
}

double HeadPattern::streaming_fraction() const {
  const int64_t total = num_layers() * num_kv_heads();
  return total ? static_cast<double>(num_streaming()) / static_cast<double>(total) : 0.0;
}

std::string HeadPattern::to_text() const {
  std::string out = fmt::format(
      "# lserve head pattern: {} layers x {} KV heads. Score per head in [0, 1]: how much it needs\n"
      "# full attention (1 = retrieval head). Heads the rule below marks as streaming attend only\n"
      "# to sink + local tokens.\n",
      num_layers(), num_kv_heads());
  if (rule_.streaming_ratio) out += fmt::format("streaming_ratio {}\n", *rule_.streaming_ratio);
  else if (rule_.threshold) out += fmt::format("threshold {}\n", *rule_.threshold);
  for (const auto& row : scores_) {
    for (size_t h = 0; h < row.size(); ++h) out += fmt::format("{}{}", h ? " " : "", row[h]);  // shortest exact form
    out += '\n';
  }
  return out;
}

}  // namespace lserve
