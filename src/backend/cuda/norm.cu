// RMSNorm kernels: plain, fused with the residual add, and per head (Qwen3's q/k norm).
// One block per row (one warp per row for heads); the sum of squares in f32, the normalized
// value rounded to bf16 once. The vector path moves 16 bytes per access; rows whose length or
// pointers do not allow it take the scalar path (same arithmetic, same results).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/norm_row.cuh"
#include "backend/cuda/vec.cuh"

namespace lserve::cuda {

namespace {

constexpr int kThreads = kNormRowThreads;

template <bool kVec>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const bf16* x, const bf16* __restrict__ w, float eps,
                                                            bf16* out, int cols) {
  __shared__ float scratch[32];
  allow_next_kernel();
  wait_for_previous_kernels();
  const bf16* xr = x + blockIdx.x * int64_t{cols};
  bf16* orow = out + blockIdx.x * int64_t{cols};
  float ss = 0.0f;
  if constexpr (kVec) {
    for (int i = threadIdx.x * 8; i < cols; i += kThreads * 8) {
      float f[8];
      reinterpret_cast<const Bf16x8*>(xr + i)->to_float(f);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += f[j] * f[j];
    }
  } else {
    for (int i = threadIdx.x; i < cols; i += kThreads) {
      const float f = __bfloat162float(xr[i]);
      ss += f * f;
    }
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(cols) + eps);
  // out may alias x: each thread rewrites only the elements it read itself.
  if constexpr (kVec) {
    scale_row8(xr, w, inv, orow, cols);
  } else {
    for (int i = threadIdx.x; i < cols; i += kThreads)
      orow[i] = __float2bfloat16_rn(__bfloat162float(w[i]) * (__bfloat162float(xr[i]) * inv));
  }
}

// residual = bf16(residual + x), as HF adds in the model dtype; the norm reads the rounded sum.
// The vector path is norm_row.cuh's, which the skinny linear's fused norm runs too.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) add_rms_norm_kernel(bf16* __restrict__ residual, const bf16* __restrict__ x,
                                                                const bf16* __restrict__ w, float eps,
                                                                bf16* __restrict__ out, int cols) {
  __shared__ float scratch[32];
  allow_next_kernel();
  wait_for_previous_kernels();
  bf16* rr = residual + blockIdx.x * int64_t{cols};
  const bf16* xr = x + blockIdx.x * int64_t{cols};
  bf16* orow = out + blockIdx.x * int64_t{cols};
  if constexpr (kVec) {
    add_rms_norm_row8(rr, xr, w, eps, orow, cols, scratch);
  } else {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += kThreads) {
      const bf16 s = __float2bfloat16_rn(__bfloat162float(rr[i]) + __bfloat162float(xr[i]));
      rr[i] = s;
      const float f = __bfloat162float(s);
      ss += f * f;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(cols) + eps);
    for (int i = threadIdx.x; i < cols; i += kThreads)
      orow[i] = __float2bfloat16_rn(__bfloat162float(w[i]) * (__bfloat162float(rr[i]) * inv));
  }
}

// One warp per head row; head_dim is small (64..256), so a scalar loop per lane is enough.
__global__ void __launch_bounds__(128) head_rms_norm_kernel(bf16* x, const bf16* __restrict__ w, float eps,
                                                            int64_t rows, int head_dim) {
  allow_next_kernel();
  wait_for_previous_kernels();
  const int64_t row = blockIdx.x * int64_t{4} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  bf16* xr = x + row * head_dim;
  float ss = 0.0f;
  for (int i = lane; i < head_dim; i += 32) {
    const float f = __bfloat162float(xr[i]);
    ss += f * f;
  }
  const float inv = rsqrtf(warp_sum(ss) / static_cast<float>(head_dim) + eps);
  for (int i = lane; i < head_dim; i += 32)
    xr[i] = __float2bfloat16_rn(__bfloat162float(w[i]) * (__bfloat162float(xr[i]) * inv));
}

}  // namespace

void rms_norm(const bf16* x, const bf16* weight, float eps, bf16* out, int64_t rows, int64_t cols,
              cudaStream_t stream) {
  if (rows == 0) return;
  launch_dependent(vec8_ok(cols, x, weight, out) ? rms_norm_kernel<true> : rms_norm_kernel<false>,
                   dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream, x, weight, eps, out,
                   static_cast<int>(cols));
}

void add_rms_norm(bf16* residual, const bf16* x, const bf16* weight, float eps, bf16* out, int64_t rows,
                  int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  launch_dependent(vec8_ok(cols, residual, x, weight, out) ? add_rms_norm_kernel<true> : add_rms_norm_kernel<false>,
                   dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream, residual, x, weight, eps, out,
                   static_cast<int>(cols));
}

void head_rms_norm(bf16* x, const bf16* weight, float eps, int64_t rows, int64_t head_dim, cudaStream_t stream) {
  if (rows == 0) return;
  launch_dependent(head_rms_norm_kernel, dim3(static_cast<unsigned>((rows + 3) / 4)), dim3(128), 0, stream, x, weight,
                   eps, rows, static_cast<int>(head_dim));
}

}  // namespace lserve::cuda
