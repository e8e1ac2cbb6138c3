// The one order of operations behind every output element of the CPU linear (cpu_linear.h), and
// its plain reference. Continuous batching needs a row's result to be bitwise the same whatever
// other rows share the forward pass; that holds when each element is computed by the same
// arithmetic whatever the tile, thread or batch size. Element (t, n) = dot(x[t, :], w[n, :]):
//
//   8 lanes; lane l accumulates k = l, l + 8, l + 16, ... in increasing k, one fused
//   multiply-add each, starting from +0:  acc[l] = fma(x[k], w[k], acc[l])
//   the last group of 8 is padded with x = w = 0 when K is not a multiple of 8
//   then a fixed tree:  ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))
//
// which is what an AVX2 register of 8 f32 does walking K in order, reduced the usual way
// (high half onto low half, then movehl, then the last pair). bf16 weights widen exactly to f32.
// Builds without hardware FMA use a separate multiply and add instead: their results differ from
// an FMA build's, but are just as invariant within the build.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace lserve {

inline constexpr int64_t kDotLanes = 8;

inline float weight_as_f32(float w) { return w; }
inline float weight_as_f32(uint16_t w) { return bf16_to_f32(w); }

inline float lane_multiply_add(float x, float w, float acc) {
#ifdef FP_FAST_FMAF
  return std::fma(x, w, acc);
#else
  return x * w + acc;
#endif
}

inline float reduce_lanes(const float* acc) {
  const float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
  return (s0 + s2) + (s1 + s3);
}

// The reference: dot(x[0 .. K), w[0 .. K)) in the order above. W: float or uint16_t (bf16 bits).
template <typename W>
float fixed_order_dot(const float* x, const W* w, int64_t K) {
  float acc[kDotLanes] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kDotLanes)
    for (int64_t l = 0; l < kDotLanes; ++l) {
      const int64_t k = k0 + l;
      acc[l] = lane_multiply_add(k < K ? x[k] : 0.0f, k < K ? weight_as_f32(w[k]) : 0.0f, acc[l]);
    }
  return reduce_lanes(acc);
}

}  // namespace lserve
