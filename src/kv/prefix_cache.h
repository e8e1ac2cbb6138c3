// PrefixCache: reuse of the KV of full pages that earlier requests computed for the same
// prompt prefix (vLLM's automatic prefix caching, extended to LServe's two pools).
//
// A full page of prompt tokens is named by a hash chained over the pages before it:
//     h[0] = H(salt, tokens[0 .. P)),   h[i] = H(h[i-1], tokens[i*P .. (i+1)*P))
// so equal hashes mean equal prefixes. The salt folds in what else shapes the KV (the streaming
// head pattern and prefill windows: a streaming head's prefill output, and with it every later
// layer's KV, depends on them). Only pages holding prompt tokens alone are indexed; generated
// tokens are computed as decode rows and need not match what a prefill would write.
//
// The index maps a hash to the page of each pool holding that prefix page. Released pages stay
// indexed and become evictable (BlockAllocator), least recently released evicted first.
// A new sequence may take a cached prefix of k pages when
//   - the retrieval pages 0..k-1 are all cached (their key min/max summaries come with them),
//   - the streaming pages that its prefill can still see from position k*P are cached: the
//     sink pages and the pages of the local window before k*P (the others read kNoPage, as if
//     trimmed), and
//   - at least one prompt token is left to compute (the step needs its logits).
// Shared pages are never written: a sequence writes only at positions past its cached prefix,
// which ends on a page boundary.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "kv/kv_cache.h"

namespace lserve {

class PrefixCache {
 public:
  PrefixCache(KvCache& cache, uint64_t salt);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // Chained hashes of the full pages of `tokens`.
  std::vector<uint64_t> page_hashes(std::span<const int32_t> tokens) const;
  // Gives the empty sequence the longest usable cached prefix of a prompt of `prompt_len`
  // tokens with page hashes `hashes`; `keep` is the streaming window its prefill keeps.
  // Returns the number of tokens attached (a multiple of the page size).
  int64_t attach(SequenceKv& kv, std::span<const uint64_t> hashes, int64_t prompt_len, const StreamingWindow& keep);
  // Indexes pages [0, num_pages) of the sequence, which must hold prompt tokens only and have
  // been computed. Pages whose hash is already indexed (another copy) are left alone.
  void insert(const SequenceKv& kv, std::span<const uint64_t> hashes, int64_t num_pages);

  int64_t num_cached_pages() const { return static_cast<int64_t>(index_.size()); }

 private:
  struct Entry {
    PageId retrieval = kNoPage;
    PageId streaming = kNoPage;
  };
  bool streaming_page_needed(int64_t page, int64_t prefix_pages, const StreamingWindow& keep) const;
  void forget_retrieval(PageId page);
  void forget_streaming(PageId page);

  KvCache& cache_;
  uint64_t salt_;
  bool has_retrieval_, has_streaming_;
  std::unordered_map<uint64_t, Entry> index_;
  std::vector<uint64_t> retrieval_hash_, streaming_hash_;  // page -> hash of the entry holding it
  std::vector<uint8_t> retrieval_indexed_, streaming_indexed_;
};

}  // namespace lserve
