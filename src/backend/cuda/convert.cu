// Weight conversion to bf16 at load time (f32 and f16 checkpoints). Runs once per weight, so a
// plain grid-stride loop is enough; RNE rounding like the host's f32_to_bf16.
#include <cuda_fp16.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace lserve::cuda {

namespace {

__global__ void f32_to_bf16_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void f16_to_bf16_kernel(const uint16_t* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16_rn(__half2float(__ushort_as_half(src[i])));
}

int grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

void convert_f32_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(src, dst, n);
  LSERVE_CUDA_CHECK_LAUNCH();
}

void convert_f16_to_bf16(const uint16_t* src, bf16* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  f16_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(src, dst, n);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
