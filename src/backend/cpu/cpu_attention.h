// Paged attention on the CPU, for every policy: flash-attention style (tiles, online softmax,
// no score matrix) over the pool layouts of kv/kv_cache.h. Every (sequence, KV head) gets a
// computed list of pages to visit and a mask rule, so dense, streaming (sink + local window)
// and selected-pages attention are one kernel walking different page lists:
//   retrieval head, prefill or dense decode:  pages 0 .. the one holding the last query
//   retrieval head, decode with selection:    the selected pages (+ pages newer than the selection)
//   streaming head:                           pages touching [0, sink) or the local band;
//                                             token-exact Lambda mask at the edges
// A work item is one (sequence, query heads, query tile, slice of the page list). A row's pages
// fall into fixed segments (by page index) that each run their own online softmax and merge in
// order; tiles of few queries run their segments as parallel items (flash-decoding). A row's
// output is therefore bit-identical whatever its tile (prefill chunks of any size), the batch
// or the thread count (cpu_attention.cpp, at the top).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/attention_batch.h"
#include "kv/kv_cache.h"

namespace lserve {

struct CpuAttentionArgs {
  const float* q;  // [T, num_heads, head_dim]
  float* out;      // [T, num_heads, head_dim]
  int64_t num_heads, num_kv_heads, head_dim, page_size;
  float scale;
  // The layer's pools by HeadKind (index 0 retrieval, 1 streaming), [pages, pool heads, P, D].
  const float* k[2];
  const float* v[2];
  int64_t pool_heads[2];
  const HeadSlot* slots;  // [num_kv_heads]: each KV head's pool and index in it
  // Retrieval key summaries for page selection (may be null when no policy selects).
  const float* key_min;
  const float* key_max;
  int64_t logical_page_size;
  int64_t layer;
};

// Args for a dense layer whose KV heads all sit in the retrieval pool, in order (tests and
// benchmarks). `slots` receives the head map and must outlive the args.
CpuAttentionArgs dense_attention_args(const float* q, const float* k, const float* v, float* out, int64_t num_heads,
                                      int64_t num_kv_heads, int64_t head_dim, int64_t page_size, float scale,
                                      std::vector<HeadSlot>& slots);

// Runs the layer's attention for the batch. Decoding sequences whose policy selects pages get
// their selection computed (or reused) first and stored in their SequenceKv; the step's
// statistics (KV tokens read) are added there too.
void cpu_paged_attention(const CpuAttentionArgs& args, const AttentionBatch& batch);

// Whether key position `key` is visible to query position `query` for a head of `kind` in a
// sequence that is (or is not) decoding: causal, then the Lambda mask for streaming heads.
bool key_visible(HeadKind kind, int64_t query, int64_t key, bool decoding, const AttentionBatch& batch);

// The plain reference: an explicit mask per (query, key) from key_visible and, for retrieval
// heads of decoding sequences with a selection, the selected pages as stored in their
// SequenceKv; every score computed, softmax in double. Slow; tests check the kernel with it.
void reference_paged_attention(const CpuAttentionArgs& args, const AttentionBatch& batch);

}  // namespace lserve
