// Launchers of the CUDA backend's row and element-wise kernels (norms, RoPE, SwiGLU, embedding,
// row gather, KV append, dtype conversion). Each launches on `stream` and checks the launch; the
// shapes follow the matching Backend op in backend/backend.h. Attention has its own header.
// bf16 storage, f32 arithmetic inside every kernel, one rounding to bf16 on the way out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "backend/cuda/head_map.h"

namespace lserve::cuda {

using bf16 = __nv_bfloat16;

// Programmatic dependent launch of the decode path's kernels (dependent_launch.cuh), off by
// default; process-wide (CudaBackendOptions::dependent_launch sets it).
void set_dependent_launch(bool on);

// dst[i] = bf16(src[i]), round to nearest even. src f32, or f16 as raw bits.
void convert_f32_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream);
void convert_f16_to_bf16(const uint16_t* src, bf16* dst, int64_t n, cudaStream_t stream);

// out = x / rms(x) * weight per row of `cols`; out may alias x.
void rms_norm(const bf16* x, const bf16* weight, float eps, bf16* out, int64_t rows, int64_t cols,
              cudaStream_t stream);
// residual = bf16(residual + x); out = rms_norm(residual).
void add_rms_norm(bf16* residual, const bf16* x, const bf16* weight, float eps, bf16* out, int64_t rows,
                  int64_t cols, cudaStream_t stream);
// In place, per head_dim-long row of x ([rows, head_dim]).
void head_rms_norm(bf16* x, const bf16* weight, float eps, int64_t rows, int64_t head_dim, cudaStream_t stream);

// NeoX RoPE in place on q [tokens, q_heads * head_dim] and k [tokens, kv_heads * head_dim];
// cos_sin: [max_pos, head_dim] f32 (cos | sin). Positions outside the table leave the row as it
// is (the model checks positions on the host before the step).
void rope(bf16* q, bf16* k, const int32_t* positions, const float* cos_sin, int64_t max_pos, int64_t tokens,
          int64_t q_heads, int64_t kv_heads, int64_t head_dim, cudaStream_t stream);

// out = silu(gate) * up over n elements; out may alias gate.
void silu_mul(const bf16* gate, const bf16* up, bf16* out, int64_t n, cudaStream_t stream);

// out[t, :] = table[ids[t], :]. An id outside [0, vocab) gives a zero row (ids on the device
// cannot be checked without a sync; the host path checks them).
void embedding(const int32_t* ids, const bf16* table, int64_t vocab, int64_t hidden, bf16* out, int64_t tokens,
               cudaStream_t stream);

// dst row i = src row rows[i]; rows already checked. row_bytes must be even.
void gather_rows(const void* src, const int32_t* rows, int64_t num_rows, int64_t row_bytes, void* dst,
                 cudaStream_t stream);

// The two pools of one layer and where the step's tokens go in each (slot = page * page_size +
// offset); the streaming ones are unused when the layer has no streaming heads.
struct KvPools {
  bf16* k_pages;
  bf16* v_pages;
  const int64_t* slot_mapping;  // [tokens]
  bf16* k_stream;
  bf16* v_stream;
  const int64_t* stream_slot_mapping;  // [tokens]
};

// Writes k and v ([tokens, kv_heads * head_dim]) into the pools ([num_pages, heads_in_pool,
// page_size, head_dim]), each KV head into the pool and at the index `heads` gives it.
void kv_append(const bf16* k, const bf16* v, const KvPools& pools, const HeadMap& heads, int64_t tokens,
               int64_t kv_heads, int64_t page_size, int64_t head_dim, cudaStream_t stream);

// After kv_append: the retrieval heads' per-channel key min and max of every logical page the
// step wrote to ([num_pages, retrieval heads, page_size / logical_page_size, head_dim]), over
// all keys of that logical page so far. positions and query_start as in the AttentionBatch.
void kv_summaries(const bf16* k_pages, const int64_t* slot_mapping, const int32_t* positions,
                  const int32_t* query_start, int32_t num_seqs, int64_t tokens, const HeadMap& heads, int64_t kv_heads,
                  int64_t page_size, int64_t logical_page_size, int64_t head_dim, bf16* key_min, bf16* key_max,
                  cudaStream_t stream);

// rope, kv_append and kv_summaries in one launch (rope_kv_append.cu): q rotated in place, the
// rotated keys and the values into the pools, and with key_min (not null) the retrieval heads'
// summaries of the logical pages the step wrote to. k is read only. positions and query_start
// as in the AttentionBatch (positions outside the table leave a row unrotated, as rope does).
void rope_kv_append(bf16* q, const bf16* k, const bf16* v, const KvPools& pools, const HeadMap& heads,
                    const int32_t* positions, const int32_t* query_start, int32_t num_seqs, const float* cos_sin,
                    int64_t max_pos, int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t page_size,
                    int64_t head_dim, int64_t logical_page_size, bf16* key_min, bf16* key_max, cudaStream_t stream);

}  // namespace lserve::cuda
