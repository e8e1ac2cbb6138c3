// Page bookkeeping: ref counts, reserve/release, exhaustion leaves state untouched.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "kv/block_allocator.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"

namespace lserve {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.hidden_size = 32;
  return c;
}

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
  const ModelConfig c = tiny_config();
  KvCacheOptions o;
  o.page_size = 16;
  o.memory_bytes = KvCache::bytes_per_page(c, 16, DType::F32) * 10 + 5;  // 10 pages and change
  KvCache cache(c, o, *backend);
  EXPECT_EQ(cache.allocator().num_pages(), 10);
  EXPECT_EQ(cache.total_bytes(), KvCache::bytes_per_page(c, 16, DType::F32) * 10);

  PageTable a, b;
  cache.reserve(a, 1);
  EXPECT_EQ(a.pages.size(), 1u);
  cache.reserve(a, 16);
  EXPECT_EQ(a.pages.size(), 1u);
  cache.reserve(a, 17);
  EXPECT_EQ(a.pages.size(), 2u);
  cache.reserve(b, 16 * 8);
  EXPECT_EQ(cache.allocator().num_free(), 0);

  // Exhaustion: a clear, recoverable error and the table as it was.
  const auto before = a.pages;
  EXPECT_THROW(cache.reserve(a, 40), KvCacheFull);
  EXPECT_EQ(a.pages, before);

  cache.release(a);
  cache.release(b);
  EXPECT_EQ(cache.allocator().num_free(), 10);
  EXPECT_TRUE(a.pages.empty());
}

TEST(KvCache, PoolViewsDoNotOverlap) {
  auto backend = make_cpu_backend(1);
  const ModelConfig c = tiny_config();
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

TEST(KvCache, RefusesAMemoryBudgetBelowOnePage) {
  auto backend = make_cpu_backend(1);
  KvCacheOptions o;
  o.memory_bytes = 100;
  EXPECT_THROW(KvCache(tiny_config(), o, *backend), Error);
}

}  // namespace
}  // namespace lserve
