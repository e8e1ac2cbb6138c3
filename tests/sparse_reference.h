// Plain, slow references of the sparse-attention pieces, written from their definitions for
// the tests to compare the engine against (none of them calls engine code):
//   - Quest scores straight from the keys (per logical page min/max, upper bound, max-pooled),
//   - the softmax-mass estimate per page,
//   - page picking by brute-force ranking (fixed budget and PSA),
//   - masked softmax attention over keys and values given by position.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

namespace lserve::test {

// The key (or value) row of one KV head at a sequence position.
using RowAt = std::function<const float*(int64_t pos)>;

// Quest's upper bound of q.k per query head (q: [heads, D]) and physical page of P tokens:
// for every logical page of LP tokens that holds tokens (the last ones may be partial or not
// yet filled), the per-channel min and max of its keys give sum_c max(q_c kmax_c, q_c kmin_c);
// a physical page scores its best logical page.
inline std::vector<std::vector<float>> exhaustive_page_scores(const float* q, int64_t heads, int64_t D,
                                                              const RowAt& key_at, int64_t num_tokens, int64_t P,
                                                              int64_t LP) {
  const int64_t pages = (num_tokens + P - 1) / P;
  std::vector<std::vector<float>> scores(static_cast<size_t>(heads),
                                         std::vector<float>(static_cast<size_t>(pages), -std::numeric_limits<float>::infinity()));
  for (int64_t first = 0; first < num_tokens; first += LP) {
    std::vector<float> kmin(static_cast<size_t>(D), std::numeric_limits<float>::infinity());
    std::vector<float> kmax(static_cast<size_t>(D), -std::numeric_limits<float>::infinity());
    for (int64_t pos = first; pos < std::min(first + LP, num_tokens); ++pos) {
      const float* key = key_at(pos);
      for (int64_t c = 0; c < D; ++c) {
        kmin[static_cast<size_t>(c)] = std::min(kmin[static_cast<size_t>(c)], key[c]);
        kmax[static_cast<size_t>(c)] = std::max(kmax[static_cast<size_t>(c)], key[c]);
      }
    }
    for (int64_t h = 0; h < heads; ++h) {
      float bound = 0.0f;
      for (int64_t c = 0; c < D; ++c)
        bound += std::max(q[h * D + c] * kmax[static_cast<size_t>(c)], q[h * D + c] * kmin[static_cast<size_t>(c)]);
      float& page_score = scores[static_cast<size_t>(h)][static_cast<size_t>(first / P)];
      page_score = std::max(page_score, bound);
    }
  }
  return scores;
}

// Each page's estimated share of the softmax mass: per head softmax over pages of scale * score,
// averaged over the heads.
inline std::vector<double> softmax_mass(const std::vector<std::vector<float>>& scores, float scale) {
  std::vector<double> mass(scores.empty() ? 0 : scores[0].size(), 0.0);
  for (const auto& head : scores) {
    double top = -std::numeric_limits<double>::infinity(), total = 0;
    for (float s : head) top = std::max(top, static_cast<double>(s) * scale);
    for (float s : head) total += std::exp(static_cast<double>(s) * scale - top);
    for (size_t i = 0; i < head.size(); ++i)
      mass[i] += std::exp(static_cast<double>(head[i]) * scale - top) / total / static_cast<double>(scores.size());
  }
  return mass;
}

// Every page index in the order a selector adds them: the first and the last page, then each
// other page by how many others beat it (higher mass, or equal mass and lower index).
inline std::vector<int32_t> ranked_pages(const std::vector<double>& mass) {
  const auto n = static_cast<int32_t>(mass.size());
  std::vector<int32_t> order;
  if (n == 0) return order;
  order.push_back(0);
  if (n > 1) order.push_back(n - 1);
  std::vector<int32_t> by_rank(static_cast<size_t>(std::max(n - 2, 0)), -1);
  for (int32_t i = 1; i < n - 1; ++i) {
    int32_t beaten_by = 0;
    for (int32_t j = 1; j < n - 1; ++j)
      beaten_by += mass[static_cast<size_t>(j)] > mass[static_cast<size_t>(i)] ||
                   (mass[static_cast<size_t>(j)] == mass[static_cast<size_t>(i)] && j < i);
    by_rank[static_cast<size_t>(beaten_by)] = i;
  }
  order.insert(order.end(), by_rank.begin(), by_rank.end());
  return order;
}

inline std::vector<int32_t> sorted_prefix(std::vector<int32_t> order, size_t count) {
  order.resize(std::min(count, order.size()));
  std::sort(order.begin(), order.end());
  return order;
}

// Fixed budget: the first max(max_pages, 2) pages of the ranking, ascending.
inline std::vector<int32_t> top_pages(const std::vector<double>& mass, int64_t max_pages) {
  return sorted_prefix(ranked_pages(mass), static_cast<size_t>(std::max<int64_t>(max_pages, 2)));
}

// PSA: the shortest prefix of the ranking (at least the first and last page) whose mass reaches
// `threshold`, then at least min_pages and at most max(max_pages, 2) pages.
inline std::vector<int32_t> psa_pages(const std::vector<double>& mass, double threshold, int64_t min_pages,
                                      int64_t max_pages) {
  const std::vector<int32_t> order = ranked_pages(mass);
  int64_t count = static_cast<int64_t>(order.size());
  double kept = 0;
  for (int64_t c = 1; c <= static_cast<int64_t>(order.size()); ++c) {
    kept += mass[static_cast<size_t>(order[static_cast<size_t>(c - 1)])];
    if (c >= 2 && kept >= threshold) {
      count = c;
      break;
    }
  }
  count = std::min(std::max(count, min_pages), std::max<int64_t>(max_pages, 2));
  return sorted_prefix(order, static_cast<size_t>(count));
}

// softmax(scale * q.k) v over the positions 0..qpos that `visible` allows, in double.
inline std::vector<float> masked_attention(const float* q, int64_t D, int64_t qpos,
                                           const std::function<bool(int64_t key)>& visible, const RowAt& key_at,
                                           const RowAt& value_at, double scale) {
  std::vector<double> weight(static_cast<size_t>(qpos + 1), 0.0);
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t pos = 0; pos <= qpos; ++pos) {
    if (!visible(pos)) continue;
    const float* key = key_at(pos);
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * key[d];
    weight[static_cast<size_t>(pos)] = dot * scale;
    top = std::max(top, dot * scale);
  }
  double total = 0;
  std::vector<double> out(static_cast<size_t>(D), 0.0);
  for (int64_t pos = 0; pos <= qpos; ++pos) {
    if (!visible(pos)) continue;
    const double w = std::exp(weight[static_cast<size_t>(pos)] - top);
    const float* value = value_at(pos);
    total += w;
    for (int64_t d = 0; d < D; ++d) out[static_cast<size_t>(d)] += w * value[d];
  }
  std::vector<float> result(static_cast<size_t>(D), 0.0f);
  for (int64_t d = 0; d < D; ++d) result[static_cast<size_t>(d)] = total > 0 ? static_cast<float>(out[static_cast<size_t>(d)] / total) : 0.0f;
  return result;
}

}  // namespace lserve::test
