#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace lserve {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || temperature > 100.0f) fail("temperature must be in [0, 100], got {}", temperature);
  if (top_k < 0) fail("top_k must be >= 0, got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0.0f)) fail("repetition_penalty must be > 0, got {}", repetition_penalty);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) fail("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) fail("frequency_penalty must be in [-2, 2]");
}

bool device_can_sample(const SamplingParams& params) {
  return params.repetition_penalty == 1.0f && params.presence_penalty == 0.0f && params.frequency_penalty == 0.0f;
}

DeviceSampling device_sampling(const SamplingParams& params, uint64_t counter) {
  DeviceSampling d;
  d.temperature = params.greedy() ? 0.0f : params.temperature;
  d.top_k = params.top_k;
  d.top_p = params.top_p;
  d.min_p = params.min_p;
  d.seed = params.seed;
  d.counter = counter;
  return d;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> context,
                        std::span<const int32_t> generated) {
  const auto V = static_cast<int32_t>(logits.size());
  // Repetition penalty (HF): each distinct token seen once, positive logits divided, negative multiplied.
  if (params_.repetition_penalty != 1.0f) {
    counts_.assign(static_cast<size_t>(V), 0);
    for (int32_t t : context) {
      if (t < 0 || t >= V || counts_[static_cast<size_t>(t)]++) continue;
      float& l = logits[static_cast<size_t>(t)];
      l = l > 0 ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    counts_.assign(static_cast<size_t>(V), 0);
    for (int32_t t : generated)
      if (t >= 0 && t < V) ++counts_[static_cast<size_t>(t)];
    for (int32_t t = 0; t < V; ++t) {
      const int32_t c = counts_[static_cast<size_t>(t)];
      if (c) logits[static_cast<size_t>(t)] -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(c);
    }
  }
  if (params_.greedy()) {
    // Ties go to the lowest id, as torch.argmax does.
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }

  candidates_.clear();
  candidates_.reserve(static_cast<size_t>(V));
  for (int32_t t = 0; t < V; ++t) candidates_.emplace_back(logits[static_cast<size_t>(t)] / params_.temperature, t);
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep), candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  // Softmax over the survivors (max first, so exp never overflows).
  const float mx = candidates_.front().first;
  double total = 0;
  for (auto& [l, _] : candidates_) total += (l = std::exp(l - mx));
  for (auto& [p, _] : candidates_) p = static_cast<float>(p / total);
  // min-p: drop tokens under min_p times the best probability.
  if (params_.min_p > 0.0f) {
    const float floor = params_.min_p * candidates_.front().first;
    size_t n = 1;
    while (n < candidates_.size() && candidates_[n].first >= floor) ++n;
    candidates_.resize(n);
  }
  // top-p: the smallest prefix whose mass reaches top_p.
  if (params_.top_p < 1.0f) {
    double mass = 0;
    size_t n = 0;
    while (n < candidates_.size()) {
      mass += candidates_[n++].first;
      if (mass >= params_.top_p) break;
    }
    candidates_.resize(n);
  }
  double sum = 0;
  for (const auto& [p, _] : candidates_) sum += p;
  std::uniform_real_distribution<double> uniform(0.0, sum);
  double u = uniform(rng_);
  for (const auto& [p, t] : candidates_) {
    if ((u -= p) <= 0) return t;
  }
  return candidates_.back().second;
}

}  // namespace lserve
