// SparsityConfig: which attention policy runs and its knobs, with LServe's defaults
// (omniserve's engine arguments: 64-token physical pages, 16-token logical pages, a 4096-token
// budget, the selector re-run every 4 decode steps, half the KV heads streaming with
// sink 128 + local 8192 tokens in prefill and sink 128 + local 256 in decode).
//
//   policy     streaming heads   retrieval heads in decode
//   dense      none              all pages
//   streaming  yes               all pages
//   quest      none*             top pages under the token budget (Quest)
//   psa        none*             pages until the estimated softmax mass reaches a threshold
//   lserve     yes               top pages under the token budget
//   (* unless a head pattern or --streaming-ratio is given explicitly)
// Prefill is dense for retrieval heads under every policy (LServe's choice: selection pays off
// in decode, where it bounds the bytes read per token).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace lserve {

enum class AttentionPolicy { Dense, Streaming, Quest, Psa, LServe };
// One page selection per KV head, shared by its query heads (reads each page once for the whole
// GQA group), or one per query head (LServe's and Quest's choice).
enum class SelectionGranularity { KvHead, QueryHead };

std::string_view policy_name(AttentionPolicy p);
AttentionPolicy parse_policy(std::string_view name);  // throws Error listing the choices

struct StreamingWindow {
  int64_t sink = 128;   // the first tokens, always visible
  int64_t local = 256;  // the last tokens up to and including the query
};

struct SparsityConfig {
  AttentionPolicy policy = AttentionPolicy::Dense;
  int32_t page_size = 64;          // physical page (tokens)
  int32_t logical_page_size = 16;  // page whose key min/max the selector scores
  int64_t token_budget = 4096;     // decode tokens per retrieval head (fixed-budget policies)
  int32_t selector_interval = 4;   // decode steps a selection is reused for
  StreamingWindow prefill_window{128, 8192};
  StreamingWindow decode_window{128, 256};
  std::optional<double> streaming_ratio;  // overrides the head pattern's rule
  std::string head_pattern_file;          // empty: the model folder's, else uniform by ratio
  SelectionGranularity granularity = SelectionGranularity::KvHead;
  // PSA: the smallest set of pages whose estimated share of the softmax mass reaches this,
  // clamped to [psa_min_budget, psa_max_budget] tokens.
  double psa_mass = 0.95;
  int64_t psa_min_budget = 1024;
  int64_t psa_max_budget = 8192;

  bool has_streaming_heads() const;  // the policy uses streaming heads at all
  bool selects_pages() const { return policy == AttentionPolicy::Quest || policy == AttentionPolicy::Psa || policy == AttentionPolicy::LServe; }
  // Throws Error on inconsistent values (budget not a page multiple, logical page not dividing
  // the physical page, windows, ...).
  void validate() const;
  std::string summary() const;  // one line: what runs
};

// Why a request's own config cannot run on an engine configured as `base` (empty when it can).
// A request may change only what its retrieval heads read in decode: the policy (among those
// with the same streaming heads), the token budget, the PSA knobs and the selector interval.
// Windows, page sizes, the head pattern and the selection granularity belong to the KV cache
// and the prefix cache, so they stay the engine's; page selection needs a cache with key
// summaries.
std::string override_incompatibility(const SparsityConfig& base, const SparsityConfig& request,
                                     bool cache_has_summaries);

}  // namespace lserve
