// The batch the GPU engine tests serve: seven requests of different lengths joining and leaving
// (so the recorded decode shapes change and the sequences' splits grow between replays), every
// other one sampled (temperature, top-p, its own seed), the rest greedy. Each request's tokens.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "engine/engine.h"

namespace lserve::test {

inline std::vector<std::vector<int32_t>> serve_mixed_batch(Engine& engine, int64_t vocab) {
  std::mt19937 rng(5);
  const auto ids = static_cast<uint32_t>(std::min<int64_t>(vocab, 8000));
  std::vector<std::vector<int32_t>> out(7);
  int finished = 0;
  for (int i = 0; i < 7; ++i) {
    RequestParams p;
    for (int k = 0; k < 100 + 130 * i; ++k) p.prompt.push_back(static_cast<int32_t>(rng() % ids));
    p.max_tokens = 20 + 9 * i;
    p.ignore_eos = true;
    if (i % 2) {
      p.sampling.temperature = 0.8f;
      p.sampling.top_p = 0.9f;
      p.sampling.seed = 100 + static_cast<uint64_t>(i);
    }
    engine.submit(p, [&out, &finished, i](RequestOutput&& o) {
      out[static_cast<size_t>(i)].insert(out[static_cast<size_t>(i)].end(), o.tokens.begin(), o.tokens.end());
      finished += o.finished;
    });
  }
  engine.run_until_idle();
  EXPECT_EQ(finished, 7);
  return out;
}

}  // namespace lserve::test
