// RMSNorm rows done by a whole block. The residual add and norm of one row: the add_rms_norm
// kernel runs it once per block, and the skinny linear's last block runs it for every row of its
// product (skinny_linear.cu), so that both give the same bits; rms_norm shares the scaling. The
// sum of squares is reduced in the order the block's threads give it, so callers must use
// kNormRowThreads threads.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/vec.cuh"

namespace lserve::cuda {

inline constexpr int kNormRowThreads = 256;

// out = weight * (x * inv), 8 values a thread at a time (vector path). out may alias x: each
// thread rewrites only the elements it read itself.
__device__ inline void scale_row8(const __nv_bfloat16* x, const __nv_bfloat16* __restrict__ weight, float inv,
                                  __nv_bfloat16* out, int cols) {
  for (int i = threadIdx.x * 8; i < cols; i += kNormRowThreads * 8) {
    float f[8], g[8];
    reinterpret_cast<const Bf16x8*>(x + i)->to_float(f);
    reinterpret_cast<const Bf16x8*>(weight + i)->to_float(g);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = g[j] * (f[j] * inv);
    *reinterpret_cast<Bf16x8*>(out + i) = Bf16x8::from_float(f);
  }
}

// residual = bf16(residual + x), as HF adds in the model dtype; out = weight * rms_norm of the
// rounded sum. Vector path only: cols % 8 == 0 and every pointer 16-byte aligned (vec8_ok).
// x is read through L2 (.cg): the skinny linear's other blocks wrote it in this same launch.
// `scratch`: 32 floats of shared memory.
__device__ inline void add_rms_norm_row8(__nv_bfloat16* __restrict__ residual, const __nv_bfloat16* __restrict__ x,
                                         const __nv_bfloat16* __restrict__ weight, float eps,
                                         __nv_bfloat16* __restrict__ out, int cols, float* scratch) {
  float ss = 0.0f;
  for (int i = threadIdx.x * 8; i < cols; i += kNormRowThreads * 8) {
    float a[8], b[8];
    reinterpret_cast<const Bf16x8*>(residual + i)->to_float(a);
    const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(x + i));
    reinterpret_cast<const Bf16x8*>(&raw)->to_float(b);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] += b[j];
    const Bf16x8 s = Bf16x8::from_float(a);
    *reinterpret_cast<Bf16x8*>(residual + i) = s;
    s.to_float(a);
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += a[j] * a[j];
  }
  scale_row8(residual, weight, rsqrtf(block_sum(ss, scratch) / static_cast<float>(cols) + eps), out, cols);
}

}  // namespace lserve::cuda
