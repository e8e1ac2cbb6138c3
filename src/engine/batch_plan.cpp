#include "engine/batch_plan.h"

#include <algorithm>

#include "core/error.h"

namespace lserve {

AttentionBatch plan_step(const KvCache& cache, std::span<const StepChunk> chunks, const SparsityConfig* sparsity) {
  AttentionBatch batch;
  const bool streaming = cache.has_streaming_heads();
  const int64_t P = cache.page_size();
  batch.query_start.push_back(0);
  batch.page_indptr.push_back(0);
  if (streaming) batch.streaming_page_indptr.push_back(0);
  for (const StepChunk& c : chunks) {
    const SequenceKv& kv = *c.kv;
    const int64_t end = c.start + c.num_tokens;
    LSERVE_CHECK(c.num_tokens > 0 && kv.num_tokens() >= end, "chunk [{}, {}) beyond the {} reserved tokens", c.start,
                 end, kv.num_tokens());
    batch.query_start.push_back(batch.query_start.back() + static_cast<int32_t>(c.num_tokens));
    batch.seq_lens.push_back(static_cast<int32_t>(end));
    batch.page_indices.insert(batch.page_indices.end(), kv.retrieval.pages.begin(), kv.retrieval.pages.end());
    batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
    if (streaming) {
      batch.streaming_page_indices.insert(batch.streaming_page_indices.end(), kv.streaming.pages.begin(),
                                          kv.streaming.pages.end());
      batch.streaming_page_indptr.push_back(static_cast<int32_t>(batch.streaming_page_indices.size()));
    }
    for (int64_t pos = c.start; pos < end; ++pos) {
      const auto page = static_cast<size_t>(pos / P);
      batch.positions.push_back(static_cast<int32_t>(pos));
      // With every KV head streaming there is no retrieval pool, so no retrieval pages: no slot.
      batch.slot_mapping.push_back(page < kv.retrieval.pages.size()
                                       ? static_cast<int64_t>(kv.retrieval.pages[page]) * P + pos % P
                                       : int64_t{-1});
      if (streaming) batch.streaming_slot_mapping.push_back(static_cast<int64_t>(kv.streaming.pages[page]) * P + pos % P);
    }
    batch.decoding.push_back(static_cast<uint8_t>(c.decoding));
    batch.sequences.push_back(c.kv);
    batch.sequence_sparsity.push_back(c.sparsity);
  }
  batch.sparsity = sparsity;
  return batch;
}

void trim_after_step(KvCache& cache, SequenceKv& kv, int64_t next_position, bool prefill_done,
                     const SparsityConfig& sparsity) {
  if (!cache.has_streaming_heads()) return;
  const StreamingWindow& pw = sparsity.prefill_window;
  const StreamingWindow& dw = sparsity.decode_window;
  const StreamingWindow keep =
      prefill_done ? dw : StreamingWindow{std::max(pw.sink, dw.sink), std::max(pw.local, dw.local)};
  cache.trim_streaming(kv, next_position, keep);
}

}  // namespace lserve
