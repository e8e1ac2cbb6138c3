// SwiGLU's gate: out = silu(gate) * up, element-wise in f32, one rounding. 16-byte accesses
// when the buffers allow (they do for every real model: F is a multiple of 8).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/vec.cuh"

namespace lserve::cuda {

namespace {

__device__ inline float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// out may alias gate: each element is read before it is written, by the same thread.
__global__ void silu_mul_vec_kernel(const bf16* gate, const bf16* __restrict__ up, bf16* out, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n8; i += int64_t{gridDim.x} * blockDim.x) {
    float g[8], u[8];
    reinterpret_cast<const Bf16x8*>(gate)[i].to_float(g);
    reinterpret_cast<const Bf16x8*>(up)[i].to_float(u);
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = silu_times(g[j], u[j]);
    reinterpret_cast<Bf16x8*>(out)[i] = Bf16x8::from_float(g);
  }
}

__global__ void silu_mul_kernel(const bf16* gate, const bf16* __restrict__ up, bf16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16_rn(silu_times(__bfloat162float(gate[i]), __bfloat162float(up[i])));
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

void silu_mul(const bf16* gate, const bf16* up, bf16* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (vec8_ok(n, gate, up, out))
    silu_mul_vec_kernel<<<grid_for(n / 8), 256, 0, stream>>>(gate, up, out, n / 8);
  else
    silu_mul_kernel<<<grid_for(n), 256, 0, stream>>>(gate, up, out, n);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
