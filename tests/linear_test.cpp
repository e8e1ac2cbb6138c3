// CPU matrix products against a plain double-precision reference: f32 and bf16 weights, the
// GEMV path (few rows) and the blocked path (many rows), shapes that do not divide the blocks.
#include <gtest/gtest.h>

#include <random>

#include "backend/cpu/cpu_linear.h"
#include "test_util.h"

namespace lserve {
namespace {

void check(int64_t T, int64_t K, int64_t N, DType wtype, uint32_t seed) {
  std::mt19937 rng(seed);
  auto x = test::random_floats(static_cast<size_t>(T * K), rng);
  auto wf = test::random_floats(static_cast<size_t>(N * K), rng, 0.05f);
  std::vector<uint16_t> wb(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = bf16_to_f32(wb[i] = f32_to_bf16(wf[i]));  // same values
  std::vector<float> out(static_cast<size_t>(T * N), std::nanf(""));
  Tensor xt{x.data(), DType::F32, Shape{T, K}};
  Tensor wt = wtype == DType::F32 ? Tensor{wf.data(), DType::F32, Shape{N, K}}
                                  : Tensor{wb.data(), DType::BF16, Shape{N, K}};
  cpu_linear(xt, wt, Tensor{out.data(), DType::F32, Shape{T, N}});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        ref += static_cast<double>(x[static_cast<size_t>(t * K + k)]) * wf[static_cast<size_t>(n * K + k)];
        mag += std::abs(static_cast<double>(x[static_cast<size_t>(t * K + k)]) * wf[static_cast<size_t>(n * K + k)]);
      }
      ASSERT_NEAR(out[static_cast<size_t>(t * N + n)], ref, 1e-5 * mag + 1e-6) << "t " << t << " n " << n;
    }
}

TEST(CpuLinear, MatchesReference) {
  uint32_t seed = 1;
  for (DType d : {DType::F32, DType::BF16})
    for (auto [T, K, N] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 33}, {3, 100, 7}, {kBf16GemvMaxRows, 32, 50},
                           {kBf16GemvMaxRows + 1, 48, 70}, {37, 2048, 700}})
      check(T, K, N, d, seed++);
}

TEST(CpuLinear, RejectsUnsupportedWeights) {
  std::vector<uint16_t> w(4);
  std::vector<float> x(2), out(2);
  EXPECT_THROW(cpu_linear(Tensor{x.data(), DType::F32, Shape{1, 2}}, Tensor{w.data(), DType::F16, Shape{2, 2}},
                          Tensor{out.data(), DType::F32, Shape{1, 2}}),
               Error);
}

}  // namespace
}  // namespace lserve
