// SplitMix64, the random numbers of the evaluation tasks (docs/eval_tasks.md, "Random numbers"):
// mix64, a generator with next() and below(n), and the per-sample initial state. Everything is
// unsigned 64-bit arithmetic wrapping modulo 2^64, as the specification says.
#pragma once

#include <cstdint>

namespace lserve::eval {

inline constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

constexpr uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class SplitMix64 {
 public:
  explicit constexpr SplitMix64(uint64_t state) : state_(state) {}
  constexpr uint64_t next() {
    state_ += kGolden;
    return mix64(state_);
  }
  // next() % n: the small bias is part of the specification. Precondition: n >= 1.
  constexpr uint64_t below(uint64_t n) { return next() % n; }
  constexpr uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

// The initial state of sample `index` of (task_number, length, depth_permille) under `seed`.
constexpr uint64_t sample_state(uint64_t seed, uint64_t task_number, uint64_t length, uint64_t depth_permille,
                                uint64_t index) {
  uint64_t h = mix64(seed + kGolden);
  h = mix64(h ^ task_number);
  h = mix64(h ^ length);
  h = mix64(h ^ depth_permille);
  h = mix64(h ^ index);
  return h;
}

}  // namespace lserve::eval
