// RoPE, NeoX style (the two halves of each head rotated as pairs), in place on q and k. One
// thread per (token, head, pair); the cos|sin table is the model's f32 table, so angles match
// the CPU path exactly and only the final rounding to bf16 differs.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/rope_rotation.cuh"

namespace lserve::cuda {

namespace {

__global__ void rope_kernel(bf16* q, bf16* k, const int32_t* __restrict__ positions, const float* __restrict__ cos_sin,
                            int64_t max_pos, int64_t tokens, int q_heads, int kv_heads, int head_dim) {
  allow_next_kernel();
  wait_for_previous_kernels();
  const int half = head_dim / 2;
  const int heads = q_heads + kv_heads;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= tokens * heads * half) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % heads);
  const int64_t t = idx / (int64_t{half} * heads);
  const int32_t pos = positions[t];
  if (pos < 0 || pos >= max_pos) return;
  bf16* x = h < q_heads ? q + (t * q_heads + h) * head_dim : k + (t * kv_heads + (h - q_heads)) * head_dim;
  bf16 a, b;
  Rotation{cos_sin, max_pos, half}.apply(x, pos, i, a, b);
  x[i] = a;
  x[i + half] = b;
}

}  // namespace

void rope(bf16* q, bf16* k, const int32_t* positions, const float* cos_sin, int64_t max_pos, int64_t tokens,
          int64_t q_heads, int64_t kv_heads, int64_t head_dim, cudaStream_t stream) {
  const int64_t n = tokens * (q_heads + kv_heads) * (head_dim / 2);
  if (n == 0) return;
  launch_dependent(rope_kernel, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0, stream, q, k, positions,
                   cos_sin, max_pos, tokens, static_cast<int>(q_heads), static_cast<int>(kv_heads),
                   static_cast<int>(head_dim));
}

}  // namespace lserve::cuda
