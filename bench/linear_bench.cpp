// Why the CPU backend converts bf16 weights to f32 once at load: this measures the
// alternatives on the linear layers of the ~100M dummy model (K = 768, N = 2048) and a
// Llama-3-8B MLP (K = 4096, N = 14336 is too large here; N = 4096 stands in):
//   F32Gemm       OpenBLAS sgemm/sgemv on weights converted once (what we ship)
//   Bf16OnTheFly  a plain OpenMP kernel reading bf16 weights and widening them in registers
// T = 1 is a decode step (memory bound: bf16 reads half the bytes), T = 512 a prefill chunk
// (compute bound: sgemm's blocking wins).   ./build/bench/linear_bench
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <random>
#include <vector>

#include "core/dtype.h"

namespace lserve {
namespace {

struct Problem {
  int64_t T, K, N;
  std::vector<float> x, w32, out;
  std::vector<uint16_t> w16;
  explicit Problem(const benchmark::State& s) : T(s.range(0)), K(s.range(1)), N(s.range(2)) {
    std::mt19937 rng(3);
    std::normal_distribution<float> d(0, 0.02f);
    x.resize(static_cast<size_t>(T * K));
    w32.resize(static_cast<size_t>(N * K));
    w16.resize(w32.size());
    out.resize(static_cast<size_t>(T * N));
    for (auto& v : x) v = d(rng);
    for (size_t i = 0; i < w32.size(); ++i) w32[i] = bf16_to_f32(w16[i] = f32_to_bf16(d(rng)));
  }
};

void F32Gemm(benchmark::State& state) {
  Problem p(state);
  for (auto _ : state) {
    if (p.T == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(p.N), static_cast<int>(p.K), 1, p.w32.data(),
                  static_cast<int>(p.K), p.x.data(), 1, 0, p.out.data(), 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(p.T), static_cast<int>(p.N),
                  static_cast<int>(p.K), 1, p.x.data(), static_cast<int>(p.K), p.w32.data(), static_cast<int>(p.K), 0,
                  p.out.data(), static_cast<int>(p.N));
    benchmark::DoNotOptimize(p.out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(p.T * p.K * p.N) * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

void Bf16OnTheFly(benchmark::State& state) {
  Problem p(state);
  for (auto _ : state) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < p.N; ++n) {
      const uint16_t* w = p.w16.data() + n * p.K;
      for (int64_t t = 0; t < p.T; ++t) {
        const float* x = p.x.data() + t * p.K;
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < p.K; ++k) acc += bf16_to_f32(w[k]) * x[k];
        p.out[static_cast<size_t>(t * p.N + n)] = acc;
      }
    }
    benchmark::DoNotOptimize(p.out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(p.T * p.K * p.N) * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t t : {1, 512}) {
    b->Args({t, 768, 2048});
    b->Args({t, 4096, 4096});
  }
  b->ArgNames({"T", "K", "N"})->Unit(benchmark::kMicrosecond);
}
BENCHMARK(F32Gemm)->Apply(Shapes);
BENCHMARK(Bf16OnTheFly)->Apply(Shapes);

}  // namespace
}  // namespace lserve

BENCHMARK_MAIN();
