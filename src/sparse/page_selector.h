// PageSelector: Quest-style query-aware page selection for retrieval heads in decode, with
// LServe's hierarchical paging and an adaptive (PSA-style) budget.
//
//  1. Score each logical page (e.g. 16 tokens) for query head h by the upper bound of q.k over
//     its keys, from the per-channel key min/max:   s = sum_c max(q_c * kmax_c, q_c * kmin_c).
//  2. Pool logical scores onto their physical page (e.g. 64 tokens) by max: a physical page is
//     as promising as its best logical page (hierarchical paging).
//  3. Turn each head's page scores into an estimated share of its softmax mass:
//     m_h(p) = softmax_p(scale * s_h(p)); a selection unit (a KV head's group of query heads,
//     or one query head) averages m over its heads, so a page matters if it matters to any.
//  4. Keep the first page (attention sinks) and the newest page, then pages by descending mass:
//     up to the token budget (fixed), or until the kept mass reaches a threshold (PSA), within
//     [min, max] tokens. With no more pages than the budget, every page is kept (exactly dense).
// Everything here is plain C++ on the host; it is the reference the GPU selector is checked
// against too.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "sparse/sparsity_config.h"

namespace lserve {

struct SelectorInputs {
  // Query rows of the unit's heads, [num_heads, head_dim] (f32).
  const float* q;
  int64_t num_heads, head_dim;
  // Key summaries of the sequence's pages for this KV head: for page i (index within the
  // sequence), physical page id pages[i], logical rows [page_size / logical_page_size].
  const float* key_min;  // [pool pages, pool heads, logical per page, head_dim]
  const float* key_max;
  int64_t pool_heads, head_index;  // the KV head's index within the pool
  std::span<const int32_t> pages;
  int64_t num_tokens;  // tokens in the sequence (the last page may be partial)
  int64_t page_size, logical_page_size;
  float scale;         // softmax scale (1 / sqrt(head_dim))
};

// Physical page scores s_h(p) for every head of the unit: [num_heads][num_pages].
std::vector<std::vector<float>> score_pages(const SelectorInputs& in);

// The unit's mass estimate per page: mean over heads of softmax(scale * s_h).
std::vector<double> page_mass(const std::vector<std::vector<float>>& scores, float scale);

struct BudgetRule {
  int64_t max_pages;             // fixed budget (tokens / page_size), or PSA's upper bound
  int64_t min_pages = 0;         // PSA's lower bound
  double mass_threshold = 0;     // 0: fixed budget; else keep pages until this share of the mass
};

// Picks pages (ascending indices) from the mass estimates under the rule; the first and the
// last page are always kept. Ties go to the lower index.
std::vector<int32_t> pick_pages(const std::vector<double>& mass, const BudgetRule& rule);

// A policy's rule in pages: PSA's mass threshold within its bounds, else the fixed token budget.
BudgetRule budget_rule(const SparsityConfig& s);
// Whether a decoding sequence of seq_len tokens selects pages at all: fixed budgets leave a
// context within the budget dense; PSA ranks anything longer than two pages.
bool context_needs_selection(const SparsityConfig& s, int64_t seq_len);

}  // namespace lserve
