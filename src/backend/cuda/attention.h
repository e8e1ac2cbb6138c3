// Paged attention on the GPU: the launch parameters of one layer, the work items a plan hands
// the kernels, and the launchers. Three kernels share one contract (Backend::attention):
//   attention_reference  plain CUDA-core kernel, one block per (token, head); any head_dim.
//                        The correctness reference for the fast kernels and their fallback.
//   attention_prefill    tensor cores (mma.sync m16n8k16 bf16, f32 accumulate), a 64-row query
//                        tile (GQA heads packed as rows) walking an iterator over KV tiles.
//   attention_decode     one query per sequence, split along the context (flash-decoding);
//                        attention_decode_merge combines the splits' partial softmax states.
// attention_plan.h decides which sequence goes to which kernel and how it is split.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace lserve::cuda {

using bf16 = __nv_bfloat16;

// One layer's attention over the step's batch; every pointer is device memory.
struct AttentionParams {
  const bf16* q;        // [num_tokens, num_heads, head_dim]
  bf16* out;            // same
  const bf16* k_pages;  // [num_pages, num_kv_heads, page_size, head_dim]
  const bf16* v_pages;  // same
  const int32_t* query_start;   // [num_seqs + 1]
  const int32_t* seq_lens;      // [num_seqs]
  const int32_t* page_indptr;   // [num_seqs + 1]
  const int32_t* page_indices;  // [page_indptr[num_seqs]]
  int32_t num_seqs, num_tokens;
  int32_t num_heads, num_kv_heads, head_dim, page_size;
  float scale;
};

// Query tile of the prefill kernel: rows row_begin .. row_begin + kPrefillRows - 1 of sequence
// `seq`, where row r is (new token r / G, head r % G of the KV head's group of G).
struct PrefillItem {
  int32_t seq, row_begin;
};
inline constexpr int kPrefillRows = 64;

// Keys [key_begin, key_end) of a single-query sequence. partial < 0: the item covers the whole
// context and writes the output; otherwise it writes partial state `partial`, merged later.
struct DecodeItem {
  int32_t seq, key_begin, key_end, partial;
};
// Partial states first_partial .. first_partial + num_splits - 1 hold sequence `seq`'s splits.
struct MergeItem {
  int32_t seq, first_partial, num_splits;
};
inline constexpr int kDecodeMaxGroup = 16;  // query heads per KV head the decode kernel packs
inline constexpr int kDecodeSplitKeys = 512;  // keys per split: a function of the sequence alone

// The head dims the tensor-core kernels are built for; others use the reference kernel.
bool fast_attention_supports(int head_dim);

void attention_reference(const AttentionParams& p, cudaStream_t stream);
// items: device array of num_items; grid (num_items, num_kv_heads).
void attention_prefill(const AttentionParams& p, const PrefillItem* items, int32_t num_items, cudaStream_t stream);
// partial_o: [num_partials, num_heads, head_dim] f32 (normalized), partial_lse: [num_partials,
// num_heads] f32, log2 of the split's softmax denominator plus its max, in log2 units.
void attention_decode(const AttentionParams& p, const DecodeItem* items, int32_t num_items, float* partial_o,
                      float* partial_lse, cudaStream_t stream);
void attention_decode_merge(const AttentionParams& p, const MergeItem* items, int32_t num_items,
                            const float* partial_o, const float* partial_lse, cudaStream_t stream);

}  // namespace lserve::cuda
