// Matrix products of the CPU backend: out[T, N] = x[T, K] @ w[N, K]^T, with w in f32 or bf16.
//
// Measured with bench/linear_bench (2 cores, AVX2): for a decode step (T = 1) on a weight
// larger than the caches, reading bf16 and widening in registers is 2.0x faster than sgemv on
// f32 (half the bytes; 1.25 ms vs 2.45 ms at 4096 x 4096); for a prefill chunk (T = 512)
// OpenBLAS sgemm is 2.6-3.5x faster than any plain loop. So bf16 weights stay bf16 (used in
// place from the mapped file), small T runs the widening GEMV, and large T widens blocks of
// weight rows into a scratch buffer and hands them to sgemm (the widening is O(N K) against
// sgemm's O(T N K), under 1% at T = 512).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace lserve {

// out = x @ w^T.  x: [T, K] f32; w: [N, K] f32 or bf16; out: [T, N] f32.
void cpu_linear(const Tensor& x, const Tensor& w, Tensor out);

// Rows of T at or below this use the widening GEMV for bf16 weights.
inline constexpr int64_t kBf16GemvMaxRows = 8;

}  // namespace lserve
