// The GPU KV cache has the CPU's layout ([num_pages, kv_heads, page_size, head_dim] per layer, K
// and V apart): kv_append on both backends with the same rows and slots, then the GPU pools,
// downloaded, equal the CPU pools value for value, and slots nobody wrote still hold the poison.
#include <gtest/gtest.h>

#include "attention_case.h"

namespace lserve {
namespace {

TEST(CudaKvLayout, AppendMatchesCpuLayoutExactly) {
  LSERVE_SKIP_WITHOUT_GPU();
  const uint32_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  auto cpu = make_cpu_backend(2);
  auto gpu = make_cuda_backend(0);
  for (const test::AttentionShape& s : {test::AttentionShape{8, 2, 64, 16, {{0, 40}, {17, 1}, {50, 30}}},
                                        test::AttentionShape{4, 4, 8, 5, {{3, 9}}},
                                        test::AttentionShape{32, 8, 128, 64, {{100, 200}}}}) {
    SCOPED_TRACE(::testing::Message() << "head_dim " << s.head_dim << " page " << s.page_size);
    // Caches of two layers; everything starts as NaN and layer 1 is written.
    test::AttentionProblem prob(s, rng);
    std::fill(prob.k_pool.begin(), prob.k_pool.end(), std::nanf(""));
    std::fill(prob.v_pool.begin(), prob.v_pool.end(), std::nanf(""));
    ModelConfig c = test::kv_config(s);
    c.num_layers = 2;
    KvCacheOptions o;
    o.page_size = s.page_size;
    auto make = [&](Backend& b) {
      o.memory_bytes = KvCache::bytes_per_page(c, s.page_size, b.compute_dtype()) * static_cast<size_t>(prob.pool_pages);
      auto cache = std::make_unique<KvCache>(c, o, b);
      const std::vector<uint8_t> nan_bytes(cache->k_pages(0).nbytes(), 0xff);  // NaN in f32 and bf16
      for (int64_t layer = 0; layer < 2; ++layer) {
        b.upload(cache->k_pages(layer), nan_bytes.data());
        b.upload(cache->v_pages(layer), nan_bytes.data());
      }
      return cache;
    };
    auto cc = make(*cpu), gc = make(*gpu);
    const int64_t T = prob.batch.num_tokens(), KV = s.num_kv_heads * s.head_dim;
    const auto k = test::random_bf16(static_cast<size_t>(T * KV), rng), v = test::random_bf16(k.size(), rng);
    auto ck = test::put(*cpu, Shape{T, KV}, k), cv = test::put(*cpu, Shape{T, KV}, v);
    auto gk = test::put(*gpu, Shape{T, KV}, k), gv = test::put(*gpu, Shape{T, KV}, v);
    cpu->begin_step(prob.batch, AttentionHeads{});
    cpu->kv_append(*cc, 1, ck.t, cv.t, prob.batch);
    gpu->begin_step(prob.batch, AttentionHeads{});
    gpu->kv_append(*gc, 1, gk.t, gv.t, prob.batch);
    for (int kv = 0; kv < 2; ++kv) {
      for (int64_t layer = 0; layer < 2; ++layer) {
        const Tensor ct = kv ? cc->v_pages(layer) : cc->k_pages(layer);
        const Tensor gt = kv ? gc->v_pages(layer) : gc->k_pages(layer);
        ASSERT_EQ(ct.shape, gt.shape);
        const auto want = test::fetch(*cpu, ct);
        std::vector<uint16_t> got(want.size());
        gpu->download(gt, got.data());
        int64_t written = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          if (std::isnan(want[i])) {
            ASSERT_EQ(got[i], 0xffff) << "stray write at element " << i << " of layer " << layer;
          } else {
            ++written;
            ASSERT_EQ(bf16_to_f32(got[i]), want[i]) << "element " << i;
          }
        }
        EXPECT_EQ(written, layer == 1 ? T * KV : 0);
      }
    }
  }
}

}  // namespace
}  // namespace lserve
