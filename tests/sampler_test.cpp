// Sampling: greedy, filters (top-k, top-p, min-p), penalties, seeds.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "engine/sampler.h"

namespace lserve {
namespace {

TEST(Sampler, GreedyTakesTheArgmaxLowestIdOnTies) {
  Sampler s({});
  std::vector<float> l = {0.1f, 3.0f, 3.0f, -1.0f};
  EXPECT_EQ(s.sample(l, {}, {}), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;
  Sampler s(p);
  for (int i = 0; i < 20; ++i) {
    std::vector<float> l = {0.0f, 0.5f, 2.0f, 1.9f};
    EXPECT_EQ(s.sample(l, {}, {}), 2);
  }
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;  // probabilities ~0.64, 0.24, 0.09, 0.03: only token 0 survives
  Sampler s(p);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = {3.0f, 2.0f, 1.0f, 0.0f};
    EXPECT_EQ(s.sample(l, {}, {}), 0);
  }
  SamplingParams m;
  m.temperature = 1.0f;
  m.min_p = 0.3f;  // keeps tokens with p >= 0.3 * 0.64: tokens 0 and 1
  Sampler sm(m);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = {3.0f, 2.0f, 1.0f, 0.0f};
    ++seen[sm.sample(l, {}, {})];
  }
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], seen[1]);
}

TEST(Sampler, SameSeedSameDraws) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  for (int i = 0; i < 30; ++i) {
    std::vector<float> l1(50), l2(50);
    for (int j = 0; j < 50; ++j) l1[static_cast<size_t>(j)] = l2[static_cast<size_t>(j)] = static_cast<float>(j % 7);
    EXPECT_EQ(a.sample(l1, {}, {}), b.sample(l2, {}, {}));
  }
}

TEST(Sampler, RepetitionPenaltyDemotesSeenTokens) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> l = {2.0f, 1.5f};
  const std::vector<int32_t> ctx = {0, 0};
  EXPECT_EQ(s.sample(l, ctx, {}), 1);  // 2.0 / 2 = 1.0 < 1.5
  EXPECT_FLOAT_EQ(l[0], 1.0f);         // penalized once, not per occurrence
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = {};
  p.temperature = -1.0f;
  EXPECT_THROW(Sampler{p}, Error);
}

}  // namespace
}  // namespace lserve
