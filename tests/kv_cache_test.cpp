// Page bookkeeping: ref counts, reserve/release, exhaustion leaves state untouched.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "kv/block_allocator.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "test_util.h"

namespace lserve {
namespace {

TEST(BlockAllocator, RefCountsReturnPagesToThePool) {
  BlockAllocator a(3);
  auto p0 = a.allocate(), p1 = a.allocate(), p2 = a.allocate();
  ASSERT_TRUE(p0 && p1 && p2);
  EXPECT_FALSE(a.allocate().has_value());
  a.retain(*p1);
  a.release(*p1);
  EXPECT_EQ(a.num_free(), 0);  // still referenced once
  a.release(*p1);
  EXPECT_EQ(a.num_free(), 1);
  EXPECT_EQ(a.allocate(), p1);  // LIFO reuse
  EXPECT_THROW(a.release(7), Error);
}

TEST(BlockAllocator, ReleasingAFreePageIsABug) {
  BlockAllocator a(1);
  auto p = a.allocate();
  a.release(*p);
  EXPECT_THROW(a.release(*p), Error);
}

TEST(KvCache, ReserveAllocatesWholePagesAndReleaseReturnsThem) {
  auto backend = make_cpu_backend(1);
  const ModelConfig c = test::tiny_kv_config();
  KvCacheOptions o;
  o.page_size = 16;
  o.memory_bytes = KvCache::bytes_per_page(c, 16, DType::F32) * 10 + 5;  // 10 pages and change
  KvCache cache(c, o, *backend);
  EXPECT_EQ(cache.allocator().num_pages(), 10);
  EXPECT_EQ(cache.total_bytes(), KvCache::bytes_per_page(c, 16, DType::F32) * 10);

  SequenceKv a, b;
  cache.reserve(a, 1);
  EXPECT_EQ(a.retrieval.pages.size(), 1u);
  cache.reserve(a, 16);
  EXPECT_EQ(a.retrieval.pages.size(), 1u);
  cache.reserve(a, 17);
  EXPECT_EQ(a.retrieval.pages.size(), 2u);
  EXPECT_TRUE(a.streaming.pages.empty());  // no streaming heads, no streaming pages
  cache.reserve(b, 16 * 8);
  EXPECT_EQ(cache.allocator().num_free(), 0);

  // Exhaustion: a clear, recoverable error and the sequence as it was.
  const auto before = a.retrieval.pages;
  EXPECT_THROW(cache.reserve(a, 40), KvCacheFull);
  EXPECT_EQ(a.retrieval.pages, before);
  EXPECT_EQ(a.num_tokens(), 17);

  cache.release(a);
  cache.release(b);
  EXPECT_EQ(cache.allocator().num_free(), 10);
  EXPECT_TRUE(a.retrieval.pages.empty());
}

TEST(KvCache, PoolViewsDoNotOverlap) {
  auto backend = make_cpu_backend(1);
  const ModelConfig c = test::tiny_kv_config();
  KvCacheOptions o;
  o.page_size = 4;
  o.memory_bytes = KvCache::bytes_per_page(c, 4, DType::F32) * 3;
  KvCache cache(c, o, *backend);
  // Layer l's K pool, then its V pool, back to back, for every layer.
  const char* end_prev = nullptr;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (const Tensor& t : {cache.k_pages(l), cache.v_pages(l)}) {
      EXPECT_EQ(t.shape, (Shape{3, 2, 4, 8}));
      if (end_prev) {
        EXPECT_EQ(static_cast<const char*>(t.data), end_prev);
      }
      end_prev = static_cast<const char*>(t.data) + t.nbytes();
    }
  }
}

TEST(KvCache, StreamingHeadsKeepOnlySinkAndLocalPages) {
  auto backend = make_cpu_backend(1);
  const ModelConfig c = test::tiny_kv_config();  // 2 layers x 2 KV heads
  const HeadPattern pattern = HeadPattern::from_scores({{0.9, 0.1}, {0.2, 0.8}}, HeadRule{0.5, std::nullopt}, "t");
  KvCacheOptions o;
  o.page_size = 16;
  o.logical_page_size = 4;
  o.streaming_pages_per_sequence = 8;
  o.max_sequences = 2;
  o.memory_bytes = 1 << 20;
  KvCache cache(c, pattern, o, *backend);
  EXPECT_EQ(cache.slot(0, 1).kind, HeadKind::Streaming);
  EXPECT_EQ(cache.slot(1, 0).kind, HeadKind::Streaming);
  EXPECT_EQ(cache.slot(1, 1).index, 0);
  EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_pages(), 16);
  // Retrieval pages carry K, V and 4 logical pages' min and max; streaming pages K and V only.
  EXPECT_EQ(cache.bytes_per_page(HeadKind::Retrieval), 2u * (2 * 16 + 2 * 4) * 8 * 4);
  EXPECT_EQ(cache.bytes_per_page(HeadKind::Streaming), 2u * (2 * 16) * 8 * 4);

  SequenceKv s;
  const StreamingWindow w{16, 32};  // sink = page 0, local = two pages
  for (int64_t n = 16; n <= 160; n += 16) {
    cache.reserve(s, n);
    cache.trim_streaming(s, n, w);
  }
  // 10 pages written; next query at 160 sees [0, 16) and [129, 160]: pages 0, 8, 9 (and 10 later).
  EXPECT_EQ(s.retrieval.pages.size(), 10u);
  int kept = 0;
  for (size_t i = 0; i < s.streaming.pages.size(); ++i) kept += s.streaming.pages[i] != kNoPage;
  EXPECT_EQ(kept, 3);
  EXPECT_NE(s.streaming.pages[0], kNoPage);
  EXPECT_NE(s.streaming.pages[8], kNoPage);
  EXPECT_EQ(s.streaming.pages[5], kNoPage);
  EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_used(), 3);
  cache.release(s);
  EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_used(), 0);
  EXPECT_EQ(cache.allocator(HeadKind::Retrieval).num_used(), 0);
}

TEST(KvCache, RefusesAMemoryBudgetBelowOnePage) {
  auto backend = make_cpu_backend(1);
  KvCacheOptions o;
  o.memory_bytes = 100;
  EXPECT_THROW(KvCache(test::tiny_kv_config(), o, *backend), Error);
}

// A cache larger than the address space: a clear error that names the KV cache and its size.
TEST(KvCache, SaysWhichPoolDidNotFit) {
  auto backend = make_cpu_backend(1);
  const ModelConfig c = test::tiny_kv_config();
  KvCacheOptions o;
  o.page_size = int64_t{1} << 20;
  o.memory_bytes = KvCache::bytes_per_page(c, o.page_size, DType::F32) << 20;  // 2^20 pages: 256 TiB
  try {
    KvCache cache(c, o, *backend);
    FAIL() << "a 256 TiB KV cache was allocated";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("the KV cache's retrieval pool (1048576 pages of 1048576 tokens, 262144.0 GiB) does not fit"),
              std::string::npos)
        << what;
  }
}

}  // namespace
}  // namespace lserve
