#include "backend/cpu/cpu_linear.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

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

void cpu_linear(const Tensor& x, const Tensor& w, Tensor out) {
  const int64_t T = x.dim(0), K = x.dim(1), N = w.dim(0);
  LSERVE_CHECK(w.dim(1) == K && out.dim(0) == T && out.dim(1) == N && x.dtype == DType::F32 &&
                   out.dtype == DType::F32,
               "linear shapes {} x {}^T -> {}", x.shape.str(), w.shape.str(), out.shape.str());
  switch (w.dtype) {
    case DType::F32:
      sgemm_nt(T, N, K, x.as<float>(), w.as<float>(), K, out.as<float>(), N);
      return;
    case DType::BF16:
      if (T <= kBf16GemvMaxRows)
        bf16_gemv(T, N, K, x.as<float>(), w.as<uint16_t>(), out.as<float>());
      else
        bf16_blocked_gemm(T, N, K, x.as<float>(), w.as<uint16_t>(), out.as<float>());
      return;
    default:
      fail("linear: weights of dtype {} are not supported on the CPU", dtype_name(w.dtype));
  }
}

}  // namespace lserve
