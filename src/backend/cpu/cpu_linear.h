// Matrix products of the CPU backend: out[T, N] = x[T, K] @ w[N, K]^T, with w in f32 or bf16.
// (Policy and measurements: cpu_linear.cpp, at the top.)
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace lserve {

enum class LinearKernel {
  // fixed_order_linear.h: a row's result is bitwise independent of the other rows in the batch.
  FixedOrder,
  // OpenBLAS: sgemv / sgemm on f32 weights; for bf16, a widening GEMV for few rows and sgemm on
  // widened blocks of weight rows above. A row's rounding depends on how many rows come with it.
  Blas,
};

// out = x @ w^T.  x: [T, K] f32; w: [N, K] f32 or bf16; out: [T, N] f32.
void cpu_linear(const Tensor& x, const Tensor& w, Tensor out, LinearKernel kernel = LinearKernel::FixedOrder);

// LinearKernel::Blas: rows of T at or below this use the widening GEMV for bf16 weights.
inline constexpr int64_t kBf16GemvMaxRows = 8;

}  // namespace lserve
