// The page selector against exhaustive recomputation: Quest scores from the keys themselves
// (partial last pages, logical pages not yet filled, max-pooling onto physical pages), the
// softmax-mass estimate, and page picking by brute-force ranking, for fixed budgets and PSA.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "sparse/page_selector.h"
#include "sparse_reference.h"
#include "test_util.h"

namespace lserve {
namespace {

// One KV head's keys for a sequence, stored in a pool the way the KV cache lays out its key
// summaries: [pool pages, pool heads, logical pages per page, D], the sequence's pages scattered.
// Summary rows the sequence has not filled, and the pool's other heads, hold a poison that
// scores higher than any real page, so reading one shows.
struct SummaryPool {
  static constexpr float kPoison = 1e30f;
  int64_t P, LP, D, pool_heads, head;
  std::vector<float> keys;    // [num_tokens, D], by position
  std::vector<int32_t> pages;  // physical page of each sequence page
  std::vector<float> kmin, kmax;

  SummaryPool(int64_t page, int64_t logical, int64_t dim, int64_t num_tokens, std::mt19937& rng)
      : P(page), LP(logical), D(dim), pool_heads(3), head(1) {
    keys = test::random_floats(static_cast<size_t>(num_tokens * D), rng);
    const int64_t num_pages = (num_tokens + P - 1) / P, pool_pages = num_pages + 3;
    std::vector<int32_t> ids(static_cast<size_t>(pool_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    pages.assign(ids.begin(), ids.begin() + num_pages);
    const size_t rows = static_cast<size_t>(pool_pages * pool_heads * (P / LP));
    kmin.assign(rows * static_cast<size_t>(D), -kPoison);
    kmax.assign(rows * static_cast<size_t>(D), kPoison);
    for (int64_t pos = 0; pos < num_tokens; ++pos) {  // fold each key into its logical page's row
      const size_t row = static_cast<size_t>((pages[static_cast<size_t>(pos / P)] * pool_heads + head) * (P / LP) + pos % P / LP);
      for (int64_t c = 0; c < D; ++c) {
        float& lo = kmin[row * static_cast<size_t>(D) + static_cast<size_t>(c)];
        float& hi = kmax[row * static_cast<size_t>(D) + static_cast<size_t>(c)];
        const float k = keys[static_cast<size_t>(pos * D + c)];
        lo = pos % LP == 0 ? k : std::min(lo, k);
        hi = pos % LP == 0 ? k : std::max(hi, k);
      }
    }
  }
  int64_t num_tokens() const { return static_cast<int64_t>(keys.size()) / D; }
  test::RowAt key_at() const {
    return [this](int64_t pos) { return keys.data() + pos * D; };
  }
  SelectorInputs inputs(const float* q, int64_t heads, float scale) const {
    return {q, heads, D, kmin.data(), kmax.data(), pool_heads, head, pages, num_tokens(), P, LP, scale};
  }
};

TEST(PageSelector, ScoresEqualTheExhaustiveUpperBoundFromTheKeys) {
  struct Case {
    int64_t page, logical, tokens, heads, dim;
  };
  const std::vector<Case> cases = {
      {64, 16, 200, 4, 16},  // last page: 8 tokens, one partial logical page, three unfilled
      {32, 8, 96, 1, 32},    // whole pages
      {16, 16, 37, 2, 8},    // logical page = physical page
      {64, 4, 1, 3, 16},     // a single token
      {32, 4, 70, 2, 16},    // partial logical page inside a partial page
  };
  std::mt19937 rng(5);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "page " << c.page << "/" << c.logical << ", " << c.tokens << " tokens, "
                                      << c.heads << " heads, d " << c.dim);
    const SummaryPool pool(c.page, c.logical, c.dim, c.tokens, rng);
    const auto q = test::random_floats(static_cast<size_t>(c.heads * c.dim), rng);
    const auto got = score_pages(pool.inputs(q.data(), c.heads, 0.25f));
    const auto want = test::exhaustive_page_scores(q.data(), c.heads, c.dim, pool.key_at(), c.tokens, c.page, c.logical);
    ASSERT_EQ(got.size(), want.size());
    for (size_t h = 0; h < got.size(); ++h) EXPECT_EQ(got[h], want[h]) << "head " << h;  // same formula: bit-exact
  }
}

TEST(PageSelector, PageScoreIsItsBestLogicalPagesBound) {
  // D = 2, q = (1, -1). One physical page of two logical pages:
  //   logical 0: keys (0, 0), (1, 1)     -> kmin (0, 0),  kmax (1, 1)  -> 1 + 0    = 1
  //   logical 1: keys (0.5, -3), (-2, 0) -> kmin (-2, -3), kmax (0.5, 0) -> 0.5 + 3 = 3.5
  const std::vector<float> kmin = {0, 0, -2, -3}, kmax = {1, 1, 0.5f, 0};
  const std::vector<float> q = {1, -1};
  const std::vector<int32_t> pages = {0};
  const SelectorInputs in{q.data(), 1, 2, kmin.data(), kmax.data(), 1, 0, pages, 4, 4, 2, 1.0f};
  EXPECT_EQ(score_pages(in), (std::vector<std::vector<float>>{{3.5f}}));
  // With only the first logical page written, the second is not looked at.
  const SelectorInputs first_only{q.data(), 1, 2, kmin.data(), kmax.data(), 1, 0, pages, 2, 4, 2, 1.0f};
  EXPECT_EQ(score_pages(first_only), (std::vector<std::vector<float>>{{1.0f}}));
}

TEST(PageSelector, MassIsTheMeanOfEachHeadsSoftmax) {
  const std::vector<std::vector<float>> scores = {{0, 2, 4}, {1, 1, 1}};
  const auto mass = page_mass(scores, 0.5f);
  // Head 0: softmax(0, 1, 2); head 1: uniform.
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  const std::vector<double> want = {(1 / z + 1.0 / 3) / 2, (std::exp(1.0) / z + 1.0 / 3) / 2, (std::exp(2.0) / z + 1.0 / 3) / 2};
  ASSERT_EQ(mass.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(mass[i], want[i], 1e-12);
  EXPECT_NEAR(std::accumulate(mass.begin(), mass.end(), 0.0), 1.0, 1e-12);

  std::mt19937 rng(2);
  std::vector<std::vector<float>> random(4);
  for (auto& row : random) row = test::random_floats(50, rng, 3.0f);
  const auto got = page_mass(random, 0.3f), expected = test::softmax_mass(random, 0.3f);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-14);
}

TEST(PageSelector, PickKeepsFirstAndLastThenTheTopPagesByMass) {
  // Pages 1 and 2 tie: the lower index wins.
  EXPECT_EQ(pick_pages({0.1, 0.5, 0.5, 0.2, 0.05}, BudgetRule{3}), (std::vector<int32_t>{0, 1, 4}));
  EXPECT_EQ(pick_pages({0.1, 0.5, 0.5, 0.2, 0.05}, BudgetRule{4}), (std::vector<int32_t>{0, 1, 2, 4}));
  // First and last are kept however little mass they carry.
  EXPECT_EQ(pick_pages({0.0, 0.4, 0.3, 0.3, 0.0}, BudgetRule{2}), (std::vector<int32_t>{0, 4}));

  std::mt19937 rng(9);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 40);
    const int64_t budget = static_cast<int64_t>(rng() % 45);
    const bool ties = trial % 2 == 1;  // masses from a few values: many ties
    std::vector<double> mass(static_cast<size_t>(n));
    for (auto& m : mass) m = ties ? static_cast<double>(rng() % 4) / 10 : std::uniform_real_distribution<double>(0, 1)(rng);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << n << " pages, budget " << budget << (ties ? ", ties" : ""));
    const auto got = pick_pages(mass, BudgetRule{budget});
    EXPECT_EQ(got, test::top_pages(mass, budget));
    EXPECT_EQ(static_cast<int64_t>(got.size()), std::min<int64_t>(n, std::max<int64_t>(budget, 2)));
    EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
  }
}

TEST(PageSelector, BudgetCoveringEveryPageKeepsEveryPage) {
  std::vector<double> mass(7, 0.0);
  mass[3] = 1.0;
  for (int64_t budget : {7, 8, 100}) {
    const auto got = pick_pages(mass, BudgetRule{budget});
    EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6})) << "budget " << budget;
  }
  EXPECT_EQ(pick_pages({0.5}, BudgetRule{1}), (std::vector<int32_t>{0}));
  EXPECT_EQ(pick_pages({0.5, 0.5}, BudgetRule{1}), (std::vector<int32_t>{0, 1}));
}

TEST(PageSelector, PsaKeepsTheShortestPrefixReachingTheMassWithinMinAndMax) {
  // Ranking: 0, 7 (forced), then 2 (.25), 4 (.15), 5 (.07), 6 (.05), 1 (.02), 3 (.01).
  // Mass kept by the first c pages: 2: .45, 3: .70, 4: .85, 5: .92, 6: .97, 7: .99, 8: 1.
  const std::vector<double> mass = {0.3, 0.02, 0.25, 0.01, 0.15, 0.07, 0.05, 0.15};
  struct Case {
    double threshold;
    int64_t min_pages, max_pages;
    std::vector<int32_t> want;
  };
  const std::vector<Case> cases = {
      {0.8, 0, 8, {0, 2, 4, 7}},         // reached at 4 pages
      {0.4, 0, 8, {0, 7}},               // the forced pages already suffice
      {0.95, 0, 8, {0, 2, 4, 5, 6, 7}},  // 6 pages
      {0.8, 6, 8, {0, 2, 4, 5, 6, 7}},   // raised to the minimum
      {0.8, 0, 3, {0, 2, 7}},            // capped at the maximum
      {0.8, 10, 20, {0, 1, 2, 3, 4, 5, 6, 7}},  // minimum beyond the pages: all
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "mass " << c.threshold << ", pages " << c.min_pages << ".." << c.max_pages);
    EXPECT_EQ(pick_pages(mass, BudgetRule{c.max_pages, c.min_pages, c.threshold}), c.want);
  }

  std::mt19937 rng(4);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 30);
    auto scores = std::vector<std::vector<float>>{test::random_floats(static_cast<size_t>(n), rng, 4.0f)};
    const auto m = page_mass(scores, 1.0f);
    const double threshold = std::uniform_real_distribution<double>(0.05, 1.0)(rng);
    const int64_t min_pages = static_cast<int64_t>(rng() % 8), max_pages = min_pages + static_cast<int64_t>(rng() % 20);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << n << " pages, mass " << threshold << ", "
                                      << min_pages << ".." << max_pages);
    EXPECT_EQ(pick_pages(m, BudgetRule{max_pages, min_pages, threshold}), test::psa_pages(m, threshold, min_pages, max_pages));
  }
}

}  // namespace
}  // namespace lserve
