#include "sparse/sparsity_config.h"

#include <fmt/format.h>

#include "core/error.h"

namespace lserve {

std::string_view policy_name(AttentionPolicy p) {
  switch (p) {
    case AttentionPolicy::Dense: return "dense";
    case AttentionPolicy::Streaming: return "streaming";
    case AttentionPolicy::Quest: return "quest";
    case AttentionPolicy::Psa: return "psa";
    case AttentionPolicy::LServe: return "lserve";
  }
  return "?";
}

AttentionPolicy parse_policy(std::string_view name) {
  for (auto p : {AttentionPolicy::Dense, AttentionPolicy::Streaming, AttentionPolicy::Quest, AttentionPolicy::Psa,
                 AttentionPolicy::LServe})
    if (policy_name(p) == name) return p;
  fail("unknown attention policy '{}' (choose dense, lserve, streaming, quest or psa)", name);
}

bool SparsityConfig::has_streaming_heads() const {
  switch (policy) {
    case AttentionPolicy::Streaming:
    case AttentionPolicy::LServe: return true;
    case AttentionPolicy::Quest:
    case AttentionPolicy::Psa: return streaming_ratio.has_value() || !head_pattern_file.empty();
    case AttentionPolicy::Dense: return false;
  }
  return false;
}

void SparsityConfig::validate() const {
  if (page_size <= 0) fail("--page-size must be positive");
  if (logical_page_size <= 0 || page_size % logical_page_size != 0)
    fail("--logical-page-size {} must divide --page-size {}", logical_page_size, page_size);
  if (token_budget < page_size || token_budget % page_size != 0)
    fail("--token-budget {} must be a positive multiple of --page-size {}", token_budget, page_size);
  if (token_budget < 2 * page_size)
    fail("--token-budget {} must hold at least two pages (the sink page and the newest)", token_budget);
  if (selector_interval <= 0) fail("--selector-interval must be positive");
  for (const auto* w : {&prefill_window, &decode_window})
    if (w->sink < 0 || w->local <= 0) fail("streaming windows need sink >= 0 and local > 0");
  if (streaming_ratio && !(*streaming_ratio >= 0 && *streaming_ratio <= 1))
    fail("--streaming-ratio {} must be in [0, 1]", *streaming_ratio);
  if (!(psa_mass > 0 && psa_mass <= 1)) fail("--psa-mass {} must be in (0, 1]", psa_mass);
  if (psa_min_budget <= 0 || psa_max_budget < psa_min_budget) fail("PSA budgets need 0 < min <= max");
}

std::string SparsityConfig::summary() const {
  std::string s = fmt::format("attention {}", policy_name(policy));
  if (has_streaming_heads())
    s += fmt::format(", streaming heads: sink {} + local {} (prefill sink {} + local {})", decode_window.sink,
                     decode_window.local, prefill_window.sink, prefill_window.local);
  if (policy == AttentionPolicy::Psa)
    s += fmt::format(", page selection: {:.0f}% of the estimated mass, {}..{} tokens, every {} steps", psa_mass * 100,
                     psa_min_budget, psa_max_budget, selector_interval);
  else if (selects_pages())
    s += fmt::format(", page selection: budget {} tokens, pages {}/{} (physical/logical), every {} steps, per {}",
                     token_budget, page_size, logical_page_size, selector_interval,
                     granularity == SelectionGranularity::KvHead ? "KV head" : "query head");
  return s;
}

std::string override_incompatibility(const SparsityConfig& base, const SparsityConfig& request,
                                     bool cache_has_summaries) {
  if (request.has_streaming_heads() != base.has_streaming_heads())
    return fmt::format("policy '{}' {} streaming heads, but this server's policy '{}' {}", policy_name(request.policy),
                       request.has_streaming_heads() ? "has" : "has no", policy_name(base.policy),
                       base.has_streaming_heads() ? "has them (choose streaming or lserve)"
                                                  : "has none (choose dense, quest or psa)");
  if (request.page_size != base.page_size || request.logical_page_size != base.logical_page_size ||
      request.granularity != base.granularity || request.streaming_ratio != base.streaming_ratio ||
      request.head_pattern_file != base.head_pattern_file || request.prefill_window.sink != base.prefill_window.sink ||
      request.prefill_window.local != base.prefill_window.local || request.decode_window.sink != base.decode_window.sink ||
      request.decode_window.local != base.decode_window.local)
    return "page sizes, streaming windows, the head pattern and the selection granularity are the server's";
  if (request.selects_pages() && !cache_has_summaries)
    return fmt::format("policy '{}' selects pages, but this server's KV cache keeps no page summaries (start it with "
                       "a page-selecting policy)",
                       policy_name(request.policy));
  return {};
}

}  // namespace lserve
