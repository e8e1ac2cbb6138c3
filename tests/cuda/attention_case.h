// A random paged-attention problem for the CUDA tests: sequences of (earlier context, new
// tokens) over pages scattered in a pool, K/V written for every cached position and NaN in
// every slot no sequence holds (so a kernel reading past a sequence's end shows), random
// queries, and the same cache on the CPU (f32) and GPU (bf16) backends with identical values.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "backend/attention_batch.h"
#include "cuda_test_util.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"

namespace lserve::test {

struct AttentionShape {
  int64_t num_heads, num_kv_heads, head_dim;
  int32_t page_size;
  std::vector<std::pair<int32_t, int32_t>> seqs;  // (context before, new tokens)
};

inline ModelConfig kv_config(const AttentionShape& s) {
  ModelConfig c;
  c.num_layers = 1;
  c.num_heads = s.num_heads;
  c.num_kv_heads = s.num_kv_heads;
  c.head_dim = s.head_dim;
  return c;
}

struct AttentionProblem {
  AttentionShape shape;
  AttentionBatch batch;
  int64_t pool_pages = 0;
  std::vector<float> k_pool, v_pool, q;  // pools [pages, kv_heads, page_size, head_dim]

  AttentionProblem(AttentionShape s, std::mt19937& rng) : shape(std::move(s)) {
    const int32_t P = shape.page_size;
    int64_t pages_needed = 0;
    for (auto [ctx, n] : shape.seqs) pages_needed += (ctx + n + P - 1) / P;
    pool_pages = pages_needed + 3;
    std::vector<int32_t> pool(static_cast<size_t>(pool_pages));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    const int64_t Hk = shape.num_kv_heads, D = shape.head_dim;
    const size_t pool_elems = static_cast<size_t>(pool_pages * Hk * P * D);
    k_pool.assign(pool_elems, std::nanf(""));
    v_pool.assign(pool_elems, std::nanf(""));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    batch.query_start = {0};
    batch.page_indptr = {0};
    size_t next = 0;
    for (auto [ctx, n] : shape.seqs) {
      const int32_t len = ctx + n;
      const int32_t first_page = static_cast<int32_t>(batch.page_indices.size());
      for (int32_t p = 0; p < (len + P - 1) / P; ++p) batch.page_indices.push_back(pool[next++]);
      batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
      batch.seq_lens.push_back(len);
      batch.query_start.push_back(batch.query_start.back() + n);
      for (int32_t pos = 0; pos < len; ++pos) {
        const int64_t page = batch.page_indices[static_cast<size_t>(first_page + pos / P)];
        for (int64_t h = 0; h < Hk; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const size_t i = static_cast<size_t>(((page * Hk + h) * P + pos % P) * D + d);
            k_pool[i] = round_bf16(normal(rng));
            v_pool[i] = round_bf16(normal(rng));
          }
        if (pos >= ctx) {
          batch.positions.push_back(pos);
          batch.slot_mapping.push_back(page * P + pos % P);
        }
      }
    }
    q = random_bf16(static_cast<size_t>(batch.num_tokens() * shape.num_heads * D), rng);
  }

  float scale() const { return 1.0f / std::sqrt(static_cast<float>(shape.head_dim)); }

  // A one-layer cache on `b` holding the pools.
  std::unique_ptr<KvCache> make_cache(Backend& b) const {
    KvCacheOptions o;
    o.page_size = shape.page_size;
    o.memory_bytes = KvCache::bytes_per_page(kv_config(shape), shape.page_size, b.compute_dtype()) *
                     static_cast<size_t>(pool_pages);
    auto cache = std::make_unique<KvCache>(kv_config(shape), o, b);
    upload_pool(b, cache->k_pages(0), k_pool);
    upload_pool(b, cache->v_pages(0), v_pool);
    return cache;
  }

  // The attention output on `b` (outputs start poisoned).
  std::vector<float> run(Backend& b, const KvCache& cache) const { return run(b, cache, batch, q); }

  // The same over another batch on this cache (queries: [that batch's tokens, heads * head_dim]).
  std::vector<float> run(Backend& b, const KvCache& cache, const AttentionBatch& other,
                         const std::vector<float>& queries) const {
    const int64_t T = other.num_tokens(), HD = shape.num_heads * shape.head_dim;
    Owned qt = put(b, Shape{T, HD}, queries);
    Owned out = poisoned(b, b.compute_dtype(), Shape{T, HD});
    b.begin_step(other, AttentionHeads{});
    b.attention(cache, 0, qt.t, other, scale(), out.t);
    return fetch(b, out.t);
  }

  // The batch of sequence 0 alone, and its queries.
  AttentionBatch first_sequence() const {
    AttentionBatch one;
    const int32_t n = batch.query_len(0);
    one.query_start = {0, n};
    one.seq_lens = {batch.seq_lens[0]};
    one.page_indptr = {0, batch.page_indptr[1]};
    one.page_indices.assign(batch.page_indices.begin(), batch.page_indices.begin() + batch.page_indptr[1]);
    one.positions.assign(batch.positions.begin(), batch.positions.begin() + n);
    one.slot_mapping.assign(batch.slot_mapping.begin(), batch.slot_mapping.begin() + n);
    return one;
  }

 private:
  static void upload_pool(Backend& b, const Tensor& dst, const std::vector<float>& v) {
    if (b.compute_dtype() == DType::F32) {
      b.upload(dst, v.data());
      return;
    }
    std::vector<uint16_t> bits(v.size());
    for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16(v[i]);
    b.upload(dst, bits.data());
  }
};

}  // namespace lserve::test
