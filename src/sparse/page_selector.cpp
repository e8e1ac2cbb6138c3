#include "sparse/page_selector.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace lserve {

std::vector<std::vector<float>> score_pages(const SelectorInputs& in) {
  const int64_t num_pages = static_cast<int64_t>(in.pages.size());
  const int64_t per_page = in.page_size / in.logical_page_size;
  const int64_t D = in.head_dim;
  std::vector<std::vector<float>> scores(static_cast<size_t>(in.num_heads),
                                         std::vector<float>(static_cast<size_t>(num_pages), -std::numeric_limits<float>::infinity()));
  for (int64_t i = 0; i < num_pages; ++i) {
    // Logical pages that hold tokens: all, except past the end of the last (partial) page.
    const int64_t tokens_here = std::min(in.page_size, in.num_tokens - i * in.page_size);
    const int64_t logical = (tokens_here + in.logical_page_size - 1) / in.logical_page_size;
    const size_t base = static_cast<size_t>(((static_cast<int64_t>(in.pages[static_cast<size_t>(i)]) * in.pool_heads + in.head_index) * per_page) * D);
    for (int64_t lp = 0; lp < logical; ++lp) {
      const float* kmin = in.key_min + base + static_cast<size_t>(lp * D);
      const float* kmax = in.key_max + base + static_cast<size_t>(lp * D);
      for (int64_t h = 0; h < in.num_heads; ++h) {
        const float* q = in.q + h * D;
        float s = 0.0f;
        for (int64_t c = 0; c < D; ++c) s += std::max(q[c] * kmax[c], q[c] * kmin[c]);
        float& best = scores[static_cast<size_t>(h)][static_cast<size_t>(i)];
        best = std::max(best, s);
      }
    }
  }
  return scores;
}

std::vector<double> page_mass(const std::vector<std::vector<float>>& scores, float scale) {
  const size_t n = scores.empty() ? 0 : scores[0].size();
  std::vector<double> mass(n, 0.0);
  for (const auto& row : scores) {
    double mx = -std::numeric_limits<double>::infinity();
    for (float s : row) mx = std::max(mx, static_cast<double>(s) * scale);
    double total = 0;
    std::vector<double> e(n);
    for (size_t i = 0; i < n; ++i) total += (e[i] = std::exp(static_cast<double>(row[i]) * scale - mx));
    for (size_t i = 0; i < n; ++i) mass[i] += e[i] / total / static_cast<double>(scores.size());
  }
  return mass;
}

std::vector<int32_t> pick_pages(const std::vector<double>& mass, const BudgetRule& rule) {
  const auto n = static_cast<int64_t>(mass.size());
  std::vector<int32_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  if (n <= std::max<int64_t>(rule.max_pages, 2) && rule.mass_threshold == 0) return all;
  if (n <= 2) return all;
  // Candidates between the forced first and last page, by descending mass, ties by index.
  std::vector<int32_t> order(all.begin() + 1, all.end() - 1);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return mass[static_cast<size_t>(a)] > mass[static_cast<size_t>(b)]; });
  std::vector<int32_t> keep = {0, static_cast<int32_t>(n - 1)};
  const int64_t max_pages = std::max<int64_t>(rule.max_pages, 2);
  double kept = mass.front() + mass.back();
  for (int32_t p : order) {
    if (static_cast<int64_t>(keep.size()) >= max_pages) break;
    if (rule.mass_threshold > 0 && kept >= rule.mass_threshold && static_cast<int64_t>(keep.size()) >= rule.min_pages) break;
    keep.push_back(p);
    kept += mass[static_cast<size_t>(p)];
  }
  std::sort(keep.begin(), keep.end());
  return keep;
}

BudgetRule budget_rule(const SparsityConfig& s) {
  if (s.policy == AttentionPolicy::Psa) return {s.psa_max_budget / s.page_size, s.psa_min_budget / s.page_size, s.psa_mass};
  return {s.token_budget / s.page_size, 0, 0.0};
}

bool context_needs_selection(const SparsityConfig& s, int64_t seq_len) {
  return s.policy == AttentionPolicy::Psa ? seq_len > 2 * s.page_size : seq_len > s.token_budget;
}

}  // namespace lserve
