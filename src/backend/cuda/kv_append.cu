// kv_append: scatters each new token's K and V rows into its slot of the paged pools, layout
// [num_pages, heads_in_pool, page_size, head_dim] (kv/kv_cache.h): a retrieval head's into the
// retrieval pool at slot_mapping[t], a streaming head's into the streaming pool at
// stream_slot_mapping[t]. One thread per 16-byte chunk of a (token, head) row when head_dim
// allows, per element otherwise.
#include <cfloat>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_slot.cuh"

namespace lserve::cuda {

namespace {

template <int kVec>  // elements per access: 8 (16 bytes) or 1
__global__ void kv_append_kernel(const bf16* __restrict__ k, const bf16* __restrict__ v, KvPools pools,
                                 int64_t tokens, int kv_heads, int64_t page_size, int head_dim, const HeadMap heads) {
  allow_next_kernel();
  wait_for_previous_kernels();
  const int chunks = head_dim / kVec;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= tokens * kv_heads * chunks) return;
  const int c = static_cast<int>(idx % chunks);
  const int h = static_cast<int>((idx / chunks) % kv_heads);
  const int64_t t = idx / (int64_t{chunks} * kv_heads);
  const KvSlot to = KvSlot::of(pools, heads, h, t, page_size);
  const int64_t src = (t * kv_heads + h) * head_dim + c * kVec;
  const int64_t dst = (to.row0 + to.offset) * head_dim + c * kVec;
  if constexpr (kVec == 8) {
    *reinterpret_cast<uint4*>(to.k + dst) = *reinterpret_cast<const uint4*>(k + src);
    *reinterpret_cast<uint4*>(to.v + dst) = *reinterpret_cast<const uint4*>(v + src);
  } else {
    to.k[dst] = k[src];
    to.v[dst] = v[src];
  }
}

// Key summaries: one thread per (token, KV head, channel). The token that is the step's last
// one in its logical page (the page's end, or the sequence's last new token) recomputes the
// page's per-channel min and max over every key written to it so far; the other tokens of that
// logical page do nothing, so no two threads write one summary and no atomics are needed.
__global__ void kv_summaries_kernel(const bf16* __restrict__ k_pages, const int64_t* __restrict__ slot_mapping,
                                    const int32_t* __restrict__ positions, const int32_t* __restrict__ query_start,
                                    int32_t num_seqs, int64_t tokens, int kv_heads, int64_t page_size,
                                    int64_t logical_page_size, int head_dim, const HeadMap heads,
                                    bf16* __restrict__ key_min, bf16* __restrict__ key_max) {
  allow_next_kernel();
  wait_for_previous_kernels();
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= tokens * kv_heads * head_dim) return;
  const int c = static_cast<int>(idx % head_dim);
  const int h = static_cast<int>((idx / head_dim) % kv_heads);
  const int64_t t = idx / (int64_t{head_dim} * kv_heads);
  const int slot = heads.slot[h];
  if (slot < 0) return;  // streaming heads keep no summaries
  const int64_t pos = positions[t];
  const bool page_end = (pos + 1) % logical_page_size == 0;
  if (!page_end) {
    // The sequence holding row t: the last b with query_start[b] <= t.
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (query_start[mid] <= t) lo = mid; else hi = mid - 1;
    }
    if (t + 1 != query_start[lo + 1]) return;  // a later new token of this logical page updates it
  }
  const int64_t page = slot_mapping[t] / page_size, offset = slot_mapping[t] % page_size;
  const int64_t first = offset - pos % logical_page_size;  // the logical page's first row in the page
  const int64_t row0 = (page * heads.retrieval_heads + slot) * page_size;
  float lo_v = INFINITY, hi_v = -INFINITY;
  for (int64_t r = first; r <= offset; ++r) {
    const float x = __bfloat162float(k_pages[(row0 + r) * head_dim + c]);
    lo_v = fminf(lo_v, x);
    hi_v = fmaxf(hi_v, x);
  }
  const int64_t logical = page_size / logical_page_size;
  const int64_t dst = ((page * heads.retrieval_heads + slot) * logical + offset / logical_page_size) * head_dim + c;
  key_min[dst] = __float2bfloat16_rn(lo_v);  // exact: the min and max of bf16 values are bf16 values
  key_max[dst] = __float2bfloat16_rn(hi_v);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void kv_append(const bf16* k, const bf16* v, const KvPools& pools, const HeadMap& heads, int64_t tokens,
               int64_t kv_heads, int64_t page_size, int64_t head_dim, cudaStream_t stream) {
  if (tokens == 0) return;
  const bool wide = head_dim % 8 == 0 && aligned16(k) && aligned16(v) && aligned16(pools.k_pages) &&
                    aligned16(pools.v_pages) && aligned16(pools.k_stream) && aligned16(pools.v_stream);
  const int64_t n = tokens * kv_heads * (wide ? head_dim / 8 : head_dim);
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  launch_dependent(wide ? kv_append_kernel<8> : kv_append_kernel<1>, dim3(blocks), dim3(256), 0, stream, k, v, pools,
                   tokens, static_cast<int>(kv_heads), page_size, static_cast<int>(head_dim), heads);
}

void kv_summaries(const bf16* k_pages, const int64_t* slot_mapping, const int32_t* positions,
                  const int32_t* query_start, int32_t num_seqs, int64_t tokens, const HeadMap& heads, int64_t kv_heads,
                  int64_t page_size, int64_t logical_page_size, int64_t head_dim, bf16* key_min, bf16* key_max,
                  cudaStream_t stream) {
  if (tokens == 0 || heads.retrieval_heads == 0) return;
  const int64_t n = tokens * kv_heads * head_dim;
  launch_dependent(kv_summaries_kernel, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0, stream, k_pages,
                   slot_mapping, positions, query_start, num_seqs, tokens, static_cast<int>(kv_heads), page_size,
                   logical_page_size, static_cast<int>(head_dim), heads, key_min, key_max);
}

}  // namespace lserve::cuda
