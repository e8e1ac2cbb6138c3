// AttentionBatch: where each query token of one forward step sits in the paged KV cache, and
// which attention each sequence runs. Built once per step on the host (the "plan") and read by
// kv_append and attention in every layer. Vocabulary follows vLLM/FlashInfer: query_start
// (cu_seqlens), seq_lens, block tables as indptr/indices, slot_mapping.
//
//   batch tokens (T = query_start[B]):
//     | seq 0: q_len 3 | seq 1: q_len 1 | seq 2: q_len 5 |
//     0                3                4                9
//   seq b's new tokens are batch rows query_start[b] .. query_start[b+1]-1; after the step its
//   KV holds seq_lens[b] tokens, so its i-th new token sits at position
//       seq_lens[b] - q_len(b) + i        (causal: it sees positions 0 .. that one)
//   its retrieval pages, in order, are page_indices[page_indptr[b] .. page_indptr[b+1]-1];
//   position p lives in page p / page_size at offset p % page_size, and
//   slot_mapping[t] = page * page_size + offset is where batch row t's k and v are written.
//   Streaming heads (if the cache has any) use the streaming_* tables the same way; a released
//   streaming page reads -1 (kNoPage) and is never visited.
#pragma once

#include <cstdint>
#include <vector>

#include "sparse/sparsity_config.h"

namespace lserve {

struct SequenceKv;

struct AttentionBatch {
  std::vector<int32_t> query_start;   // [B + 1]
  std::vector<int32_t> seq_lens;      // [B]
  std::vector<int32_t> page_indptr;   // [B + 1]
  std::vector<int32_t> page_indices;  // [page_indptr[B]]
  std::vector<int64_t> slot_mapping;  // [T]
  std::vector<int32_t> positions;     // [T], position of each batch row

  // Streaming heads' pages; empty when the cache has no streaming heads.
  std::vector<int32_t> streaming_page_indptr;   // [B + 1]
  std::vector<int32_t> streaming_page_indices;  // kNoPage where released
  std::vector<int64_t> streaming_slot_mapping;  // [T]

  // Sparse attention: the policy (null: dense everywhere), whether each sequence is decoding
  // (streaming heads then use the decode window; retrieval heads may select pages), and each
  // sequence's state (page selections, statistics), updated by the attention op.
  const SparsityConfig* sparsity = nullptr;
  std::vector<uint8_t> decoding;       // [B]
  std::vector<SequenceKv*> sequences;  // [B]; may be null for a dense batch
  // A sequence's own policy for its retrieval heads in decode (a request's budget, PSA knobs,
  // selector interval; windows, page sizes and granularity are always `sparsity`'s): [B] or
  // empty; a null entry means `sparsity`.
  std::vector<const SparsityConfig*> sequence_sparsity;

  const SparsityConfig* sparsity_of(int32_t b) const {
    const auto i = static_cast<size_t>(b);
    return i < sequence_sparsity.size() && sequence_sparsity[i] ? sequence_sparsity[i] : sparsity;
  }
  // Whether any sequence's policy selects pages (the step then needs key summaries).
  bool selects_pages() const {
    for (int32_t b = 0; b < num_seqs(); ++b)
      if (const SparsityConfig* s = sparsity_of(b); s && s->selects_pages()) return true;
    return false;
  }

  int32_t num_seqs() const { return static_cast<int32_t>(seq_lens.size()); }
  int32_t num_tokens() const { return query_start.empty() ? 0 : query_start.back(); }
  int32_t query_len(int32_t b) const { return query_start[b + 1] - query_start[b]; }
};

}  // namespace lserve
