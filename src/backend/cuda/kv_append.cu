// kv_append: scatters each new token's K and V rows into its slot of the paged pools, layout
// [num_pages, heads_in_pool, page_size, head_dim] (kv/kv_cache.h): a retrieval head's into the
// retrieval pool at slot_mapping[t], a streaming head's into the streaming pool at
// stream_slot_mapping[t]. One thread per 16-byte chunk of a (token, head) row when head_dim
// allows, per element otherwise.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace lserve::cuda {

namespace {

template <int kVec>  // elements per access: 8 (16 bytes) or 1
__global__ void kv_append_kernel(const bf16* __restrict__ k, const bf16* __restrict__ v, KvPools pools,
                                 int64_t tokens, int kv_heads, int64_t page_size, int head_dim, const HeadMap heads) {
  const int chunks = head_dim / kVec;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= tokens * kv_heads * chunks) return;
  const int c = static_cast<int>(idx % chunks);
  const int h = static_cast<int>((idx / chunks) % kv_heads);
  const int64_t t = idx / (int64_t{chunks} * kv_heads);
  const int s = heads.slot[h];
  const bool streaming = s < 0;
  const int index = streaming ? ~s : s, pool_heads = streaming ? heads.stream_heads : heads.retrieval_heads;
  const int64_t slot = (streaming ? pools.stream_slot_mapping : pools.slot_mapping)[t];
  bf16* kp = streaming ? pools.k_stream : pools.k_pages;
  bf16* vp = streaming ? pools.v_stream : pools.v_pages;
  const int64_t page = slot / page_size, offset = slot % page_size;
  const int64_t src = (t * kv_heads + h) * head_dim + c * kVec;
  const int64_t dst = ((page * pool_heads + index) * page_size + offset) * head_dim + c * kVec;
  if constexpr (kVec == 8) {
    *reinterpret_cast<uint4*>(kp + dst) = *reinterpret_cast<const uint4*>(k + src);
    *reinterpret_cast<uint4*>(vp + dst) = *reinterpret_cast<const uint4*>(v + src);
  } else {
    kp[dst] = k[src];
    vp[dst] = v[src];
  }
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
  if (wide)
    kv_append_kernel<8><<<blocks, 256, 0, stream>>>(k, v, pools, tokens, static_cast<int>(kv_heads), page_size,
                                                    static_cast<int>(head_dim), heads);
  else
    kv_append_kernel<1><<<blocks, 256, 0, stream>>>(k, v, pools, tokens, static_cast<int>(kv_heads), page_size,
                                                    static_cast<int>(head_dim), heads);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
