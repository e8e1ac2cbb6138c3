// The GPU paged attention (tensor-core prefill and split decode kernels, and the plain reference
// kernel) against the CPU backend's attention, on fresh random problems: GQA ratios from 1 to 32,
// head dims 8 to 128, page sizes 1 to 256, ragged lengths, prefill chunks on earlier context,
// decode batches of different lengths, mixed batches, prompts of several thousand tokens.
// Unwritten cache slots hold NaN.
#include <gtest/gtest.h>

#include "attention_case.h"

namespace lserve {
namespace {

using test::AttentionProblem;
using test::AttentionShape;

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    LSERVE_SKIP_WITHOUT_GPU();
    seed_ = test::fresh_seed();
    rng_.seed(seed_);
    cpu_ = make_cpu_backend(0);
    gpu_ = make_cuda_backend(0);
    CudaBackendOptions ref;
    ref.reference_attention = true;
    gpu_ref_ = make_cuda_backend(ref);
  }

  void check(const AttentionShape& s) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed_ << " heads " << s.num_heads << "/" << s.num_kv_heads
                                      << " head_dim " << s.head_dim << " page " << s.page_size);
    const AttentionProblem prob(s, rng_);
    const auto cpu_cache = prob.make_cache(*cpu_);
    const auto gpu_cache = prob.make_cache(*gpu_);
    const auto want = prob.run(*cpu_, *cpu_cache);
    {
      SCOPED_TRACE("fast kernels");
      EXPECT_BF16_CLOSE(prob.run(*gpu_, *gpu_cache), want);
    }
    {
      SCOPED_TRACE("reference kernel");
      EXPECT_BF16_CLOSE(prob.run(*gpu_ref_, *gpu_cache), want);
    }
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::unique_ptr<Backend> cpu_, gpu_, gpu_ref_;
};

TEST_F(CudaAttention, FixedShapes) {
  const std::vector<AttentionShape> shapes = {
      {4, 4, 16, 16, {{0, 37}}},                             // MHA prefill, partial last page
      {8, 2, 32, 64, {{0, 150}, {10, 1}, {200, 1}}},         // GQA 4: prefill + decodes in one batch
      {6, 1, 8, 7, {{13, 20}, {0, 1}, {63, 2}}},             // head_dim 8: the reference kernel only
      {4, 2, 64, 64, {{1000, 1}, {5000, 1}, {511, 1}}},      // decode split along the context, merged
      {2, 2, 16, 1, {{5, 3}, {700, 1}}},                     // one token per page
      {16, 8, 16, 32, {{0, 100}, {300, 40}}},                // chunked prefill on earlier context
      {32, 8, 128, 16, {{0, 300}, {2000, 64}, {4097, 1}}},   // Llama-3-8B heads
      {32, 2, 128, 256, {{700, 1}, {0, 129}, {1024, 1}}},    // GQA 16 decode, large pages
      {64, 2, 64, 64, {{900, 1}, {33, 5}}},                  // GQA 32: decode through the prefill kernel
      {28, 4, 128, 64, {{3000, 1}, {100, 77}}},              // GQA 7 (Qwen2-7B): tiles split tokens
  };
  for (const auto& s : shapes) check(s);
}

TEST_F(CudaAttention, RandomShapes) {
  const int64_t dims[] = {16, 32, 64, 128};
  const int64_t groups[] = {1, 2, 4, 5, 8, 16};
  const int32_t pages[] = {1, 3, 16, 64, 128};
  for (int i = 0; i < 12; ++i) {
    std::uniform_int_distribution<int> pick(0, 1000);
    AttentionShape s;
    s.head_dim = dims[pick(rng_) % 4];
    s.num_kv_heads = 1 + pick(rng_) % 4;
    s.num_heads = s.num_kv_heads * groups[pick(rng_) % 6];
    s.page_size = pages[pick(rng_) % 5];
    const int n = 1 + pick(rng_) % 5;
    for (int b = 0; b < n; ++b) {
      const int32_t ctx = pick(rng_) % 3 == 0 ? 0 : pick(rng_) * 3;
      const int32_t q = pick(rng_) % 2 == 0 ? 1 : 1 + pick(rng_) % 200;
      s.seqs.push_back({ctx, q});
    }
    check(s);
  }
}

TEST_F(CudaAttention, LongPrefill) {
  // Lengths at which the prefill pipeline runs through many KV stages (on sm_90 head_dim 64 and
  // 128 take the wgmma kernel): a 4K prompt and an 8K one, long chunks after long context, pages
  // shorter than a key tile and a page size that divides nothing, GQA 1 to 16, lengths that are
  // multiples of neither 64 nor 128, and a decode batched beside a prefill.
  const std::vector<AttentionShape> shapes = {
      {32, 8, 128, 64, {{0, 4096}}},                 // Llama-3-8B heads, one 4K prompt
      {8, 1, 128, 64, {{0, 8192}}},                  // GQA 8, an 8K prompt
      {32, 8, 128, 16, {{0, 1000}, {5000, 1500}}},   // a 1500-token chunk after 5000
      {16, 4, 128, 3, {{0, 1337}, {2500, 700}}},     // 3-token pages: every tile spans many
      {8, 8, 64, 64, {{0, 2100}, {3000, 129}}},      // MHA
      {32, 2, 64, 16, {{6000, 300}, {0, 999}}},      // GQA 16
      {16, 4, 64, 128, {{4100, 1}, {0, 3001}}},      // decode beside a prefill
  };
  for (const auto& s : shapes) check(s);
}

TEST_F(CudaAttention, PrefillIsBitIdenticalWhateverTheBatch) {
  // A prefill sequence's query tiles depend on the sequence alone: batched with others or run
  // alone, its output is the same to the bit.
  const AttentionProblem prob(AttentionShape{32, 8, 128, 16, {{300, 700}, {0, 1000}, {2000, 1}, {50, 77}}}, rng_);
  const auto cache = prob.make_cache(*gpu_);
  const auto batched = prob.run(*gpu_, *cache);
  const AttentionBatch one = prob.first_sequence();
  const std::vector<float> q0(prob.q.begin(), prob.q.begin() + 700 * 32 * 128);
  const auto alone = prob.run(*gpu_, *cache, one, q0);
  ASSERT_TRUE(std::equal(alone.begin(), alone.end(), batched.begin())) << "seed " << seed_;
}

TEST_F(CudaAttention, DecodeIsBitIdenticalWhateverTheBatch) {
  // A sequence's splits depend on its own length only: batching it with others must not change
  // one bit of its output.
  const AttentionProblem prob(AttentionShape{8, 2, 64, 16, {{3000, 1}, {100, 1}, {0, 50}}}, rng_);
  const auto cache = prob.make_cache(*gpu_);
  const auto batched = prob.run(*gpu_, *cache);
  const AttentionBatch one = prob.first_sequence();
  const std::vector<float> q0(prob.q.begin(), prob.q.begin() + 8 * 64);
  const auto alone = prob.run(*gpu_, *cache, one, q0);
  ASSERT_TRUE(std::equal(alone.begin(), alone.end(), batched.begin())) << "seed " << seed_;
}

}  // namespace
}  // namespace lserve
