// Linear layers through cuBLASLt: out[T, N] = x[T, K] @ w[N, K]^T (+ bias[N]), bf16 operands, f32
// accumulation, bf16 or f32 output (f32 for the logits). One matmul plan (descriptors plus the
// heuristic's algorithm) is cached per shape, dtype and pointer alignment, so a decode step
// repeats no heuristic query.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/cuda_memory.h"

namespace lserve::cuda {

class CublasLtLinear {
 public:
  explicit CublasLtLinear(cudaStream_t stream);
  ~CublasLtLinear();
  CublasLtLinear(const CublasLtLinear&) = delete;
  CublasLtLinear& operator=(const CublasLtLinear&) = delete;

  // bias may be null; with a bias the output must be bf16.
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, void* out, bool out_f32,
           int64_t T, int64_t N, int64_t K);

 private:
  struct Plan;
  // (T, N, K, bias, out_f32, alignment of x, w, out, bias in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int, int, int>;
  Plan& plan_for(const Key& key);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  std::unique_ptr<CudaMemory> workspace_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace lserve::cuda
