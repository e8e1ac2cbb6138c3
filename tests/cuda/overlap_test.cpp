// Overlapped decode steps on the GPU (Generator::set_overlap_steps, EngineOptions::overlap_steps):
// the next step is queued, its token ids copied on the device from the tokens the step before
// drew, before that step's tokens are read back. It must compute exactly what the plain loop
// computes (bit-identical tokens, the same KV read), dense and under LServe's policy, where a
// step begun beside a selecting one reuses the selections where the selector left them on the
// GPU (cuda::carry_reused_lists, adding a page the context moved onto); and the steps must
// really overlap without waiting.
#include <gtest/gtest.h>

#include <random>

#include "cuda_test_util.h"
#include "mixed_batch.h"
#include "small_policies.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "model/weights.h"
#include "sparse/head_pattern.h"

namespace lserve {
namespace {

// The trained bundled model under a policy: its profiled head pattern, windows far below the
// prompt; decode steps replayed from CUDA graphs or (graphs = false) launched from the host.
struct Trained {
  std::filesystem::path dir = test::bundled_model_dirs("head_pattern.txt").back();
  ModelConfig config = ModelConfig::from_file(dir / "config.json");
  std::unique_ptr<Backend> backend;
  LlamaModel model;
  SparsityConfig sparsity;
  KvCache cache;

  explicit Trained(const SparsityConfig& s, bool graphs = true)
      : backend(make_cuda_backend(backend_options(graphs))),
        model(config, load_weights(config, dir, *backend), *backend, 4096),
        sparsity(s),
        cache(config,
              s.has_streaming_heads() ? HeadPattern::load(dir / "head_pattern.txt")
                                      : HeadPattern::all_retrieval(config.num_layers, config.num_kv_heads),
              options(s), *backend) {}
  static CudaBackendOptions backend_options(bool graphs) {
    CudaBackendOptions o;
    o.graphs = graphs;
    return o;
  }
  static KvCacheOptions options(const SparsityConfig& s) {
    KvCacheOptions o;
    o.page_size = s.page_size;
    o.logical_page_size = s.selects_pages() ? s.logical_page_size : 0;
    o.retrieval_pages = 1024;
    o.streaming_pages = s.has_streaming_heads() ? 512 : 0;
    o.max_sequences = 8;
    return o;
  }
  void expect_no_pages_used() const {
    EXPECT_EQ(cache.allocator(HeadKind::Retrieval).num_used(), 0) << "retrieval pages leaked";
    EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_used(), 0) << "streaming pages leaked";
  }
};

SparsityConfig dense() { return test::small_dense_policy(); }

// The trained model's windows (as its streaming tests run it), far below the prompts.
SparsityConfig lserve(SelectionGranularity granularity, int32_t interval) {
  SparsityConfig s = test::small_lserve_policy(interval);
  s.granularity = granularity;
  s.prefill_window = {16, 48};
  s.decode_window = {8, 24};
  s.validate();
  return s;
}

std::vector<int32_t> random_prompt(size_t n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

struct Case {
  const char* name;
  SparsityConfig sparsity;
  bool graphs = true;
};
std::vector<Case> cases() {
  return {{"dense", dense()},
          {"lserve, a selection per KV head, every 2 steps", lserve(SelectionGranularity::KvHead, 2)},
          {"lserve, a selection per KV head, every 4 steps", lserve(SelectionGranularity::KvHead, 4)},
          {"lserve, a selection per query head, every 3 steps", lserve(SelectionGranularity::QueryHead, 3)},
          // The CLI overlaps by default, --no-cuda-graphs included.
          {"lserve, a selection per KV head, every 4 steps, no CUDA graphs", lserve(SelectionGranularity::KvHead, 4),
           false}};
}

// The engine tests' options: no prefix caching, so that every page is free at the end.
EngineOptions engine_options(bool overlap, int32_t max_running) {
  EngineOptions o;
  o.scheduler.max_running = max_running;
  o.prefix_caching = false;
  o.overlap_steps = overlap;
  return o;
}

TEST(CudaOverlap, GeneratorComputesWhatThePlainLoopDoes) {
  LSERVE_SKIP_WITHOUT_GPU();
  if (test::bundled_model_dirs("head_pattern.txt").empty()) GTEST_SKIP() << "no bundled model with a head pattern";
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    Trained t(c.sparsity, c.graphs);
    Generator gen(t.model, t.cache, nullptr, 100, &t.sparsity);
    for (float temperature : {0.0f, 0.8f}) {
      GenerationRequest req;
      req.prompt = random_prompt(700, 3, t.config.vocab_size);
      req.max_tokens = 40;
      req.ignore_eos = true;
      req.sampling.temperature = temperature;
      req.sampling.top_p = 0.95f;
      req.sampling.seed = 9;
      gen.set_overlap_steps(false);
      const GenerationResult want = gen.run(req, nullptr);
      gen.set_overlap_steps(true);
      const CudaStepStats before = cuda_step_stats(*t.backend);
      const GenerationResult got = gen.run(req, nullptr);
      const int64_t overlapped = cuda_step_stats(*t.backend).overlapped - before.overlapped;
      const int64_t waits = cuda_step_stats(*t.backend).overlap_waits - before.overlap_waits;
      EXPECT_EQ(got.tokens, want.tokens);
      EXPECT_DOUBLE_EQ(got.mean_kv_tokens_read, want.mean_kv_tokens_read);
      // Every decode step but the first overlaps, and none waits for the selections before it.
      EXPECT_EQ(overlapped, 38);
      EXPECT_EQ(waits, 0);
      std::printf("  %s, temperature %.1f: %lld of 39 decode steps overlapped, %lld waited for selections\n",
                  c.name, temperature, static_cast<long long>(overlapped), static_cast<long long>(waits));

      // Ended by an EOS token mid-way: the step queued past it is dropped.
      GenerationRequest eos = req;
      eos.ignore_eos = false;
      eos.eos_token_ids = {want.tokens[17]};
      gen.set_overlap_steps(false);
      const GenerationResult want_eos = gen.run(eos, nullptr);
      gen.set_overlap_steps(true);
      const GenerationResult got_eos = gen.run(eos, nullptr);
      EXPECT_EQ(got_eos.tokens, want_eos.tokens);
      EXPECT_EQ(got_eos.finish_reason, FinishReason::Eos);
      t.expect_no_pages_used();
    }
  }
}

// Requests joining and leaving a batch (so the recorded shapes change), greedy and sampled.
TEST(CudaOverlap, EngineServesWhatItServesWithoutOverlap) {
  LSERVE_SKIP_WITHOUT_GPU();
  if (test::bundled_model_dirs("head_pattern.txt").empty()) GTEST_SKIP() << "no bundled model with a head pattern";
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    auto run = [&](bool overlap) {
      Trained t(c.sparsity, c.graphs);
      Engine engine(t.model, t.cache, nullptr, t.sparsity, engine_options(overlap, 8));
      const auto out = test::serve_mixed_batch(engine, t.config.vocab_size);
      t.expect_no_pages_used();
      return std::make_pair(out, cuda_step_stats(*t.backend).overlapped);
    };
    const auto [plain, none] = run(false);
    const auto [overlapped, count] = run(true);
    EXPECT_EQ(none, 0);
    // Under LServe too: a step after a selecting one reuses the selections on the device.
    EXPECT_GT(count, 20);
    for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(overlapped[i], plain[i]) << "request " << i;
    std::printf("  %s: %lld steps overlapped\n", c.name, static_cast<long long>(count));
  }
}

// Sequences that select in different phases (their own selector intervals, and prompts that
// enter decode at different steps): a step reuses some lists from the host and some where the
// selector of the step before left them, beside units that select afresh.
TEST(CudaOverlap, SelectionsOutOfPhaseInOneBatch) {
  LSERVE_SKIP_WITHOUT_GPU();
  if (test::bundled_model_dirs("head_pattern.txt").empty()) GTEST_SKIP() << "no bundled model with a head pattern";
  auto run = [&](bool overlap) {
    Trained t(lserve(SelectionGranularity::KvHead, 2));
    Engine engine(t.model, t.cache, nullptr, t.sparsity, engine_options(overlap, 4));
    std::vector<std::vector<int32_t>> out(4);
    for (int i = 0; i < 4; ++i) {
      RequestParams p;
      p.prompt = random_prompt(250 + 61 * static_cast<size_t>(i), 70 + static_cast<uint32_t>(i), t.config.vocab_size);
      p.max_tokens = 45;
      p.ignore_eos = true;
      SparsityConfig own = t.sparsity;
      own.selector_interval = 2 + i % 3;  // 2, 3, 4, 2
      p.sparsity = own;
      engine.submit(p, [&out, i](RequestOutput&& o) {
        out[static_cast<size_t>(i)].insert(out[static_cast<size_t>(i)].end(), o.tokens.begin(), o.tokens.end());
      });
    }
    engine.run_until_idle();
    t.expect_no_pages_used();
    const CudaStepStats s = cuda_step_stats(*t.backend);
    return std::make_tuple(out, s.overlapped, s.overlap_waits);
  };
  const auto [plain, none, no_waits] = run(false);
  const auto [overlapped, count, waits] = run(true);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(overlapped[i], plain[i]) << "request " << i;
  EXPECT_EQ(none, 0);
  EXPECT_GT(count, 20);
  std::printf("  %lld steps overlapped, %lld waited for the selections before them\n", static_cast<long long>(count),
              static_cast<long long>(waits));
}

// Requests that end mid-pipeline under LServe: on an EOS token (learned from a first run), and
// aborted while steps are queued, among them the first decode step (which selects afresh). The
// queued steps' ends write into those sequences: they must be kept, and their pages then freed.
TEST(CudaOverlap, EngineEndsRequestsMidPipeline) {
  LSERVE_SKIP_WITHOUT_GPU();
  if (test::bundled_model_dirs("head_pattern.txt").empty()) GTEST_SKIP() << "no bundled model with a head pattern";
  Trained t(lserve(SelectionGranularity::KvHead, 3));
  Engine engine(t.model, t.cache, nullptr, t.sparsity, engine_options(true, 8));
  auto request = [&](uint32_t seed) {
    RequestParams p;
    p.prompt = random_prompt(300, seed, t.config.vocab_size);
    p.max_tokens = 60;
    p.ignore_eos = true;
    return p;
  };
  std::vector<int32_t> first;  // the tokens of a request alone, to end a second one on
  engine.submit(request(1), [&](RequestOutput&& o) { first.insert(first.end(), o.tokens.begin(), o.tokens.end()); });
  engine.run_until_idle();
  ASSERT_EQ(first.size(), 60u);
  for (int eos_at : {3, 4, 5, 6}) {  // every phase of the selector's interval
    SCOPED_TRACE(eos_at);
    std::vector<FinishReason> reasons(3, FinishReason::Error);
    std::vector<uint64_t> ids;
    for (int i = 0; i < 3; ++i) {
      RequestParams p = request(i == 0 ? 1 : 10 + static_cast<uint32_t>(i));
      if (i == 0) {
        p.ignore_eos = false;
        p.eos_token_ids = {first[static_cast<size_t>(eos_at)]};
      }
      ids.push_back(engine.submit(p, [&reasons, i](RequestOutput&& o) {
        if (o.finished) reasons[static_cast<size_t>(i)] = o.finish_reason;
      }));
    }
    for (int step = 0; step < 2 * eos_at + 4 && engine.step(); ++step)
      if (step == eos_at + 1) engine.abort(ids[1]);
    engine.abort(ids[2]);  // wherever it is
    engine.run_until_idle();
    EXPECT_EQ(reasons[1], FinishReason::Abort);
    EXPECT_EQ(reasons[2], FinishReason::Abort);
    EXPECT_NE(reasons[0], FinishReason::Error);
    t.expect_no_pages_used();
  }
  EXPECT_GT(cuda_step_stats(*t.backend).overlapped, 0);
}

}  // namespace
}  // namespace lserve
