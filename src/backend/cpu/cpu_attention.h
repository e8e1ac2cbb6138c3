// Paged attention on the CPU: flash-attention style (tiles, online softmax, no score matrix),
// over the page layout of kv/kv_cache.h. A work item is one (sequence, KV head, query tile,
// page range); long single-query contexts are split along their pages (flash-decoding) and the
// partial softmax states merged, so a decode step keeps every core busy.
#pragma once

#include "backend/attention_batch.h"
#include "core/tensor.h"

namespace lserve {

struct CpuAttentionArgs {
  const float* q;        // [T, num_heads, head_dim]
  const float* k_pages;  // [num_pages, num_kv_heads, page_size, head_dim]
  const float* v_pages;  // same
  float* out;            // [T, num_heads, head_dim]
  int64_t num_heads, num_kv_heads, head_dim, page_size;
  float scale;
};

void cpu_paged_attention(const CpuAttentionArgs& args, const AttentionBatch& batch);

// The plain reference: every score of every query explicitly, softmax, weighted sum. Slow;
// used by tests to check the fast kernel.
void reference_paged_attention(const CpuAttentionArgs& args, const AttentionBatch& batch);

}  // namespace lserve
