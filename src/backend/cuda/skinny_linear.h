// Linear layers of decode-sized batches (at most kSkinnyMaxTokens rows of x) on our own kernel,
// beside cuBLASLt (cuda_linear.h, the reference the tests compare with). At one to eight rows a
// linear layer is a pass over its weights: cuBLASLt's split-K kernels reach 1.4-3.8 TB/s on
// Llama-3-8B's shapes and add a reduction launch each. This kernel streams every weight once,
// with no reduction pass, and runs several linears that read the same x in one launch: q, k and
// v, or SwiGLU's gate and up with silu(gate) * up as its epilogue.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace lserve::cuda {

inline constexpr int kSkinnyMaxTokens = 8;
// Where the backend uses the kernel (bench/cuda/linear_timing on an H200): q/k/v in one launch
// beat cuBLASLt's three at every row count up to 8 (2.4x at one row, 1.2x at eight); a single
// linear or gate/up only up to two rows (1.1-1.3x; even at four rows and slower at eight, as
// measured before the weight loads were pipelined).
inline constexpr int kSkinnyGroupMaxTokens = 8;
inline constexpr int kSkinnySingleMaxTokens = 2;
inline constexpr int kSkinnyMaxTargets = 3;
// Where the backend ends a single linear with the residual add and norm after it
// (skinny_linear_add_rms_norm; bench/cuda/linear_timing on an H200): at one row o_proj's 14.7 us
// (linear, then add_rms_norm) became 14.2 and down_proj's 34.2 became 33.6; in the run before,
// with two rows fused too, the last block's two norms in turn made them slower (15.3 -> 16.1,
// 34.9 -> 35.8 us).
inline constexpr int kSkinnyFusedNormMaxTokens = 1;

// One linear of a launch: out[M, rows] = x[M, K] @ weight[rows, K]^T (+ bias[rows]).
struct SkinnyTarget {
  const __nv_bfloat16* weight = nullptr;
  const __nv_bfloat16* bias = nullptr;  // or null
  __nv_bfloat16* out = nullptr;
  int64_t rows = 0;
};

// Whether the kernel takes these shapes: 1..kSkinnyMaxTokens rows, K a multiple of 8 with x
// small enough for shared memory, 16-byte aligned x and weights, an even number of rows per
// target. Anything else goes to cuBLASLt.
bool skinny_linear_supports(int64_t tokens, int64_t K, const __nv_bfloat16* x, const SkinnyTarget* targets,
                            int num_targets);

// Every target's out = x @ weight^T (+ bias), in one launch. False, launching nothing, where
// skinny_linear_supports says no (the caller then runs cuBLASLt).
[[nodiscard]] bool skinny_linear(const __nv_bfloat16* x, int64_t tokens, int64_t K, const SkinnyTarget* targets, int num_targets,
                   cudaStream_t stream);

// out[M, rows] = silu(x @ gate^T) * (x @ up^T), gate and up each rounded to bf16 before the
// product, as the unfused linear + silu_mul path rounds them. out must not alias x. False, as
// above, for shapes the kernel does not take.
[[nodiscard]] bool skinny_gated_linear(const __nv_bfloat16* x, int64_t tokens, int64_t K, const __nv_bfloat16* gate,
                         const __nv_bfloat16* up, int64_t rows, __nv_bfloat16* out, cudaStream_t stream);

// out[M, rows] = x @ weight^T, then residual += out and normed = rms_norm(residual) * norm_weight
// (residual, normed: [M, rows]) in the same launch: its last block runs add_rms_norm's row (the
// same bits as the separate kernel). `arrivals`: one u32 of device memory, zero, that the
// stream's fused launches share (it is zero again after each). False, launching nothing, for
// shapes the kernel does not take, or where the norm's vector path does not apply (rows not a
// multiple of 8, a pointer not 16-byte aligned).
[[nodiscard]] bool skinny_linear_add_rms_norm(const __nv_bfloat16* x, int64_t tokens, int64_t K,
                                              const __nv_bfloat16* weight, int64_t rows, __nv_bfloat16* out,
                                              __nv_bfloat16* residual, const __nv_bfloat16* norm_weight, float eps,
                                              __nv_bfloat16* normed, uint32_t* arrivals, cudaStream_t stream);

}  // namespace lserve::cuda
