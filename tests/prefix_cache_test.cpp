// Prefix caching bookkeeping: evictable pages in LRU order, chained page hashes, and which
// cached pages a new sequence may take (retrieval pages in full, streaming pages only where its
// prefill can still see them).
#include <gtest/gtest.h>

#include <numeric>

#include "backend/backend.h"
#include "kv/block_allocator.h"
#include "kv/prefix_cache.h"
#include "model/model_config.h"
#include "test_util.h"

namespace lserve {
namespace {

TEST(BlockAllocator, CachedPagesBecomeEvictableAndAreEvictedOldestFirst) {
  BlockAllocator a(3);
  std::vector<PageId> evicted;
  a.set_evict_callback([&](PageId p) { evicted.push_back(p); });
  const PageId p0 = *a.allocate(), p1 = *a.allocate(), p2 = *a.allocate();
  a.set_cached(p0, true);
  a.set_cached(p1, true);
  a.release(p1);  // released first: evicted first
  a.release(p0);
  a.release(p2);  // not cached: plain free
  EXPECT_EQ(a.num_free(), 3);
  EXPECT_EQ(a.num_evictable(), 2);
  EXPECT_EQ(a.allocate(), p2);  // free pages go before evicting anything
  EXPECT_TRUE(evicted.empty());
  EXPECT_EQ(a.allocate(), p1);
  EXPECT_EQ(evicted, std::vector<PageId>{p1});
  EXPECT_FALSE(a.cached(p1));
  a.retain(p0);  // revived from the evictable list
  EXPECT_EQ(a.num_free(), 0);
  EXPECT_FALSE(a.allocate().has_value());
  a.release(p0);
  a.set_cached(p0, false);  // forgotten while evictable: simply free
  EXPECT_EQ(a.num_evictable(), 0);
  EXPECT_EQ(a.allocate(), p0);
  EXPECT_EQ(evicted.size(), 1u);
}

struct Pools {
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  KvCache cache;
  PrefixCache prefix{cache, 42};
  explicit Pools(const HeadPattern& pattern, int64_t pages = 32)
      : cache(test::tiny_kv_config(), pattern, options(pages), *backend) {}
  static KvCacheOptions options(int64_t pages) {
    KvCacheOptions o;
    o.page_size = 4;
    o.retrieval_pages = o.streaming_pages = pages;
    o.max_sequences = 4;
    return o;
  }
};

std::vector<int32_t> iota_tokens(int n, int32_t first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(PrefixCache, HashesChainOverWholePagesOnly) {
  Pools p(HeadPattern::all_retrieval(2, 2));
  const auto a = p.prefix.page_hashes(iota_tokens(10));
  EXPECT_EQ(a.size(), 2u);  // the partial third page is not hashed
  auto tokens = iota_tokens(10);
  tokens[1] = 99;  // a change in page 0 changes every later hash
  const auto b = p.prefix.page_hashes(tokens);
  EXPECT_NE(a[0], b[0]);
  EXPECT_NE(a[1], b[1]);
  PrefixCache other_salt(p.cache, 43);
  EXPECT_NE(other_salt.page_hashes(iota_tokens(10))[0], a[0]);
}

TEST(PrefixCache, SharesFullPagesAndLeavesOnePromptTokenToCompute) {
  Pools p(HeadPattern::all_retrieval(2, 2));
  const auto prompt = iota_tokens(12);
  const auto hashes = p.prefix.page_hashes(prompt);
  SequenceKv donor;
  p.cache.reserve(donor, 12);
  p.prefix.insert(donor, hashes, 3);
  SequenceKv taker;
  // All 3 pages cached, but the last prompt token must be computed: 2 pages are taken.
  EXPECT_EQ(p.prefix.attach(taker, hashes, 12, {}), 8);
  EXPECT_EQ(taker.retrieval.pages, std::vector<PageId>(donor.retrieval.pages.begin(), donor.retrieval.pages.begin() + 2));
  EXPECT_EQ(p.cache.allocator().ref_count(donor.retrieval.pages[0]), 2);
  p.cache.release(donor);
  p.cache.release(taker);
  EXPECT_EQ(p.cache.allocator().num_used(), 0);
  EXPECT_EQ(p.cache.allocator().num_evictable(), 3);
  // A longer prompt with the same start still hits all three pages.
  SequenceKv again;
  EXPECT_EQ(p.prefix.attach(again, p.prefix.page_hashes(iota_tokens(13)), 13, {}), 12);
  p.cache.release(again);
}

TEST(PrefixCache, TakesStreamingPagesOnlyWithinTheWindowAndNeedsThemCached) {
  HeadPattern pattern = HeadPattern::uniform(2, 2, 0.5);
  Pools p(pattern);
  const auto prompt = iota_tokens(33);
  const auto hashes = p.prefix.page_hashes(prompt);  // 8 full pages of 4
  SequenceKv donor;
  p.cache.reserve(donor, 33);
  p.prefix.insert(donor, hashes, 8);
  const StreamingWindow keep{4, 8};  // sink page 0 and the two pages before the start
  SequenceKv taker;
  EXPECT_EQ(p.prefix.attach(taker, hashes, 33, keep), 32);
  for (size_t i = 0; i < 8; ++i) {
    const bool needed = i == 0 || i >= 6;
    EXPECT_EQ(taker.streaming.pages[i] != kNoPage, needed) << "page " << i;
  }
  EXPECT_EQ(taker.live_streaming_pages, 3);
  p.cache.release(taker);
  // The donor trims its streaming pages as a decode would; trimmed cached pages stay evictable
  // and can still be taken.
  p.cache.trim_streaming(donor, 33, keep);
  SequenceKv second;
  EXPECT_EQ(p.prefix.attach(second, hashes, 33, keep), 32);
  p.cache.release(second);
  p.cache.release(donor);
  EXPECT_EQ(p.cache.allocator(HeadKind::Streaming).num_used(), 0);
  // Evict the streaming copy of page 6 by exhausting the streaming pool: the hit shrinks to
  // the longest prefix whose window is still complete (sink page 0 + pages 4, 5 before 24).
  std::vector<SequenceKv> fill(1);
  const int free_plain = p.cache.allocator(HeadKind::Streaming).num_free() - p.cache.allocator(HeadKind::Streaming).num_evictable();
  p.cache.reserve(fill[0], 4 * (free_plain + 2));  // takes every free page, then evicts the two oldest
  SequenceKv third;
  const int64_t hit = p.prefix.attach(third, hashes, 33, keep);
  EXPECT_LT(hit, 32);
  for (size_t i = 0; i < third.streaming.pages.size(); ++i) {
    if (third.streaming.pages[i] != kNoPage) {
      EXPECT_GE(p.cache.allocator(HeadKind::Streaming).ref_count(third.streaming.pages[i]), 1);
    }
  }
  p.cache.release(third);
  p.cache.release(fill[0]);
}

}  // namespace
}  // namespace lserve
