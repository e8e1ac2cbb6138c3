// The CPU linear as the backend ships it (cpu_linear), both kernels, bf16 and f32 weights:
//   fixed    LinearKernel::FixedOrder, batch-invariant register tiles (fixed_order_linear.h)
//   blas     LinearKernel::Blas: sgemv/sgemm on f32; for bf16 the widening GEMV up to
//            kBf16GemvMaxRows rows and sgemm on widened blocks of weight rows above
// T = 1 is a decode step, 8/32/64 a batch of decodes, 512 a prefill chunk; K x N = 4096 x 4096
// (an 8B model's attention projections) and 768 x 2048 (the ~100M dummy model). Each iteration
// reads the next of several copies of the weights, more than the L3 holds together, so decode is
// timed at memory bandwidth as it runs in a model whose layers do not fit in cache.
//   ./build/bench/linear_bench --benchmark_repetitions=3
// Results and the policy they set: the top of src/backend/cpu/cpu_linear.cpp.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "backend/cpu/cpu_linear.h"
#include "core/dtype.h"

namespace lserve {
namespace {

constexpr size_t kColdBytes = size_t{96} << 20;  // weights cycled through: more than the 32 MiB L3

struct Problem {
  int64_t T, K, N;
  std::vector<float> x, out;
  std::vector<std::vector<float>> w32;
  std::vector<std::vector<uint16_t>> w16;
  Problem(const benchmark::State& s, DType dtype) : T(s.range(0)), K(s.range(1)), N(s.range(2)) {
    std::mt19937 rng(3);
    std::normal_distribution<float> d(0, 0.02f);
    x.resize(static_cast<size_t>(T * K));
    out.resize(static_cast<size_t>(T * N));
    for (auto& v : x) v = d(rng);
    const size_t n = static_cast<size_t>(N * K), bytes = n * dtype_size(dtype);
    const size_t copies = (kColdBytes + bytes - 1) / bytes;
    for (size_t c = 0; c < copies; ++c) {
      if (dtype == DType::BF16) {
        w16.emplace_back(n);
        for (auto& v : w16.back()) v = f32_to_bf16(d(rng));
      } else {
        w32.emplace_back(n);
        for (auto& v : w32.back()) v = d(rng);
      }
    }
  }
  Tensor weights(size_t i) {
    if (!w16.empty()) return Tensor{w16[i % w16.size()].data(), DType::BF16, Shape{N, K}};
    return Tensor{w32[i % w32.size()].data(), DType::F32, Shape{N, K}};
  }
};

void Linear(benchmark::State& state, LinearKernel kernel, DType dtype) {
  Problem p(state, dtype);
  const Tensor x{p.x.data(), DType::F32, Shape{p.T, p.K}};
  const Tensor out{p.out.data(), DType::F32, Shape{p.T, p.N}};
  size_t i = 0;
  for (auto _ : state) {
    cpu_linear(x, p.weights(i++), out, kernel);
    benchmark::DoNotOptimize(p.out.data());
  }
  const double flops = 2.0 * static_cast<double>(p.T * p.K * p.N) * static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t t : {1, 8, 32, 64, 512}) b->Args({t, 4096, 4096});
  for (int64_t t : {1, 512}) b->Args({t, 768, 2048});
  b->ArgNames({"T", "K", "N"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK_CAPTURE(Linear, bf16_fixed, LinearKernel::FixedOrder, DType::BF16)->Apply(Shapes);
BENCHMARK_CAPTURE(Linear, bf16_blas, LinearKernel::Blas, DType::BF16)->Apply(Shapes);
BENCHMARK_CAPTURE(Linear, f32_fixed, LinearKernel::FixedOrder, DType::F32)->Apply(Shapes);
BENCHMARK_CAPTURE(Linear, f32_blas, LinearKernel::Blas, DType::F32)->Apply(Shapes);

}  // namespace
}  // namespace lserve

BENCHMARK_MAIN();
