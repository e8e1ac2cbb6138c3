// Sampler: turns one row of logits into a token, HF-style: repetition penalty, then
// temperature, then top-k / top-p / min-p filtering, then a draw (greedy when temperature is 0).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace lserve {

struct SamplingParams {
  float temperature = 0.0f;        // 0: greedy
  int32_t top_k = 0;               // 0: off
  float top_p = 1.0f;              // 1: off
  float min_p = 0.0f;              // 0: off
  float repetition_penalty = 1.0f; // 1: off; > 1 discourages tokens already in the sequence
  float presence_penalty = 0.0f;   // OpenAI-style, on generated tokens
  float frequency_penalty = 0.0f;  // OpenAI-style, on generated tokens
  uint64_t seed = 0;

  bool greedy() const { return temperature <= 0.0f; }
  // Throws Error on out-of-range values.
  void validate() const;
};

// Whether these parameters can be applied on the device (Backend::sample): all but the
// penalties, which need the sequence's history.
bool device_can_sample(const SamplingParams& params);
// The device row for a request's `counter`-th draw (its number of generated tokens so far).
DeviceSampling device_sampling(const SamplingParams& params, uint64_t counter);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // logits: one row [vocab] (modified in place). context: prompt + generated tokens (for the
  // repetition penalty); generated: the generated ones (for presence/frequency penalties).
  int32_t sample(std::span<float> logits, std::span<const int32_t> context, std::span<const int32_t> generated);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
  std::vector<int32_t> counts_;
};

}  // namespace lserve
