// HeadPattern: the rules that turn per-head scores into streaming/retrieval kinds (ratio over
// the whole model, threshold), lserve's file format and its round trip, DuoAttention's tsv, and
// the errors a bad file gives (file:line and what is wrong).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "core/error.h"
#include "sparse/head_pattern.h"
#include "test_util.h"

namespace lserve {
namespace {

using Scores = std::vector<std::vector<double>>;

std::vector<std::vector<HeadKind>> kinds_of(const HeadPattern& p) {
  std::vector<std::vector<HeadKind>> k(static_cast<size_t>(p.num_layers()));
  for (int64_t l = 0; l < p.num_layers(); ++l)
    for (int64_t h = 0; h < p.num_kv_heads(); ++h) k[static_cast<size_t>(l)].push_back(p.kind(l, h));
  return k;
}

// Runs `f`, expecting an Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  }
}

TEST(HeadPattern, RatioRuleStreamsExactlyThatFractionOfAllHeads) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (auto [layers, heads] : {std::pair{1, 1}, {2, 3}, {4, 8}, {3, 5}}) {
    Scores s(static_cast<size_t>(layers));
    for (auto& row : s)
      for (int h = 0; h < heads; ++h) row.push_back(u(rng));
    for (double ratio : {0.0, 0.1, 0.25, 0.5, 0.75, 1.0}) {
      SCOPED_TRACE(::testing::Message() << layers << "x" << heads << " ratio " << ratio);
      const HeadPattern p = HeadPattern::from_scores(s, HeadRule{ratio, std::nullopt}, "t");
      const auto total = static_cast<double>(layers * heads);
      EXPECT_EQ(p.num_streaming(), std::llround(ratio * total));
      // The streaming heads are the lowest scores: none scores above a retrieval head.
      double max_streaming = -1, min_retrieval = 2;
      for (int l = 0; l < layers; ++l)
        for (int h = 0; h < heads; ++h)
          if (p.kind(l, h) == HeadKind::Streaming)
            max_streaming = std::max(max_streaming, s[l][h]);
          else
            min_retrieval = std::min(min_retrieval, s[l][h]);
      EXPECT_LT(max_streaming, min_retrieval);
    }
  }
}

TEST(HeadPattern, RatioIsGlobalOverLayersNotPerLayer) {
  // Layer 0 scores low everywhere: half of all heads streaming means all of layer 0's.
  const HeadPattern p = HeadPattern::from_scores({{0.1, 0.2, 0.3}, {0.8, 0.9, 0.7}}, HeadRule{0.5, std::nullopt}, "t");
  EXPECT_EQ(p.num_streaming(0), 3);
  EXPECT_EQ(p.num_streaming(1), 0);
  EXPECT_DOUBLE_EQ(p.streaming_fraction(), 0.5);
}

TEST(HeadPattern, RatioTiesGoToTheEarlierLayerThenHead) {
  const Scores equal(2, std::vector<double>(4, 0.5));
  const HeadPattern p = HeadPattern::from_scores(equal, HeadRule{0.75, std::nullopt}, "t");
  const std::vector<std::vector<HeadKind>> want = {
      {HeadKind::Streaming, HeadKind::Streaming, HeadKind::Streaming, HeadKind::Streaming},
      {HeadKind::Streaming, HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Retrieval}};
  EXPECT_EQ(kinds_of(p), want);
  EXPECT_EQ(kinds_of(HeadPattern::from_scores(equal, HeadRule{0.75, std::nullopt}, "t")), want);  // same again
}

TEST(HeadPattern, ThresholdRuleStreamsScoresStrictlyBelowIt) {
  const Scores s = {{0.29, 0.3, 0.31}, {0.0, 1.0, 0.5}};
  const HeadPattern p = HeadPattern::from_scores(s, HeadRule{std::nullopt, 0.3}, "t");
  EXPECT_EQ(kinds_of(p), (std::vector<std::vector<HeadKind>>{{HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Retrieval},
                                                              {HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Retrieval}}));
  // No rule: threshold 0.5 (DuoAttention's default).
  const HeadPattern d = HeadPattern::from_scores(s, HeadRule{}, "t");
  EXPECT_EQ(d.num_streaming(0), 3);
  EXPECT_EQ(d.kind(1, 2), HeadKind::Retrieval);
}

TEST(HeadPattern, ToTextLoadsBackTheSameKinds) {
  test::TempDir dir;
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Scores random(3, std::vector<double>(5));
  for (auto& row : random)
    for (auto& x : row) x = u(rng);
  // Scores a hair from the threshold, and two that differ only in the 7th decimal (their order
  // decides which one a ratio rule streams).
  const Scores close = {{0.4999996, 0.5000004, 0.1234564, 0.1234561}, {0.9, 0.9, 1.0, 0.0}};
  struct Case {
    const char* name;
    Scores scores;
    HeadRule rule;
  };
  const std::vector<Case> cases = {{"random, ratio", random, {0.4, std::nullopt}},
                                   {"random, threshold", random, {std::nullopt, 0.37}},
                                   {"close to the threshold", close, {std::nullopt, 0.5}},
                                   {"near-tie under a ratio", close, {0.25, std::nullopt}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const HeadPattern p = HeadPattern::from_scores(c.scores, c.rule, "t");
    const HeadPattern back = HeadPattern::load(dir.write("pattern.txt", p.to_text()));
    EXPECT_EQ(kinds_of(back), kinds_of(p)) << p.to_text();
    EXPECT_EQ(back.to_text(), p.to_text());
  }
}

TEST(HeadPattern, LoadsLserveFormatWithCommentsAndRule) {
  test::TempDir dir;
  const auto path = dir.write("p.txt",
                              "# profile of a 2-layer model\n"
                              "\n"
                              "streaming_ratio 0.5   # half of the heads\n"
                              "0.9 0.1 0.5 0.3\n"
                              "  0.2 0.8 0.7 0.05  # layer 1\n");
  const HeadPattern p = HeadPattern::load(path);
  EXPECT_EQ(p.num_layers(), 2);
  EXPECT_EQ(p.num_kv_heads(), 4);
  EXPECT_EQ(p.source(), path.string());
  // Lowest four: 0.05 (1,3), 0.1 (0,1), 0.2 (1,0), 0.3 (0,3).
  EXPECT_EQ(kinds_of(p), (std::vector<std::vector<HeadKind>>{
                             {HeadKind::Retrieval, HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Streaming},
                             {HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Retrieval, HeadKind::Streaming}}));
  // A rule from the command line replaces the file's.
  const HeadPattern t = HeadPattern::load(path, HeadRule{std::nullopt, 0.15});
  EXPECT_EQ(t.num_streaming(), 2);  // 0.1 and 0.05
}

TEST(HeadPattern, ReadsDuoAttentionTsv) {
  test::TempDir dir;
  // Rows are layers, tab-separated; published gates stray slightly outside [0, 1].
  const auto path = dir.write("full_attention_heads.tsv",
                              "1.0004\t-0.0003\t0.62\n"
                              "0.12\t0.97\t-0.02\n"
                              "0.5\t0.49\t1\n");
  const HeadPattern p = HeadPattern::load(path);
  EXPECT_EQ(p.num_layers(), 3);
  EXPECT_EQ(p.num_kv_heads(), 3);
  EXPECT_EQ(kinds_of(p), (std::vector<std::vector<HeadKind>>{{HeadKind::Retrieval, HeadKind::Streaming, HeadKind::Retrieval},
                                                              {HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Streaming},
                                                              {HeadKind::Retrieval, HeadKind::Streaming, HeadKind::Retrieval}}));
  // Clipped to [0, 1]: written back in lserve's (strict) format, it loads again.
  const HeadPattern back = HeadPattern::load(dir.write("back.txt", p.to_text()));
  EXPECT_EQ(kinds_of(back), kinds_of(p));
  // The clipped -0.0003 and -0.02 tie at 0 with the ratio rule: earlier layer first.
  const HeadPattern r = HeadPattern::load(path, HeadRule{1.0 / 9.0, std::nullopt});
  EXPECT_EQ(r.num_streaming(), 1);
  EXPECT_EQ(r.kind(0, 1), HeadKind::Streaming);
}

TEST(HeadPattern, BadFilesNameFileAndLine) {
  test::TempDir dir;
  struct Case {
    const char* name;
    const char* file;
    std::string text;
    std::vector<std::string> message;  // parts the error must contain (after the path)
  };
  const std::vector<Case> cases = {
      {"not a number", "a.txt", "0.5 0.5\n0.5 abc\n", {":2:", "'abc' is not a number"}},
      {"comma-separated", "b.txt", "# c\n0.5,0.5\n", {":2:", "not a number"}},
      {"nan", "c.txt", "0.5 nan\n", {":1:", "not a number"}},
      {"above 1 (strict)", "d.txt", "0.5 0.5\n\n0.5 1.2\n", {":3:", "outside [0, 1]"}},
      {"below 0 (strict)", "e.txt", "-0.001 0.5\n", {":1:", "outside [0, 1]"}},
      {"far outside (tsv)", "f.tsv", "0.5\t1.2\n", {":1:", "outside [0, 1]"}},
      {"ragged rows", "g.txt", "0.5 0.5 0.5\n# ok\n0.5 0.5\n", {":3:", "2 scores", "3"}},
      {"ragged tsv", "h.tsv", "0.5\t0.5\n0.5\t0.5\t0.5\n", {":2:"}},
      {"rule without value", "i.txt", "threshold\n0.5\n", {":1:", "'threshold' needs one number"}},
      {"two rules", "j.txt", "threshold 0.3\nstreaming_ratio 0.5\n0.5\n", {":2:", "rule"}},
      {"no rows", "k.txt", "# nothing\n", {"no layers"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto path = dir.write(c.file, c.text);
    std::vector<std::string> parts = c.message;
    parts.push_back(path.string());
    expect_error([&] { HeadPattern::load(path); }, parts);
  }
  expect_error([&] { HeadPattern::load(dir.path() / "missing.txt"); }, {"missing.txt", "cannot open"});
  expect_error([&] { HeadPattern::from_scores({{0.5}}, HeadRule{1.5, std::nullopt}, "src"); }, {"src", "1.5"});
}

TEST(HeadPattern, ValidateNamesBothShapes) {
  const HeadPattern p = HeadPattern::from_scores({{0.1, 0.9}, {0.9, 0.1}, {0.5, 0.5}}, HeadRule{}, "prof.txt");
  EXPECT_NO_THROW(p.validate(3, 2));
  expect_error([&] { p.validate(3, 4); }, {"prof.txt", "3 layers x 2 KV heads", "3 x 4"});
  expect_error([&] { p.validate(2, 2); }, {"prof.txt", "2 x 2"});
}

TEST(HeadPattern, UniformSpreadsTheRatioEvenlyOverLayers) {
  for (auto [layers, heads] : {std::pair{4, 8}, {3, 5}, {2, 1}, {1, 4}}) {
    for (double ratio : {0.0, 0.25, 0.4, 0.5, 1.0}) {
      SCOPED_TRACE(::testing::Message() << layers << "x" << heads << " ratio " << ratio);
      const HeadPattern p = HeadPattern::uniform(layers, heads, ratio);
      p.validate(layers, heads);
      const int64_t total = std::llround(ratio * layers * heads);
      EXPECT_EQ(p.num_streaming(), total);
      for (int l = 0; l < layers; ++l) {  // floor or ceil of the mean per layer
        EXPECT_GE(p.num_streaming(l), total / layers);
        EXPECT_LE(p.num_streaming(l), (total + layers - 1) / layers);
      }
      EXPECT_EQ(kinds_of(HeadPattern::uniform(layers, heads, ratio)), kinds_of(p));  // deterministic
    }
  }
  EXPECT_THROW(HeadPattern::uniform(2, 2, 1.5), Error);
  EXPECT_THROW(HeadPattern::uniform(2, 2, -0.1), Error);
}

TEST(HeadPattern, AllRetrievalHasNoStreamingHeads) {
  const HeadPattern p = HeadPattern::all_retrieval(3, 4);
  EXPECT_EQ(p.num_layers(), 3);
  EXPECT_EQ(p.num_kv_heads(), 4);
  EXPECT_EQ(p.num_streaming(), 0);
  EXPECT_DOUBLE_EQ(p.streaming_fraction(), 0.0);
}

}  // namespace
}  // namespace lserve
