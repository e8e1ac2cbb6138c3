// RoPE, the KV append and the key summaries in one launch (the three kernels of rope.cu and
// kv_append.cu, which stay the reference it is tested against): a decode step's layer has two
// launches fewer. One thread per (token, head, rotation pair i < head_dim / 2) over the query
// heads and then the KV heads:
//   - a query head's pair is rotated in place, as rope_kernel does;
//   - a KV head's pair of k is rotated and written, with v's same two channels, to the token's
//     slot of its pool; k itself is left as it was (the cache holds the rotated keys);
//   - for a retrieval head, the token that is the step's last one in its logical page then takes
//     the page's min and max of those two channels over every key written to it so far: keys of
//     earlier steps from the pool, keys of this step rotated again from k (another thread may
//     not have written them yet, and the same arithmetic gives the same bf16).
// Values are rounded exactly as the separate kernels round them, so the pools and summaries are
// the same bit for bit.
#include <cfloat>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_slot.cuh"
#include "backend/cuda/rope_rotation.cuh"

namespace lserve::cuda {

namespace {

__global__ void rope_kv_append_kernel(bf16* q, const bf16* __restrict__ k, const bf16* __restrict__ v, KvPools pools,
                                      const int32_t* __restrict__ positions, const int32_t* __restrict__ query_start,
                                      int32_t num_seqs, Rotation rot, int64_t tokens, int q_heads, int kv_heads,
                                      int64_t page_size, int64_t logical_page_size, const HeadMap heads,
                                      bf16* __restrict__ key_min, bf16* __restrict__ key_max) {
  allow_next_kernel();
  wait_for_previous_kernels();
  const int half = rot.half, D = 2 * half, all_heads = q_heads + kv_heads;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= tokens * all_heads * half) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % all_heads);
  const int64_t t = idx / (int64_t{half} * all_heads);
  const int32_t pos = positions[t];
  if (h < q_heads) {
    bf16* row = q + (t * q_heads + h) * D;
    if (pos < 0 || pos >= rot.max_pos) return;
    bf16 a, b;
    rot.apply(row, pos, i, a, b);
    row[i] = a;
    row[i + half] = b;
    return;
  }
  const int kvh = h - q_heads;
  const KvSlot to = KvSlot::of(pools, heads, kvh, t, page_size);
  const int64_t src = (t * kv_heads + kvh) * D, offset = to.offset;
  bf16 ka, kb;
  rot.apply(k + src, pos, i, ka, kb);
  to.k[(to.row0 + offset) * D + i] = ka;
  to.k[(to.row0 + offset) * D + i + half] = kb;
  to.v[(to.row0 + offset) * D + i] = v[src + i];
  to.v[(to.row0 + offset) * D + i + half] = v[src + i + half];
  if (to.streaming || !key_min) return;  // streaming heads keep no summaries

  // The sequence holding row t: the last b with query_start[b] <= t.
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (query_start[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const bool page_end = (pos + 1) % logical_page_size == 0;
  if (!page_end && t + 1 != query_start[lo + 1]) return;  // a later new token of this logical page updates it
  const int64_t first_new = query_start[lo];  // the sequence's first row of this step
  const int64_t first = offset - pos % logical_page_size;  // the logical page's first row in the page
  float lo_a = INFINITY, hi_a = -INFINITY, lo_b = INFINITY, hi_b = -INFINITY;
  for (int64_t r = first; r <= offset; ++r) {
    const int64_t back = offset - r, tr = t - back;  // row r holds position pos - back
    bf16 a, b;
    if (tr >= first_new) {
      rot.apply(k + (tr * kv_heads + kvh) * D, static_cast<int32_t>(pos - back), i, a, b);
    } else {
      a = to.k[(to.row0 + r) * D + i];
      b = to.k[(to.row0 + r) * D + i + half];
    }
    const float fa = __bfloat162float(a), fb = __bfloat162float(b);
    lo_a = fminf(lo_a, fa), hi_a = fmaxf(hi_a, fa);
    lo_b = fminf(lo_b, fb), hi_b = fmaxf(hi_b, fb);
  }
  const int64_t logical = page_size / logical_page_size;
  const int64_t dst = ((to.page * heads.retrieval_heads + to.index) * logical + offset / logical_page_size) * D;
  key_min[dst + i] = __float2bfloat16_rn(lo_a);  // exact: the min and max of bf16 values are bf16 values
  key_max[dst + i] = __float2bfloat16_rn(hi_a);
  key_min[dst + i + half] = __float2bfloat16_rn(lo_b);
  key_max[dst + i + half] = __float2bfloat16_rn(hi_b);
}

}  // namespace

void rope_kv_append(bf16* q, const bf16* k, const bf16* v, const KvPools& pools, const HeadMap& heads,
                    const int32_t* positions, const int32_t* query_start, int32_t num_seqs, const float* cos_sin,
                    int64_t max_pos, int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t page_size,
                    int64_t head_dim, int64_t logical_page_size, bf16* key_min, bf16* key_max, cudaStream_t stream) {
  const int64_t n = tokens * (q_heads + kv_heads) * (head_dim / 2);
  if (n == 0) return;
  const bool summaries = key_min && logical_page_size > 0 && heads.retrieval_heads > 0;
  launch_dependent(rope_kv_append_kernel, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0, stream, q, k, v,
                   pools, positions, query_start, num_seqs, Rotation{cos_sin, max_pos, static_cast<int>(head_dim / 2)},
                   tokens, static_cast<int>(q_heads), static_cast<int>(kv_heads), page_size,
                   summaries ? logical_page_size : int64_t{1}, heads, summaries ? key_min : nullptr,
                   summaries ? key_max : nullptr);
}

}  // namespace lserve::cuda
