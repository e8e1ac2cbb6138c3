// The CPU paged attention kernel against the plain reference, on random shapes: several
// sequences, GQA ratios, page sizes, lengths that are not page multiples, prefill chunks on
// top of earlier context and single-token decode, pages scattered in the pool.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "backend/cpu/cpu_attention.h"
#include "test_util.h"

namespace lserve {
namespace {


struct Case {
  int64_t num_heads, num_kv_heads, head_dim, page_size;
  std::vector<std::pair<int32_t, int32_t>> seqs;  // (context before, new tokens)
};

void run_case(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  AttentionBatch batch;
  batch.query_start = {0};
  batch.page_indptr = {0};
  int32_t total_pages = 0;
  for (auto [ctx, q] : c.seqs) total_pages += (ctx + q + static_cast<int32_t>(c.page_size) - 1) / static_cast<int32_t>(c.page_size);
  std::vector<int32_t> pool(static_cast<size_t>(total_pages + 3));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);  // pages in no particular order
  size_t next = 0;
  for (auto [ctx, q] : c.seqs) {
    const int32_t len = ctx + q;
    batch.seq_lens.push_back(len);
    batch.query_start.push_back(batch.query_start.back() + q);
    const int32_t pages = (len + static_cast<int32_t>(c.page_size) - 1) / static_cast<int32_t>(c.page_size);
    for (int32_t p = 0; p < pages; ++p) batch.page_indices.push_back(pool[next++]);
    batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
  }
  const int64_t T = batch.num_tokens();
  const size_t pool_elems = pool.size() * static_cast<size_t>(c.num_kv_heads * c.page_size * c.head_dim);
  auto k = test::random_floats(pool_elems, rng), v = test::random_floats(pool_elems, rng);
  auto q = test::random_floats(static_cast<size_t>(T * c.num_heads * c.head_dim), rng);
  std::vector<float> fast(q.size(), std::nanf("")), ref(q.size(), std::nanf(""));  // poisoned
  std::vector<HeadSlot> slots;
  CpuAttentionArgs args = dense_attention_args(q.data(), k.data(), v.data(), fast.data(), c.num_heads, c.num_kv_heads,
                                               c.head_dim, c.page_size, 1.0f / std::sqrt(static_cast<float>(c.head_dim)), slots);
  cpu_paged_attention(args, batch);
  args.out = ref.data();
  reference_paged_attention(args, batch);
  for (size_t i = 0; i < fast.size(); ++i) {
    ASSERT_FALSE(std::isnan(fast[i])) << "unwritten output " << i;
    ASSERT_NEAR(fast[i], ref[i], 2e-5f * (1 + std::abs(ref[i]))) << "element " << i;
  }
}

TEST(CpuPagedAttention, MatchesReferenceOnRandomShapes) {
  const std::vector<Case> cases = {
      {4, 4, 16, 16, {{0, 37}}},                        // MHA prefill, partial last page
      {8, 2, 32, 64, {{0, 150}, {10, 1}, {200, 1}}},    // GQA 4, prefill + decodes
      {6, 1, 8, 7, {{13, 20}, {0, 1}, {63, 2}}},        // MQA, odd page size, chunk on context
      {4, 2, 64, 64, {{1000, 1}}},                      // long decode: split along pages
      {2, 2, 16, 1, {{5, 3}}},                          // one token per page
      {16, 8, 16, 32, {{0, 100}, {300, 40}}},           // many heads, chunked prefill
  };
  uint32_t seed = 1;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "heads " << c.num_heads << "/" << c.num_kv_heads << " d " << c.head_dim
                                      << " page " << c.page_size);
    run_case(c, seed++);
  }
}

TEST(CpuPagedAttention, BitIdenticalForAnyThreadCountAndBatch) {
  // A request must get the same attention output whatever it is batched with and however many
  // threads run: the work split depends on the sequence alone.
  std::mt19937 rng(7);
  const int64_t H = 8, Hk = 2, D = 32, P = 16;
  const int32_t len = 700;
  const int32_t pages = (len + P - 1) / P;
  auto k = test::random_floats(static_cast<size_t>(2 * pages * Hk * P * D), rng);
  auto v = test::random_floats(k.size(), rng);
  auto q = test::random_floats(static_cast<size_t>(3 * H * D), rng);
  auto run = [&](int threads, bool with_others) {
    omp_set_num_threads(threads);
    AttentionBatch b;
    b.query_start = {0, 1};
    b.seq_lens = {len};
    b.page_indptr = {0, pages};
    for (int32_t p = 0; p < pages; ++p) b.page_indices.push_back(p);
    if (with_others) {  // a second sequence (2 queries) on the other half of the pool
      b.query_start.push_back(3);
      b.seq_lens.push_back(300);
      for (int32_t p = 0; p < (300 + P - 1) / P; ++p) b.page_indices.push_back(pages + p);
      b.page_indptr.push_back(static_cast<int32_t>(b.page_indices.size()));
    }
    std::vector<float> out(static_cast<size_t>(3 * H * D));
    std::vector<HeadSlot> slots;
    cpu_paged_attention(dense_attention_args(q.data(), k.data(), v.data(), out.data(), H, Hk, D, P, 0.17f, slots), b);
    out.resize(static_cast<size_t>(H * D));  // the first sequence's row
    return out;
  };
  const auto alone = run(1, false);
  for (int threads : {1, 2, 3})
    for (bool others : {false, true}) EXPECT_EQ(run(threads, others), alone) << threads << " threads";
  omp_set_num_threads(2);
}

}  // namespace
}  // namespace lserve
