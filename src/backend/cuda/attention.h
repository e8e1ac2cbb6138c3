// Paged attention on the GPU: the launch parameters of one layer, the work items a plan hands
// the kernels, and the launchers. Three kernels share one contract (Backend::attention):
//   attention_reference  plain CUDA-core kernel, one block per (token, head); any head_dim.
//                        The correctness reference for the fast kernels and their fallback.
//   attention_prefill    tensor cores (mma.sync m16n8k16 bf16, f32 accumulate), a 64-row query
//                        tile (GQA heads packed as rows) walking an iterator over KV tiles. On
//                        sm_90 head_dim 64 and 128 go to attention_prefill_hopper instead: wgmma,
//                        128-row tiles, a producer warpgroup loading K/V for two consumers.
//   attention_decode     one query per sequence, split along the context (flash-decoding);
//                        the last split of a sequence to finish merges the splits' states.
// attention_plan.h decides which sequence goes to which kernel and how it is split.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "backend/cuda/head_map.h"

namespace lserve::cuda {

using bf16 = __nv_bfloat16;

// Streaming heads' windows (sparse/sparsity_config.h): a streaming head's query at position q
// sees key k <= q when k < sink or k > q - local; prefill rows use the prefill window, the row
// of a decoding sequence the decode window.
struct StreamingWindows {
  int32_t prefill_sink = 0, prefill_local = 0, decode_sink = 0, decode_local = 0;
};

// One layer's attention over the step's batch; every pointer is device memory.
//
// KV heads live in two pools, placed by `heads` (head_map.h); the streaming pool and its page
// tables are used only when the layer has streaming heads.
struct AttentionParams {
  const bf16* q = nullptr;        // [num_tokens, num_heads, head_dim]
  bf16* out = nullptr;            // same
  const bf16* k_pages = nullptr;  // retrieval pool: [num_pages, heads.retrieval_heads, page_size, head_dim]
  const bf16* v_pages = nullptr;  // same
  const int32_t* query_start = nullptr;   // [num_seqs + 1]
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  const int32_t* page_indptr = nullptr;   // [num_seqs + 1]
  const int32_t* page_indices = nullptr;  // [page_indptr[num_seqs]]
  int32_t num_seqs = 0, num_tokens = 0;
  int32_t num_heads = 0, num_kv_heads = 0, head_dim = 0, page_size = 0;
  float scale = 0.0f;
  // ---- streaming heads (stream_heads == 0: none) ----
  const bf16* k_stream = nullptr;  // streaming pool: [num_pages, heads.stream_heads, page_size, head_dim]
  const bf16* v_stream = nullptr;
  const int32_t* stream_page_indptr = nullptr;   // [num_seqs + 1]
  const int32_t* stream_page_indices = nullptr;  // -1 where released
  const int32_t* decoding = nullptr;             // [num_seqs]: 1 where the sequence decodes
  StreamingWindows windows;
  HeadMap heads;
  // ---- page selection: retrieval heads of decoding sequences that select (select_slot null:
  // none). A selecting sequence's selection unit u reads the pages (indices within the
  // sequence, ascending) of its list select_pages[(slot * units + u) * select_capacity ..] of
  // select_counts[slot * units + u] entries, this layer's. Units are the KV heads (the group
  // shares one list), or with select_per_query_head the query heads (each its own list).
  const int32_t* select_slot = nullptr;    // [num_seqs]: the sequence's slot, or -1
  const int32_t* select_pages = nullptr;
  const int32_t* select_counts = nullptr;
  int32_t select_capacity = 0;
  int32_t select_per_query_head = 0;
};

// Decode blocks per KV head: one, or with one selection per query head one per query head of
// the group (each reads its own pages; the blocks past the first return unless they serve a
// selecting retrieval head).
__host__ __device__ inline int32_t decode_blocks_per_kv_head(const AttentionParams& p) {
  return p.select_slot && p.select_per_query_head ? p.num_heads / p.num_kv_heads : 1;
}

// One KV head's keys and values for one sequence: the pool of its kind, the sequence's page
// table in that pool, and the head's index among the pool's heads.
struct HeadKv {
  const bf16* k;
  const bf16* v;
  const int32_t* pages;
  int32_t pool_heads, index;
  // Row of `key` in k and v (rows of head_dim).
  __host__ __device__ int64_t row(int32_t key, int32_t page_size) const {
    return (int64_t{pages[key / page_size]} * pool_heads + index) * page_size + key % page_size;
  }
};

__host__ __device__ inline HeadKv head_kv(const AttentionParams& p, int kv_head, int32_t seq) {
  const int slot = p.heads.slot[kv_head];
  if (slot >= 0) return {p.k_pages, p.v_pages, p.page_indices + p.page_indptr[seq], p.heads.retrieval_heads, slot};
  return {p.k_stream, p.v_stream, p.stream_page_indices + p.stream_page_indptr[seq], p.heads.stream_heads, ~slot};
}

// Query tile of a prefill plan item: rows row_begin .. row_begin + kPrefillItemRows - 1 of
// sequence `seq`, where row r is (new token r / G, head r % G of the KV head's group of G). The
// Hopper kernel takes an item per block; the portable kernel splits it into blocks of
// kPrefillRows. Items have the same size on every device and head_dim, so a plan needs neither.
struct PrefillItem {
  int32_t seq, row_begin;
};
inline constexpr int kPrefillItemRows = 128;
inline constexpr int kPrefillRows = 64;
static_assert(kPrefillItemRows % kPrefillRows == 0, "an item is whole blocks of the portable kernel");

// Keys [key_begin, key_end) of a single-query sequence. partial < 0: the item covers the whole
// context and writes the output; otherwise it writes partial state `partial`, merged later. For
// a sequence that selects pages (`selected`), [key_begin, key_end) are entries of each retrieval
// head's page list instead (clipped to its length on the device), and `selected` is the number
// of splits its lists are read in; its streaming heads' window tiles are spread over the same
// splits, so that no block of the launch walks more than a few tiles.
// merge: the sequence's MergeItem (its splits), or -1 for a sequence of one split. slot: the
// sequence's page-selection slot (AttentionParams::select_slot[seq], in the item so that a block
// finds its page list without waiting for one more load), or -1.
struct DecodeItem {
  int32_t seq, key_begin, key_end, partial, selected, merge, slot;
};
// Keys (whole pages) per split of a page list: two tiles, the second loading while the first
// is computed. A budget of 4096 keys then takes 32+ blocks per KV head. Measured at 256K, batch
// 1 (H200): 256 keys per split (four tiles in turn) took 23 us a reusing step, latency-bound at
// 6% occupancy (ncu); 64 keys (one tile) 22 us with the merge fused in, 552 blocks in 1.4
// waves; 128 keys 18 us.
inline constexpr int kDecodeListKeys = 128;
inline constexpr int kDecodeMaxMergeSplits = 1024;  // splits of one sequence, at most
// Partial states first_partial .. first_partial + num_splits - 1 hold sequence `seq`'s splits.
struct MergeItem {
  int32_t seq, first_partial, num_splits;
};
inline constexpr int kDecodeMaxGroup = 16;      // query heads per KV head the decode kernel packs
inline constexpr int kDecodeTileKeys = 64;      // keys per tile of the decode kernel
inline constexpr int kDecodeMinSplitKeys = 512; // a split shorter than this costs more than it saves

// How a sequence of `seq_len` keys is split: into at most `max_splits` splits of whole tiles and
// at least kDecodeMinSplitKeys keys each. A function of the sequence's length and a device
// constant (max_splits: enough splits of one sequence to fill the GPU, decode_max_splits), never
// of the rest of the batch, so a request's attention is bit-identical whatever it is batched with.
struct DecodeSplits {
  int32_t count, keys;  // number of splits, keys per split (the last may have fewer)
};
inline DecodeSplits decode_splits(int32_t seq_len, int32_t max_splits) {
  const int32_t by_min = (seq_len + kDecodeMinSplitKeys - 1) / kDecodeMinSplitKeys;
  const int32_t want = by_min < max_splits ? by_min : max_splits;
  const int32_t per = want <= 1 ? seq_len : (seq_len + want - 1) / want;
  const int32_t keys = (per + kDecodeTileKeys - 1) / kDecodeTileKeys * kDecodeTileKeys;
  return {keys == 0 ? 1 : (seq_len + keys - 1) / keys, keys == 0 ? kDecodeTileKeys : keys};
}

// Splits per sequence that make one sequence's decode fill the device once: the decode kernel's
// resident blocks (all SMs) over the KV heads, each KV head being a block of its own.
int32_t decode_max_splits(int head_dim, int num_kv_heads);

// The head dims the tensor-core kernels are built for; others use the reference kernel.
bool fast_attention_supports(int head_dim);

void attention_reference(const AttentionParams& p, cudaStream_t stream);
// items: device array of num_items. Routes to attention_prefill_hopper where that supports the
// head_dim on this device, else runs the portable kernel (grid (num_items * 2, num_kv_heads)).
void attention_prefill(const AttentionParams& p, const PrefillItem* items, int32_t num_items, cudaStream_t stream);
// The wgmma kernel: head_dim 64 or 128 on a compute capability 9.0 device (checked once per
// device); grid (num_items, num_kv_heads).
bool prefill_hopper_supports(int head_dim);
void attention_prefill_hopper(const AttentionParams& p, const PrefillItem* items, int32_t num_items,
                              cudaStream_t stream);
// partial_o: [num_partials, num_heads, head_dim] f32 (normalized), partial_lse: [num_partials,
// num_heads] f32, log2 of the split's softmax denominator plus its max, in log2 units.
// merges: the plan's MergeItems (DecodeItem::merge); arrivals: [merges, num_kv_heads,
// decode_blocks_per_kv_head] counters, zero before the first launch and left zero by each.
// The item count is read on the device (num_items: one int), and the grid covers `grid_items`
// items, at least the count: a recorded step (CUDA graph) launches the same grid every replay
// while the number of splits grows with the context; blocks past the count return at once.
void attention_decode(const AttentionParams& p, const DecodeItem* items, const int32_t* num_items, int32_t grid_items,
                      float* partial_o, float* partial_lse, const MergeItem* merges, uint32_t* arrivals,
                      cudaStream_t stream);

}  // namespace lserve::cuda
