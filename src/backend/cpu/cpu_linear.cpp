// The CPU linear: which kernel runs, and why (measured with bench/linear_bench, 2 cores, AVX2,
// weights cycled through more memory than the L3 holds, GFLOP/s at K x N = 4096 x 4096):
//
//   rows T   bf16 fixed order   bf16 BLAS path    f32 fixed order   f32 BLAS (sgemv/sgemm)
//   1           754 us             1699 us           1357 us           1394 us
//   8          1837 us             6319 us           2399 us           5405 us
//   64        11953 us            11433 us          12163 us           9376 us
//   512       91945 us (187)      56803 us (302)    83098 us (207)    45741 us (376)
//
// The engine's forward pass mixes decode rows and prefill chunks of other requests in one
// product, so a row's logits must not depend on what it is batched with: OpenBLAS picks its
// blocking and its K split from the shape, and sgemv's rounding differs from sgemm's. The
// fixed-order kernel (fixed_order_linear.h) gives every element one order of operations, and
// it is also the faster kernel where decoding lives (T <= 64: reading bf16 at memory speed, one
// pass over the weights for all rows). It costs 1.6x on large prefill chunks against sgemm on
// widened blocks. So FixedOrder is the default everywhere; LinearKernel::Blas stays for
// benchmarks and for callers that never batch (a future prefill-only path could take it).
#include "backend/cpu/cpu_linear.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/fixed_order_linear.h"
#include "core/error.h"

namespace lserve {

namespace {

void sgemm_nt(int64_t T, int64_t N, int64_t K, const float* x, const float* w, int64_t ldw, float* out, int64_t ldo) {
  if (T == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), 1.0f, w, static_cast<int>(ldw),
                x, 1, 0.0f, out, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(N), static_cast<int>(K),
              1.0f, x, static_cast<int>(K), w, static_cast<int>(ldw), 0.0f, out, static_cast<int>(ldo));
}

// Few rows: each output column reads its weight row once and serves all T rows of x.
void bf16_gemv(int64_t T, int64_t N, int64_t K, const float* x, const uint16_t* w, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const uint16_t* wr = w + n * K;
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * K;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += bf16_to_f32(wr[k]) * xr[k];
      out[t * N + n] = acc;
    }
  }
}

// Many rows: widen a block of weight rows to f32, then sgemm on that block.
void bf16_blocked_gemm(int64_t T, int64_t N, int64_t K, const float* x, const uint16_t* w, float* out) {
  const int64_t block = std::clamp<int64_t>((int64_t{4} << 20) / (K * 4), 16, N);  // ~4 MiB of f32 rows
  // Per calling thread (the model runs one forward at a time per thread); the widening loop's
  // workers write through the pointer, not their own thread_local.
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(block * K));
  float* wide = scratch.data();
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t rows = std::min(block, N - n0);
    const uint16_t* src = w + n0 * K;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows * K; ++i) wide[i] = bf16_to_f32(src[i]);
    sgemm_nt(T, rows, K, x, wide, K, out + n0, N);
  }
}

}  // namespace

void cpu_linear(const Tensor& x, const Tensor& w, Tensor out, LinearKernel kernel) {
  const int64_t T = x.dim(0), K = x.dim(1), N = w.dim(0);
  LSERVE_CHECK(w.dim(1) == K && out.dim(0) == T && out.dim(1) == N && x.dtype == DType::F32 &&
                   out.dtype == DType::F32,
               "linear shapes {} x {}^T -> {}", x.shape.str(), w.shape.str(), out.shape.str());
  if (w.dtype != DType::F32 && w.dtype != DType::BF16)
    fail("linear: weights of dtype {} are not supported on the CPU", dtype_name(w.dtype));
  const bool bf16 = w.dtype == DType::BF16;
  if (kernel == LinearKernel::FixedOrder) {
    if (bf16)
      fixed_order_linear(x.as<float>(), T, K, w.as<uint16_t>(), N, out.as<float>());
    else
      fixed_order_linear(x.as<float>(), T, K, w.as<float>(), N, out.as<float>());
  } else if (!bf16) {
    sgemm_nt(T, N, K, x.as<float>(), w.as<float>(), K, out.as<float>(), N);
  } else if (T <= kBf16GemvMaxRows) {
    bf16_gemv(T, N, K, x.as<float>(), w.as<uint16_t>(), out.as<float>());
  } else {
    bf16_blocked_gemm(T, N, K, x.as<float>(), w.as<uint16_t>(), out.as<float>());
  }
}

}  // namespace lserve
