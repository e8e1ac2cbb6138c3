// The fused RoPE + KV append + key summaries kernel (rope_kv_append.cu) against the three
// kernels it replaces, on one GPU, bit for bit: the rotated queries, both pools (retrieval and
// streaming heads) and the retrieval heads' key min and max, over prefill chunks that start
// inside a logical page (rows of earlier steps in the pool, rows of this step in flight),
// several sequences per step, decode steps, and positions past the RoPE table.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "engine/batch_plan.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "sparse/head_pattern.h"
#include "sparse/sparsity_config.h"

namespace lserve {
namespace {

struct StepsResult {
  std::vector<std::vector<float>> q_after;  // per step
  std::vector<std::vector<float>> tensors;  // the pools and summaries after the last step
};

// Steps of (start, new tokens) per sequence; the same random rows on both sides.
StepsResult run_steps(bool fused, const ModelConfig& c, int32_t page, int32_t logical,
              const std::vector<std::vector<std::pair<int64_t, int64_t>>>& steps, uint32_t seed) {
  CudaBackendOptions options;
  options.fused_rope_kv_append = fused;
  auto gpu = make_cuda_backend(options);
  std::mt19937 rng(seed);
  // A table shorter than the last positions: those rows stay unrotated on both sides.
  const int64_t D = c.head_dim, H = c.num_heads, Hk = c.num_kv_heads, max_pos = 56;
  auto rope_table = test::put_raw(*gpu, DType::F32, Shape{max_pos, D}, test::rope_table(max_pos, D));
  KvCacheOptions o;
  o.page_size = page;
  o.logical_page_size = logical;
  o.max_sequences = 4;
  o.retrieval_pages = 64;
  o.streaming_pages = 64;
  KvCache cache(c, HeadPattern::uniform(c.num_layers, Hk, 0.5), o, *gpu);
  for (const Tensor& t : {cache.k_pages(0, HeadKind::Retrieval), cache.v_pages(0, HeadKind::Retrieval),
                          cache.k_pages(0, HeadKind::Streaming), cache.v_pages(0, HeadKind::Streaming), cache.key_min(0),
                          cache.key_max(0)}) {
    const std::vector<uint8_t> nan_bytes(t.nbytes(), 0xff);  // NaN: what nobody writes stays NaN on both sides
    gpu->upload(t, nan_bytes.data());
  }
  SparsityConfig sp;
  sp.policy = AttentionPolicy::LServe;
  sp.page_size = page;
  sp.logical_page_size = logical;
  std::vector<SequenceKv> seqs(steps.front().size());
  StepsResult run;
  for (const auto& step : steps) {
    std::vector<StepChunk> chunks;
    for (size_t s = 0; s < step.size(); ++s) {
      const auto [start, n] = step[s];
      if (n == 0) continue;
      cache.reserve(seqs[s], start + n);
      chunks.push_back({&seqs[s], start, n, n == 1 && start > 0, nullptr});
    }
    const AttentionBatch batch = plan_step(cache, chunks, &sp);
    const int64_t T = batch.num_tokens();
    gpu->begin_step(batch, AttentionHeads{});
    auto q = test::put(*gpu, Shape{T, H * D}, test::random_bf16(static_cast<size_t>(T * H * D), rng));
    auto k = test::put(*gpu, Shape{T, Hk * D}, test::random_bf16(static_cast<size_t>(T * Hk * D), rng));
    auto v = test::put(*gpu, Shape{T, Hk * D}, test::random_bf16(static_cast<size_t>(T * Hk * D), rng));
    auto pos = test::put_raw(*gpu, DType::I32, Shape{T}, batch.positions);
    gpu->rope_kv_append(cache, 0, q.t, k.t, v.t, pos.t, rope_table.t, D, batch);
    run.q_after.push_back(test::fetch(*gpu, q.t));
  }
  for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
    run.tensors.push_back(test::fetch(*gpu, cache.k_pages(0, kind)));
    run.tensors.push_back(test::fetch(*gpu, cache.v_pages(0, kind)));
  }
  run.tensors.push_back(test::fetch(*gpu, cache.key_min(0)));
  run.tensors.push_back(test::fetch(*gpu, cache.key_max(0)));
  return run;
}

void expect_same_bits(const std::vector<float>& want, const std::vector<float>& got, const char* what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) && std::isnan(got[i])) continue;  // never written on either side
    ASSERT_EQ(want[i], got[i]) << what << ", element " << i;
  }
}

TEST(CudaRopeKvAppend, FusedMatchesTheThreeKernels) {
  LSERVE_SKIP_WITHOUT_GPU();
  const uint32_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  ModelConfig c;
  c.num_layers = 1;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  // Two sequences: prefill chunks of lengths that end and start inside 16-token logical pages,
  // then decode steps, then a chunk again; a third sequence joins later.
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> steps = {
      {{0, 37}, {0, 5}, {0, 0}},
      {{37, 22}, {5, 1}, {0, 17}},
      {{59, 1}, {6, 1}, {17, 1}},
      {{60, 1}, {7, 30}, {18, 1}},
      {{61, 1}, {37, 1}, {19, 1}},
  };
  for (int32_t page : {16, 64}) {
    SCOPED_TRACE(::testing::Message() << "page " << page);
    const StepsResult plain = run_steps(false, c, page, 16, steps, seed), fused = run_steps(true, c, page, 16, steps, seed);
    for (size_t s = 0; s < plain.q_after.size(); ++s) expect_same_bits(plain.q_after[s], fused.q_after[s], "q");
    const char* names[] = {"retrieval k", "retrieval v", "streaming k", "streaming v", "key min", "key max"};
    for (size_t i = 0; i < plain.tensors.size(); ++i) expect_same_bits(plain.tensors[i], fused.tensors[i], names[i]);
  }
}

}  // namespace
}  // namespace lserve
