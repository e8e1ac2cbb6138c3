// The plain paged-attention kernel: one block per (token, head), keys in chunks of 128 (one per
// thread: its score by a plain dot product), online softmax over the chunks, then each thread
// owns output dimensions. CUDA cores only, expf, no tiling: easy to read and check, and the
// fallback for head dims the tensor-core kernels are not built for. Slow on long contexts.
#include <cfloat>

#include "backend/cuda/attention.h"
#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

namespace {

constexpr int kThreads = 128;  // also the keys per chunk

__device__ float block_reduce(float v, float* scratch, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kThreads) attention_reference_kernel(const AttentionParams p) {
  extern __shared__ float smem[];
  const int D = p.head_dim;
  float* qs = smem;           // [D] the query, pre-scaled
  float* os = qs + D;         // [D] unnormalized output
  float* ps = os + D;         // [kThreads] the chunk's probabilities
  float* scratch = ps + kThreads;  // [kThreads / 32]

  const int t = blockIdx.x, h = blockIdx.y;
  // The sequence holding token t: the last b with query_start[b] <= t (empty sequences share
  // their start with the next one, so the last such b is the non-empty one).
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.query_start[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const int b = lo;
  const int qlen = p.query_start[b + 1] - p.query_start[b];
  const int qpos = p.seq_lens[b] - qlen + (t - p.query_start[b]);
  const int kvh = h / (p.num_heads / p.num_kv_heads);
  const bool streaming = p.heads.slot[kvh] < 0;
  const bool decoding = p.decoding && p.decoding[b];
  const int sink = decoding ? p.windows.decode_sink : p.windows.prefill_sink;
  const int local = decoding ? p.windows.decode_local : p.windows.prefill_local;
  // Causal, and for a streaming head the Lambda mask: the sink and the local window.
  auto visible = [&](int key) { return key <= qpos && (!streaming || key < sink || key > qpos - local); };
  const HeadKv hv = head_kv(p, kvh, b);
  const int64_t head_row = (int64_t{t} * p.num_heads + h) * D;

  for (int d = threadIdx.x; d < D; d += kThreads) {
    qs[d] = __bfloat162float(p.q[head_row + d]) * p.scale;
    os[d] = 0.0f;
  }
  __syncthreads();
  auto key_offset = [&](int key) { return hv.row(key, p.page_size) * D; };

  float m = -FLT_MAX, l = 0.0f;
  for (int k0 = 0; k0 <= qpos; k0 += kThreads) {
    const int key = k0 + threadIdx.x;
    float s = -FLT_MAX;
    const bool seen = visible(key);
    if (seen) {
      const bf16* k = hv.k + key_offset(key);
      s = 0.0f;
      for (int d = 0; d < D; ++d) s += qs[d] * __bfloat162float(k[d]);
    }
    const float m_new = fmaxf(m, block_reduce(s, scratch, true));
    const float corr = expf(m - m_new);
    const float pk = seen ? expf(s - m_new) : 0.0f;
    ps[threadIdx.x] = pk;
    l = l * corr + block_reduce(pk, scratch, false);  // synchronizes: ps is complete after it
    const int n = min(kThreads, qpos + 1 - k0);
    for (int d = threadIdx.x; d < D; d += kThreads) {
      float acc = os[d] * corr;
      for (int j = 0; j < n; ++j)  // invisible keys' pages may be released: never read
        if (visible(k0 + j)) acc += ps[j] * __bfloat162float(hv.v[key_offset(k0 + j) + d]);
      os[d] = acc;
    }
    m = m_new;
    __syncthreads();  // ps is rewritten by the next chunk
  }
  for (int d = threadIdx.x; d < D; d += kThreads) p.out[head_row + d] = __float2bfloat16_rn(os[d] / l);
}

}  // namespace

void attention_reference(const AttentionParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const size_t smem = (2 * static_cast<size_t>(p.head_dim) + kThreads + kThreads / 32) * sizeof(float);
  attention_reference_kernel<<<dim3(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads)),
                               kThreads, smem, stream>>>(p);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
