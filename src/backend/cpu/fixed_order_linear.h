// The batch-invariant matrix product of the CPU backend: out[T, N] = x[T, K] @ w[N, K]^T where
// every element follows fixed_order_dot.h exactly, so a row's output is bitwise the same whether
// it is computed alone, among any other rows, or at any place in the batch. Register tiles of
// rows x columns walk all of K in order (never split, by a tile or by a thread); threads split
// the columns. cpu_linear.h has the measurements against OpenBLAS.
#pragma once

#include <cstdint>

namespace lserve {

// x: [T, K] f32, w: [N, K] f32 or bf16 bits (HF's nn.Linear layout), out: [T, N] f32; all
// row-major and contiguous.
void fixed_order_linear(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* out);
void fixed_order_linear(const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t N, float* out);

}  // namespace lserve
