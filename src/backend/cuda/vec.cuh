// Helpers shared by the row and element-wise kernels: 16-byte vectors of 8 bf16 with f32
// conversion, an alignment test that picks the vector or scalar path, and block reductions.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace lserve::cuda {

// 8 bf16 = 16 bytes: one LDG.128 / STG.128.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];

  __device__ void to_float(float (&f)[8]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
  __device__ static Bf16x8 from_float(const float (&f)[8]) {
    Bf16x8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
  }
};

// True when every pointer is 16-byte aligned and n is a multiple of 8: the vector path applies.
template <typename... Ptrs>
inline bool vec8_ok(int64_t n, const Ptrs*... ptrs) {
  return n % 8 == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % 16 == 0) && ...);
}

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `scratch` holds 32 floats of shared memory; the call ends with the block synchronized.
__device__ inline float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();  // scratch may be reused right after
  return total;
}

}  // namespace lserve::cuda
