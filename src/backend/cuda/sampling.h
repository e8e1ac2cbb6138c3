// Sampling on the GPU: one token per row of logits, so a decode step sends back token ids (4
// bytes a sequence) instead of logits (4 x vocab bytes) and the host never sorts a vocabulary.
//
// Semantics follow the host Sampler (engine/sampler.h) without its penalties: temperature, then
// top-k, then the softmax over the survivors, min-p against the best of them, top-p as the
// smallest most-probable prefix reaching the mass, then a draw in proportion. Every filter is
// a threshold on the probability, found by radix selection over the float bits instead of a
// sort; ties at a threshold are all kept (the host keeps the lower ids). Masses are summed in
// 40-bit fixed point, so sums do not depend on the order of additions and a row's draw is the
// same on every run. The draw is Philox (cuRAND) keyed by (seed, counter).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lserve::cuda {

// One row's parameters; the same layout as lserve::DeviceSampling (backend/backend.h).
struct SamplingRow {
  float temperature;  // <= 0: greedy
  int32_t top_k;      // 0 or >= vocab: off
  float top_p;        // >= 1: off
  float min_p;        // <= 0: off
  uint64_t seed;
  uint64_t counter;
};

// tokens[r] = a draw from logits row r ([rows, vocab] f32) under params[r]; all device memory.
// NaN logits count as -inf; a row whose logits are all -inf or NaN gives token 0.
void sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingRow* params, int32_t* tokens,
                 cudaStream_t stream);

// The uniform in (0, 1] that row r's draw uses (tests rebuild each draw on the host from it).
void sampling_uniforms(const SamplingRow* params, int64_t rows, double* out, cudaStream_t stream);

// Fixed-point scale of the masses: a probability relative to the best token, e in (0, 1], counts
// as floor(e * 2^40); sums of a vocabulary below 2^24 entries fit 64 bits.
inline constexpr int kSamplingMassBits = 40;

}  // namespace lserve::cuda
