// Streaming heads on the GPU (sink + local window, in their own KV pool) against the CPU
// backend, which is checked against explicit masks in tests/sparse_attention_test.cpp.
//   - Op level: the same KvCache layout (a head pattern, both pools) on both backends, driven
//     through prefill chunks and decode steps of several sequences at once, with the engine's
//     own planning and trimming (released streaming pages hold NaN on the GPU); every layer's
//     attention output must match within bf16 tolerance, over GQA ratios, head dims (each GPU
//     kernel: wgmma, mma.sync, the reference), page sizes and windows that are not page multiples.
//     Retrieval heads' key summaries (per logical page min and max, for the page selector) must
//     equal the CPU's exactly after every step.
//   - Model level: the trained model under --attention streaming with its profiled pattern and
//     small windows: teacher-forced logits within the bf16 bound of the CPU's, and the same
//     greedy text but for near-ties, with CUDA graphs on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda_test_util.h"
#include "engine/batch_plan.h"
#include "engine/generator.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "sparse/head_pattern.h"

namespace lserve {
namespace {

struct Shape4 {
  int64_t heads, kv_heads, head_dim;
  int32_t page;
};

SparsityConfig streaming_policy(int32_t page, StreamingWindow prefill, StreamingWindow decode) {
  SparsityConfig s;
  s.policy = AttentionPolicy::Streaming;
  s.page_size = page;
  s.prefill_window = prefill;
  s.decode_window = decode;
  s.validate();
  return s;
}

// Both backends' caches, stepped in lockstep.
class StreamingRig {
 public:
  StreamingRig(const Shape4& s, const SparsityConfig& sparsity, uint32_t seed)
      : shape_(s), sparsity_(sparsity), rng_(seed), cpu_(make_cpu_backend(0)), gpu_(make_cuda_backend(CudaBackendOptions{})) {
    config_.num_layers = 2;
    config_.num_heads = s.heads;
    config_.num_kv_heads = s.kv_heads;
    config_.head_dim = s.head_dim;
    config_.hidden_size = s.heads * s.head_dim;
    // Half the KV heads stream: the first ones in layer 0, the last ones in layer 1.
    std::vector<std::vector<double>> scores(2, std::vector<double>(static_cast<size_t>(s.kv_heads), 1.0));
    for (int64_t i = 0; i < std::max<int64_t>(1, s.kv_heads / 2); ++i) {
      scores[0][static_cast<size_t>(i)] = 0.0;
      scores[1][static_cast<size_t>(s.kv_heads - 1 - i)] = 0.0;
    }
    pattern_ = HeadPattern::from_scores(scores, HeadRule{std::nullopt, 0.5}, "test");
    KvCacheOptions o;
    o.page_size = s.page;
    // Retrieval heads keep key summaries (for the page selector) whatever the policy.
    o.logical_page_size = sparsity.selects_pages() ? sparsity.logical_page_size : std::max(1, s.page / 4);
    o.retrieval_pages = 256;
    o.streaming_pages = 256;
    o.max_sequences = 8;
    cpu_cache_ = std::make_unique<KvCache>(config_, pattern_, o, *cpu_);
    gpu_cache_ = std::make_unique<KvCache>(config_, pattern_, o, *gpu_);
    // Unwritten and released slots read NaN on the GPU: a kernel that touches one shows.
    for (int64_t l = 0; l < 2; ++l)
      for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming})
        for (const Tensor& t : {gpu_cache_->k_pages(l, kind), gpu_cache_->v_pages(l, kind)}) {
          const std::vector<uint8_t> nan(t.nbytes(), 0xff);
          gpu_->upload(t, nan.data());
        }
  }

  ~StreamingRig() {
    for (auto& kv : cpu_seqs_) cpu_cache_->release(kv);
    for (auto& kv : gpu_seqs_) gpu_cache_->release(kv);
    EXPECT_EQ(gpu_cache_->allocator(HeadKind::Streaming).num_used(), 0);
  }

  void add_sequence() {
    cpu_seqs_.emplace_back();
    gpu_seqs_.emplace_back();
  }

  // One step: `new_tokens[b]` tokens of sequence b (0: idle), `decoding[b]` for its kind of row.
  void step(const std::vector<int64_t>& new_tokens, const std::vector<bool>& decoding,
            const std::vector<bool>& prefill_done) {
    std::vector<StepChunk> cc, gc;
    for (size_t b = 0; b < new_tokens.size(); ++b) {
      if (new_tokens[b] == 0) continue;
      const int64_t start = cpu_seqs_[b].num_tokens();
      cpu_cache_->reserve(cpu_seqs_[b], start + new_tokens[b]);
      gpu_cache_->reserve(gpu_seqs_[b], start + new_tokens[b]);
      cc.push_back({&cpu_seqs_[b], start, new_tokens[b], decoding[b], nullptr});
      gc.push_back({&gpu_seqs_[b], start, new_tokens[b], decoding[b], nullptr});
    }
    const AttentionBatch cb = plan_step(*cpu_cache_, cc, &sparsity_), gb = plan_step(*gpu_cache_, gc, &sparsity_);
    const int64_t T = cb.num_tokens(), H = shape_.heads, Hk = shape_.kv_heads, D = shape_.head_dim;
    cpu_->begin_step(cb, AttentionHeads{});
    gpu_->begin_step(gb, AttentionHeads{static_cast<int32_t>(H), static_cast<int32_t>(Hk), static_cast<int32_t>(D), 0,
                                        gpu_cache_.get()});
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (int64_t layer = 0; layer < 2; ++layer) {
      const auto k = test::random_bf16(static_cast<size_t>(T * Hk * D), rng_);
      const auto v = test::random_bf16(k.size(), rng_);
      const auto q = test::random_bf16(static_cast<size_t>(T * H * D), rng_);
      auto ck = test::put(*cpu_, Shape{T, Hk * D}, k), cv = test::put(*cpu_, Shape{T, Hk * D}, v);
      auto gk = test::put(*gpu_, Shape{T, Hk * D}, k), gv = test::put(*gpu_, Shape{T, Hk * D}, v);
      auto cq = test::put(*cpu_, Shape{T, H * D}, q), gq = test::put(*gpu_, Shape{T, H * D}, q);
      cpu_->kv_append(*cpu_cache_, layer, ck.t, cv.t, cb);
      gpu_->kv_append(*gpu_cache_, layer, gk.t, gv.t, gb);
      test::Owned co = test::make_tensor(*cpu_, DType::F32, Shape{T, H * D});
      test::Owned go = test::poisoned(*gpu_, DType::BF16, Shape{T, H * D});
      cpu_->attention(*cpu_cache_, layer, cq.t, cb, scale, co.t);
      gpu_->attention(*gpu_cache_, layer, gq.t, gb, scale, go.t);
      SCOPED_TRACE(::testing::Message() << "step " << steps_ << " layer " << layer);
      EXPECT_BF16_CLOSE(test::fetch(*gpu_, go.t), test::fetch(*cpu_, co.t));
      expect_same_summaries(layer);
    }
    gpu_->end_step(gb);
    if (sparsity_.selects_pages()) expect_same_selections();
    for (size_t b = 0; b < new_tokens.size(); ++b) {
      if (new_tokens[b] == 0) continue;
      trim_after_step(*cpu_cache_, cpu_seqs_[b], cpu_seqs_[b].num_tokens(), prefill_done[b], sparsity_);
      trim_after_step(*gpu_cache_, gpu_seqs_[b], gpu_seqs_[b].num_tokens(), prefill_done[b], sparsity_);
      if (decoding[b]) ++cpu_seqs_[b].decode_steps, ++gpu_seqs_[b].decode_steps;
    }
    ++steps_;
  }

 private:
  // The page selections the GPU made (read back at the end of the step) are the CPU's.
  void expect_same_selections() {
    for (size_t b = 0; b < cpu_seqs_.size(); ++b) {
      const auto& want = cpu_seqs_[b].selections;
      const auto& got = gpu_seqs_[b].selections;
      for (size_t u = 0; u < want.size(); ++u) {
        if (want[u].decode_step < 0) continue;  // never selected (a streaming head, or dense so far)
        ASSERT_LT(u, got.size()) << "sequence " << b;
        EXPECT_EQ(got[u].pages, want[u].pages) << "sequence " << b << " unit " << u << " step " << steps_;
        EXPECT_EQ(got[u].decode_step, want[u].decode_step) << "sequence " << b << " unit " << u;
        EXPECT_EQ(got[u].num_pages_then, want[u].num_pages_then) << "sequence " << b << " unit " << u;
        ++selections_compared_;
      }
    }
  }

 public:
  int64_t selections_compared() const { return selections_compared_; }

 private:
  int64_t selections_compared_ = 0;

  // The retrieval heads' key min/max of every logical page holding keys: exactly the CPU's (the
  // keys are bf16 values, so are their min and max).
  void expect_same_summaries(int64_t layer) {
    if (cpu_cache_->heads_in_pool(HeadKind::Retrieval, layer) == 0) return;
    const int64_t P = shape_.page, LP = cpu_cache_->logical_page_size(), D = shape_.head_dim;
    const int64_t R = cpu_cache_->heads_in_pool(HeadKind::Retrieval, layer);
    const auto want_min = test::fetch(*cpu_, cpu_cache_->key_min(layer));
    const auto want_max = test::fetch(*cpu_, cpu_cache_->key_max(layer));
    const auto got_min = test::fetch(*gpu_, gpu_cache_->key_min(layer));
    const auto got_max = test::fetch(*gpu_, gpu_cache_->key_max(layer));
    int64_t compared = 0;
    for (size_t b = 0; b < cpu_seqs_.size(); ++b) {
      const PageTable& ct = cpu_seqs_[b].retrieval;
      ASSERT_EQ(ct.pages, gpu_seqs_[b].retrieval.pages) << "the caches placed sequence " << b << " apart";
      for (size_t i = 0; i < ct.pages.size(); ++i) {
        const int64_t logical = std::min(P, ct.num_tokens - static_cast<int64_t>(i) * P);
        for (int64_t lp = 0; lp * LP < logical; ++lp)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < D; ++c) {
              const size_t at = static_cast<size_t>(((ct.pages[i] * R + r) * (P / LP) + lp) * D + c);
              ASSERT_EQ(got_min[at], want_min[at]) << "key min, sequence " << b << " page " << i << " row " << lp;
              ASSERT_EQ(got_max[at], want_max[at]) << "key max, sequence " << b << " page " << i << " row " << lp;
              ++compared;
            }
      }
    }
    EXPECT_GT(compared, 0);
  }

  Shape4 shape_;
  SparsityConfig sparsity_;
  std::mt19937 rng_;
  std::unique_ptr<Backend> cpu_, gpu_;
  ModelConfig config_;
  HeadPattern pattern_;
  std::unique_ptr<KvCache> cpu_cache_, gpu_cache_;
  std::vector<SequenceKv> cpu_seqs_, gpu_seqs_;
  int steps_ = 0;
};

class CudaStreaming : public ::testing::Test {
 protected:
  void SetUp() override {
    LSERVE_SKIP_WITHOUT_GPU();
    seed_ = test::fresh_seed();
  }
  uint32_t seed_ = 0;
};

TEST_F(CudaStreaming, PrefillChunksAndDecodeMatchTheCpu) {
  const std::vector<Shape4> shapes = {
      {32, 8, 128, 64},  // Llama-3-8B heads: the wgmma kernel
      {8, 2, 64, 16},    // wgmma at d 64, small pages
      {16, 8, 32, 32},   // the mma.sync kernel (d 32)
      {4, 4, 16, 16},    // MHA
      {64, 2, 64, 64},   // GQA 32: decode rows through the prefill kernel
      {6, 2, 8, 16},     // d 8: the reference kernel
  };
  for (const Shape4& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed_ << " heads " << s.heads << "/" << s.kv_heads << " d "
                                      << s.head_dim << " page " << s.page);
    // Windows that are not page multiples; the decode window inside the prefill window.
    const SparsityConfig sp = streaming_policy(s.page, {s.page + 5, 3 * s.page + 7}, {s.page / 2 + 3, s.page + 9});
    StreamingRig rig(s, sp, seed_);
    for (int b = 0; b < 3; ++b) rig.add_sequence();
    // Prefill of different lengths in chunks that are not page multiples, then all decode.
    const std::vector<int64_t> prompt = {9 * s.page + 13, 4 * s.page + 1, 2 * s.page - 3};
    // A sequence whose prompt is in decodes while the others still prefill (mixed batches).
    std::vector<int64_t> done(3, 0);
    const int64_t chunk = 2 * s.page + 11;
    while (done[0] < prompt[0]) {
      std::vector<int64_t> n(3);
      std::vector<bool> decoding(3), last(3);
      for (size_t b = 0; b < 3; ++b) {
        decoding[b] = done[b] == prompt[b];
        n[b] = decoding[b] ? 1 : std::min(chunk, prompt[b] - done[b]);
        if (!decoding[b]) done[b] += n[b];
        last[b] = done[b] == prompt[b];
      }
      rig.step(n, decoding, last);
    }
    for (int i = 0; i < 2 * s.page + 5; ++i) rig.step({1, 1, 1}, {true, true, true}, {true, true, true});
  }
}

// Page selection on the GPU (quest, psa, lserve): its selections and the sparse decode over
// them against the CPU's, through prefill and many decode steps (selections made and reused).
TEST_F(CudaStreaming, PageSelectionMatchesTheCpu) {
  struct Case {
    const char* name;
    AttentionPolicy policy;
    Shape4 shape;
    SelectionGranularity granularity = SelectionGranularity::KvHead;
  };
  const std::vector<Case> cases = {
      {"lserve d128", AttentionPolicy::LServe, {32, 8, 128, 64}},
      {"quest d64 small pages", AttentionPolicy::Quest, {8, 2, 64, 16}},
      {"psa d64", AttentionPolicy::Psa, {16, 4, 64, 32}},
      {"lserve d32 (mma.sync prefill)", AttentionPolicy::LServe, {16, 8, 32, 32}},
      {"lserve d128 per query head", AttentionPolicy::LServe, {32, 8, 128, 64}, SelectionGranularity::QueryHead},
      {"psa d64 per query head", AttentionPolicy::Psa, {16, 4, 64, 32}, SelectionGranularity::QueryHead},
      {"quest MHA per query head", AttentionPolicy::Quest, {4, 4, 32, 16}, SelectionGranularity::QueryHead},
  };
  for (const Case& c : cases) {
    const Shape4& s = c.shape;
    SCOPED_TRACE(::testing::Message() << c.name << ", seed " << seed_);
    SparsityConfig sp = streaming_policy(s.page, {s.page + 5, 3 * s.page + 7}, {s.page / 2 + 3, s.page + 9});
    sp.policy = c.policy;
    sp.granularity = c.granularity;
    sp.logical_page_size = s.page / 4;
    sp.token_budget = 3 * s.page;
    sp.selector_interval = 3;
    sp.psa_mass = 0.8;
    sp.psa_min_budget = 2 * s.page;
    sp.psa_max_budget = 5 * s.page;
    if (c.policy != AttentionPolicy::LServe) sp.streaming_ratio = 0.5;
    sp.validate();
    StreamingRig rig(s, sp, seed_);
    for (int b = 0; b < 2; ++b) rig.add_sequence();
    const std::vector<int64_t> prompt = {11 * s.page + 5, 6 * s.page + 2};
    std::vector<int64_t> done(2, 0);
    while (done[0] < prompt[0] || done[1] < prompt[1]) {
      std::vector<int64_t> n(2);
      std::vector<bool> decoding(2), last(2);
      for (size_t b = 0; b < 2; ++b) {
        decoding[b] = done[b] == prompt[b];
        n[b] = decoding[b] ? 1 : std::min<int64_t>(4 * s.page + 3, prompt[b] - done[b]);
        if (!decoding[b]) done[b] += n[b];
        last[b] = done[b] == prompt[b];
      }
      rig.step(n, decoding, last);
    }
    for (int i = 0; i < 12; ++i) rig.step({1, 1}, {true, true}, {true, true});
    EXPECT_GT(rig.selections_compared(), 0) << "no selection was made";
  }
}

// The trained model under a policy (its profiled pattern, windows far below the prompt), CPU and
// GPU, with CUDA graphs on: teacher-forced logits within the bf16 bound and the same greedy text
// but for near-ties.
void expect_trained_model_matches(const SparsityConfig& sp) {
  const auto dirs = test::bundled_model_dirs("head_pattern.txt");
  if (dirs.empty()) GTEST_SKIP() << "no bundled model with a head pattern";
  const auto dir = dirs.back();
  const ModelConfig config = ModelConfig::from_file(dir / "config.json");
  const HeadPattern pattern = HeadPattern::load(dir / "head_pattern.txt");
  auto cpu = make_cpu_backend(0);
  auto gpu = make_cuda_backend(0);
  const int32_t logical = sp.selects_pages() ? sp.logical_page_size : 0;
  struct Side {
    LlamaModel model;
    KvCache cache;
    Generator gen;
    Side(const ModelConfig& c, const std::filesystem::path& d, const HeadPattern& p, const SparsityConfig& s,
         Backend& b, int32_t logical_page_size)
        : model(c, load_weights(c, d, b), b, 2048),
          cache(c, p, cache_options(logical_page_size), b),
          gen(model, cache, nullptr, 40, &s) {}
    static KvCacheOptions cache_options(int32_t logical_page_size) {
      KvCacheOptions o;
      o.page_size = 16;
      o.logical_page_size = logical_page_size;
      o.retrieval_pages = 128;
      o.streaming_pages = 64;
      return o;
    }
  };
  Side c(config, dir, pattern, sp, *cpu, logical), g(config, dir, pattern, sp, *gpu, logical);
  SafetensorsFile ref(dir / "reference.safetensors");
  const auto& t = ref.tensors().at("prompt1.ids");
  std::vector<int32_t> prompt(t.nbytes / 4);
  std::memcpy(prompt.data(), t.data, t.nbytes);
  ASSERT_GT(prompt.size(), 100u) << "the prompt must outrun the windows";

  // Teacher-forced logits along the CPU's greedy continuation: within the bf16 bound.
  GenerationRequest req;
  req.prompt = prompt;
  req.max_tokens = 24;
  req.ignore_eos = true;
  const GenerationResult cpu_result = c.gen.run(req, nullptr);
  const auto& want = cpu_result.tokens;
  std::vector<int32_t> tokens = prompt;
  tokens.insert(tokens.end(), want.begin(), want.end() - 1);
  const auto lc = c.gen.score(tokens, static_cast<int64_t>(prompt.size()), 40);
  const auto lg = g.gen.score(tokens, static_cast<int64_t>(prompt.size()), 40);
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < lc.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(lc[i] - lg[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::abs(lc[i])));
  }
  EXPECT_LT(max_diff / max_ref, 3e-2) << "logits differ beyond bf16 rounding";
  // Greedy text: the same until a step where the CPU's top-2 margin is within the bound.
  const GenerationResult gpu_result = g.gen.run(req, nullptr);
  const auto& got = gpu_result.tokens;
  const int64_t V = config.vocab_size;
  size_t same = 0;
  while (same < want.size() && got[same] == want[same]) ++same;
  if (same < want.size()) {
    const float* row = lc.data() + static_cast<int64_t>(same) * V;
    float first = -INFINITY, second = -INFINITY;
    for (int64_t i = 0; i < V; ++i) {
      if (row[i] > first) second = first, first = row[i];
      else if (row[i] > second) second = row[i];
    }
    EXPECT_LE(first - second, 2 * 3e-2 * max_ref) << "parted at token " << same << " where the CPU was sure";
  }
  // The same text read the same keys (the same windows and selections): the statistics agree.
  if (same == want.size()) {
    EXPECT_GT(gpu_result.mean_kv_tokens_read, 0.0);
    EXPECT_DOUBLE_EQ(gpu_result.mean_kv_tokens_read, cpu_result.mean_kv_tokens_read) << "KV tokens read per head";
  }
  std::printf("  %s, trained model: logit rel error %.2e, %zu of %zu greedy tokens identical\n",
              std::string(policy_name(sp.policy)).c_str(), max_diff / max_ref, same, want.size());
  EXPECT_EQ(g.cache.allocator(HeadKind::Streaming).num_used(), 0) << "streaming pages leaked";
  EXPECT_EQ(g.cache.allocator(HeadKind::Retrieval).num_used(), 0) << "retrieval pages leaked";
  EXPECT_GT(cuda_step_stats(*gpu).replayed, 0) << "decode steps should replay recorded graphs";
}

TEST_F(CudaStreaming, TrainedModelMatchesTheCpu) {
  expect_trained_model_matches(streaming_policy(16, {16, 48}, {8, 24}));
}

// The same with LServe's page selection (a 64-token budget: the prompt's retrieval heads read a
// third of it), selections made and reused across recorded decode steps.
SparsityConfig trained_model_lserve(SelectionGranularity granularity) {
  SparsityConfig sp = streaming_policy(16, {16, 48}, {8, 24});
  sp.policy = AttentionPolicy::LServe;
  sp.granularity = granularity;
  sp.logical_page_size = 4;
  sp.token_budget = 64;
  sp.selector_interval = 2;
  sp.validate();
  return sp;
}

TEST_F(CudaStreaming, TrainedModelWithPageSelectionMatchesTheCpu) {
  expect_trained_model_matches(trained_model_lserve(SelectionGranularity::KvHead));
}

TEST_F(CudaStreaming, TrainedModelWithPerQueryHeadSelectionMatchesTheCpu) {
  expect_trained_model_matches(trained_model_lserve(SelectionGranularity::QueryHead));
}

}  // namespace
}  // namespace lserve
