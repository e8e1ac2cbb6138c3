// Overlapped decoding (Generator::set_overlap_steps, LlamaModel::queue_sampled): the host
// queues decode step n + 1, fed by the token step n draws on the device, before it reads step
// n's token back. The CUDA backend is where this pays; its host logic is tested here on the CPU
// backend behind a wrapper that draws tokens in sample() and lets steps overlap, against the
// plain loop on the same wrapper: the same tokens, text, finish reasons and KV reads, under dense
// and sparse attention, stopping at EOS and stop strings mid-pipeline, and no page left over.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <deque>
#include <memory>

#include "backend/backend.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "eval/splitmix64.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "small_policies.h"
#include "test_util.h"

namespace lserve {
namespace {

const std::filesystem::path kModelDir = std::filesystem::path(LSERVE_SOURCE_DIR) / "models/tiny-llama";

// The CPU backend, with tokens drawn in sample() (greedy, or by temperature from a uniform keyed
// by the row's seed and counter) and overlapping steps allowed: its ops run at once, so a step
// queued early has simply run early. Counts the steps begun while another was open.
class DrawingCpuBackend final : public Backend {
 public:
  Device device() const override { return cpu_->device(); }
  std::string name() const override { return "cpu, drawing its own tokens"; }
  DType compute_dtype() const override { return cpu_->compute_dtype(); }
  std::shared_ptr<DeviceMemory> allocate(size_t bytes) override { return cpu_->allocate(bytes); }
  void upload(Tensor dst, const void* src) override { cpu_->upload(dst, src); }
  void download(const Tensor& src, void* dst) override { cpu_->download(src, dst); }
  Tensor prepare_weight(const Tensor& w, std::shared_ptr<DeviceMemory>* keep) override {
    return cpu_->prepare_weight(w, keep);
  }
  void begin_step(const AttentionBatch& batch, const AttentionHeads& heads) override {
    if (!reads_.empty()) {
      EXPECT_TRUE(overlap_next_) << "a step begun beside an open one without overlap_next_step()";
      ++overlapped;
    }
    overlap_next_ = false;
    reads_.push_back({});
    batch_ = &batch;
    steps.push_back({batch.num_seqs(), batch.num_tokens()});
    cpu_->begin_step(batch, heads);
  }
  // As the CUDA backend does, a step's KV reads reach its sequences at its end_step.
  void run_step(const StepKey& key, bool recordable, const std::function<void()>& ops) override {
    ASSERT_FALSE(reads_.empty()) << "run_step outside a step";
    std::vector<std::array<int64_t, 2>> before;
    for (const SequenceKv* seq : batch_->sequences) before.push_back({seq->kv_tokens_read, seq->kv_head_reads});
    cpu_->run_step(key, recordable, ops);
    for (size_t i = 0; i < before.size(); ++i) {
      SequenceKv& seq = *batch_->sequences[i];
      reads_.back().push_back({seq.kv_tokens_read - before[i][0], seq.kv_head_reads - before[i][1]});
      seq.kv_tokens_read = before[i][0];
      seq.kv_head_reads = before[i][1];
    }
  }
  void end_step(const AttentionBatch& batch) override {
    ASSERT_FALSE(reads_.empty()) << "end_step of no open step";
    const std::vector<std::array<int64_t, 2>> reads = reads_.front();
    reads_.pop_front();
    ASSERT_TRUE(reads.empty() || reads.size() == batch.sequences.size());
    // A GPU backend writes back into the step's sequences here (selections, read counts): they
    // must still hold their KV, also when they finished meanwhile.
    for (const SequenceKv* seq : batch.sequences) EXPECT_GT(seq->num_tokens(), 0) << "a step ended on released KV";
    for (size_t i = 0; i < reads.size(); ++i) {
      batch.sequences[i]->kv_tokens_read += reads[i][0];
      batch.sequences[i]->kv_head_reads += reads[i][1];
    }
    cpu_->end_step(batch);
  }
  void overlap_next_step() override { overlap_next_ = true; }
  void abandon_step() override {
    if (!reads_.empty()) reads_.pop_back();
  }
  bool can_begin_before_end() const override { return true; }

  bool samples_on_device() const override { return true; }
  void set_sampling(std::span<const DeviceSampling> rows) override { rows_.assign(rows.begin(), rows.end()); }
  void sample(const Tensor& logits, Tensor tokens) override {
    const int64_t R = logits.dim(0), V = logits.dim(1);
    ASSERT_EQ(static_cast<size_t>(R), rows_.size());
    for (int64_t r = 0; r < R; ++r) {
      const float* l = logits.as<float>() + r * V;
      const DeviceSampling& p = rows_[static_cast<size_t>(r)];
      int32_t best = 0;
      for (int32_t i = 1; i < V; ++i) best = l[i] > l[best] ? i : best;
      if (p.temperature > 0) {
        double total = 0;
        for (int64_t i = 0; i < V; ++i) total += std::exp((l[i] - l[best]) / p.temperature);
        const double u = static_cast<double>(eval::mix64(p.seed * 1000003 + p.counter) >> 11) * 0x1p-53 * total;
        double acc = 0;
        for (int32_t i = 0; i < V; ++i) {
          acc += std::exp((l[i] - l[best]) / p.temperature);
          if (acc > u) {
            best = i;
            break;
          }
        }
      }
      tokens.as<int32_t>()[r] = best;
    }
  }

  void gather_rows(const Tensor& src, std::span<const int32_t> rows, Tensor dst) override {
    cpu_->gather_rows(src, rows, dst);
  }
  void embedding(const Tensor& ids, const Tensor& table, Tensor out) override { cpu_->embedding(ids, table, out); }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor out) override { cpu_->rms_norm(x, w, eps, out); }
  void add_rms_norm(Tensor residual, const Tensor& x, const Tensor& w, float eps, Tensor out) override {
    cpu_->add_rms_norm(residual, x, w, eps, out);
  }
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor out) override {
    cpu_->linear(x, w, bias, out);
  }
  void head_rms_norm(Tensor x, int64_t head_dim, const Tensor& w, float eps) override {
    cpu_->head_rms_norm(x, head_dim, w, eps);
  }
  void rope(Tensor q, Tensor k, const Tensor& positions, const Tensor& cos_sin, int64_t head_dim) override {
    cpu_->rope(q, k, positions, cos_sin, head_dim);
  }
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor out) override { cpu_->silu_mul(gate, up, out); }
  void kv_append(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v, const AttentionBatch& batch) override {
    cpu_->kv_append(cache, layer, k, v, batch);
  }
  void attention(const KvCache& cache, int64_t layer, const Tensor& q, const AttentionBatch& batch, float scale,
                 Tensor out) override {
    cpu_->attention(cache, layer, q, batch, scale, out);
  }
  void synchronize() override { cpu_->synchronize(); }

  int64_t overlapped = 0;
  std::vector<std::array<int64_t, 2>> steps;  // each step's sequences and tokens, in order

 private:
  std::unique_ptr<Backend> cpu_ = make_cpu_backend(2);
  std::vector<DeviceSampling> rows_;
  bool overlap_next_ = false;
  const AttentionBatch* batch_ = nullptr;                   // the newest open step's
  std::deque<std::vector<std::array<int64_t, 2>>> reads_;  // per open step, its sequences' KV reads
};

struct Rig {
  DrawingCpuBackend backend;
  ModelConfig config = ModelConfig::from_file(kModelDir / "config.json");
  LlamaModel model{config, load_weights(config, kModelDir, backend), backend, 2048};
  Tokenizer tokenizer = Tokenizer::from_dir(kModelDir);
  SparsityConfig sparsity;
  std::unique_ptr<KvCache> cache;

  explicit Rig(bool sparse) {
    sparsity = sparse ? test::small_lserve_policy(3) : test::small_dense_policy();
    KvCacheOptions kv;
    kv.page_size = sparsity.page_size;
    kv.logical_page_size = sparse ? sparsity.logical_page_size : 0;
    kv.retrieval_pages = 64;
    kv.streaming_pages = sparse ? 64 : 0;
    const HeadPattern pattern = sparse ? HeadPattern::uniform(config.num_layers, config.num_kv_heads, 0.5)
                                       : HeadPattern::all_retrieval(config.num_layers, config.num_kv_heads);
    cache = std::make_unique<KvCache>(config, pattern, kv, backend);
  }

  GenerationResult run(const GenerationRequest& req, bool overlap) {
    Generator gen(model, *cache, &tokenizer, 50, &sparsity);
    gen.set_overlap_steps(overlap);
    const int64_t before = backend.overlapped;
    GenerationResult r = gen.run(req, nullptr);
    overlapped = backend.overlapped - before;
    EXPECT_EQ(cache->allocator(HeadKind::Retrieval).num_used(), 0) << "retrieval pages left over";
    EXPECT_EQ(cache->allocator(HeadKind::Streaming).num_used(), 0) << "streaming pages left over";
    EXPECT_EQ(model.queued_steps(), 0u);
    return r;
  }
  int64_t overlapped = 0;  // of the last run
};

GenerationRequest request(size_t prompt_len, int64_t max_tokens, uint32_t seed) {
  GenerationRequest req;
  std::mt19937 rng(seed);
  for (size_t i = 0; i < prompt_len; ++i) req.prompt.push_back(static_cast<int32_t>(rng() % 4000));
  req.max_tokens = max_tokens;
  req.ignore_eos = true;
  return req;
}

void expect_same(const GenerationResult& got, const GenerationResult& want) {
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.text, want.text);
  EXPECT_EQ(got.finish_reason, want.finish_reason);
  EXPECT_EQ(got.decode_steps, want.decode_steps);
  EXPECT_DOUBLE_EQ(got.mean_kv_tokens_read, want.mean_kv_tokens_read);
}

class OverlappedDecode : public ::testing::TestWithParam<bool> {};

TEST_P(OverlappedDecode, GeneratesWhatThePlainLoopDoes) {
  Rig rig(GetParam());
  for (int64_t max_tokens : {1, 2, 3, 29}) {
    for (float temperature : {0.0f, 0.8f}) {
      SCOPED_TRACE(testing::Message() << max_tokens << " tokens at temperature " << temperature);
      GenerationRequest req = request(230, max_tokens, 7);
      req.sampling.temperature = temperature;
      req.sampling.seed = 11;
      const GenerationResult want = rig.run(req, false);
      EXPECT_EQ(rig.overlapped, 0);
      const GenerationResult got = rig.run(req, true);
      expect_same(got, want);
      EXPECT_EQ(rig.overlapped, std::max<int64_t>(max_tokens - 2, 0)) << "every decode step but the first overlaps";
    }
  }
}

TEST_P(OverlappedDecode, StopsMidPipelineAtEosAndStopStrings) {
  Rig rig(GetParam());
  const GenerationRequest base = request(180, 24, 3);
  const GenerationResult full = rig.run(base, false);
  ASSERT_EQ(full.tokens.size(), 24u);

  GenerationRequest eos = base;  // the 10th token ends it: the step queued after it is dropped
  eos.ignore_eos = false;
  eos.eos_token_ids = {full.tokens[9]};
  const GenerationResult want_eos = rig.run(eos, false);
  ASSERT_EQ(want_eos.finish_reason, FinishReason::Eos);
  expect_same(rig.run(eos, true), want_eos);

  GenerationRequest stop = base;  // a stop string inside the text
  ASSERT_GT(full.text.size(), 12u);
  stop.stop = {full.text.substr(full.text.size() / 2, 3)};
  const GenerationResult want_stop = rig.run(stop, false);
  ASSERT_EQ(want_stop.finish_reason, FinishReason::Stop);
  expect_same(rig.run(stop, true), want_stop);
}

INSTANTIATE_TEST_SUITE_P(DenseAndSparse, OverlappedDecode, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "lserve" : "dense"; });

// The serving engine, overlapped: requests of different lengths, budgets and samplers finish at
// different steps (each one past its end is dropped), one ends at an EOS token, one on a stop
// string, one is aborted mid-decode, and one arrives while the others decode.
struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::string> text;
  std::vector<FinishReason> reasons;
  int64_t overlapped = 0;

  explicit EngineRun(size_t requests) : tokens(requests), text(requests), reasons(requests, FinishReason::Error) {}
  OutputCallback output_of(size_t i) {
    return [this, i](RequestOutput&& o) {
      tokens[i].insert(tokens[i].end(), o.tokens.begin(), o.tokens.end());
      text[i] += o.text;
      if (o.finished) reasons[i] = o.finish_reason;
    };
  }
};

// Chunked prefill beside the decodes; no prefix caching, so that every page is free at the end.
EngineOptions engine_options(bool overlap, int64_t batched_tokens, int32_t running) {
  EngineOptions options;
  options.overlap_steps = overlap;
  options.scheduler.max_batched_tokens = batched_tokens;
  options.scheduler.max_running = running;
  options.prefix_caching = false;
  return options;
}

EngineRun run_engine(bool sparse, bool overlap, const std::vector<RequestParams>& requests, int abort_after) {
  Rig rig(sparse);
  Engine engine(rig.model, *rig.cache, &rig.tokenizer, rig.sparsity, engine_options(overlap, 128, 8));
  EngineRun out(requests.size());
  std::vector<uint64_t> ids(requests.size());
  auto submit = [&](size_t i) { ids[i] = engine.submit(requests[i], out.output_of(i)); };
  for (size_t i = 0; i + 1 < requests.size(); ++i) submit(i);
  // Step by step: the last request arrives, and the first is aborted, while the others decode.
  for (int step = 0; engine.step() || engine.stats().running > 0 || step < 40; ++step) {
    if (step == 25) submit(requests.size() - 1);
    if (step == abort_after) engine.abort(ids[0]);
  }
  engine.run_until_idle();
  out.overlapped = rig.backend.overlapped;
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.retrieval_pages_used + stats.streaming_pages_used, 0) << "pages left in use";
  EXPECT_EQ(rig.model.queued_steps(), 0u);
  return out;
}

TEST_P(OverlappedDecode, EngineServesWhatItServesWithoutOverlap) {
  std::vector<RequestParams> requests;
  for (int i = 0; i < 5; ++i) {
    RequestParams p;
    const GenerationRequest g = request(60 + 37 * static_cast<size_t>(i), 0, 20 + static_cast<uint32_t>(i));
    p.prompt = g.prompt;
    p.max_tokens = i == 0 ? 80 : 12 + 5 * i;
    p.ignore_eos = true;
    p.sampling.temperature = i % 2 ? 0.7f : 0.0f;
    p.sampling.seed = 5 + static_cast<uint64_t>(i);
    requests.push_back(p);
  }
  // Learn an EOS and a stop string from a first run, then end requests 1 and 2 on them.
  const EngineRun plain0 = run_engine(GetParam(), false, requests, 1 << 30);
  requests[1].ignore_eos = false;
  requests[1].eos_token_ids = {plain0.tokens[1][6]};
  ASSERT_GT(plain0.text[2].size(), 10u);
  requests[2].stop = {plain0.text[2].substr(plain0.text[2].size() / 2, 2)};

  const EngineRun want = run_engine(GetParam(), false, requests, 30);
  EXPECT_EQ(want.overlapped, 0);
  const EngineRun got = run_engine(GetParam(), true, requests, 30);
  EXPECT_GT(got.overlapped, 10);
  EXPECT_EQ(want.reasons[0], FinishReason::Abort);
  EXPECT_EQ(want.reasons[1], FinishReason::Eos);
  EXPECT_EQ(want.reasons[2], FinishReason::Stop);
  EXPECT_EQ(got.reasons, want.reasons);
  for (size_t i = 1; i < requests.size(); ++i) {  // the aborted one may stop a token later or sooner
    EXPECT_EQ(got.tokens[i], want.tokens[i]) << "request " << i;
    EXPECT_EQ(got.text[i], want.text[i]) << "request " << i;
  }
}

// Requests that end at different steps, by length (the step after one's last token leaves it
// out, its tokens gathered from the rows that go on) or on an EOS token (the step queued past it
// drops its row, and the one after leaves it out): every decode step but the first overlaps.
TEST_P(OverlappedDecode, EngineGoesOnPastRequestsThatEnd) {
  std::vector<RequestParams> requests;
  for (int i = 0; i < 3; ++i) {
    RequestParams p;
    p.prompt = request(100, 0, 50 + static_cast<uint32_t>(i)).prompt;
    p.max_tokens = 10 * (i + 1);
    p.ignore_eos = true;
    requests.push_back(p);
  }
  auto run = [&](const std::vector<RequestParams>& rs, int64_t* overlapped) {
    Rig rig(GetParam());
    Engine engine(rig.model, *rig.cache, &rig.tokenizer, rig.sparsity, engine_options(true, 2048, 64));
    std::vector<std::vector<int32_t>> got(rs.size());
    for (size_t i = 0; i < rs.size(); ++i)
      engine.submit(rs[i], [&got, i](RequestOutput&& o) { got[i].insert(got[i].end(), o.tokens.begin(), o.tokens.end()); });
    engine.run_until_idle();
    EXPECT_EQ(rig.cache->allocator(HeadKind::Retrieval).num_used(), 0);
    EXPECT_EQ(rig.cache->allocator(HeadKind::Streaming).num_used(), 0);
    *overlapped = rig.backend.overlapped;
    return got;
  };
  int64_t overlapped = 0;
  const auto got = run(requests, &overlapped);
  // One prefill step draws every first token; the steps drawing tokens 3..30 of the longest
  // are queued beside the one before.
  EXPECT_EQ(overlapped, 28);
  const EngineRun want = run_engine(GetParam(), false, requests, 1 << 30);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i].size(), static_cast<size_t>(10 * (i + 1)));
    EXPECT_EQ(got[i], want.tokens[i]) << "request " << i;
  }
  // The longest ends early instead, on an EOS: the last of its tokens that no earlier one is.
  size_t at = 0;
  for (size_t i = 0; i < got[2].size(); ++i)
    if (std::find(got[2].begin(), got[2].begin() + static_cast<std::ptrdiff_t>(i), got[2][i]) ==
        got[2].begin() + static_cast<std::ptrdiff_t>(i))
      at = i;
  ASSERT_GE(at, 1u) << "no token to end on after a decode step";
  requests[2].ignore_eos = false;
  requests[2].eos_token_ids = {got[2][at]};
  const auto ended = run(requests, &overlapped);
  EXPECT_EQ(ended[2], std::vector<int32_t>(got[2].begin(), got[2].begin() + static_cast<std::ptrdiff_t>(at)));
  EXPECT_EQ(ended[1], got[1]);
  EXPECT_EQ(ended[0], got[0]);
  // Step k draws token k (0-based): the second request draws up to 19, the third up to `at` (the
  // EOS) and one step past it; all but the first decode step overlap.
  EXPECT_EQ(overlapped, static_cast<int64_t>(std::max<size_t>(19, at + 1)) - 1);
}

// More requests than the batch holds (max_running 2): while the others wait, a full batch whose
// rows all go on overlaps too, since the scheduler could admit none of them; the step before a
// row's last token drains the pipeline, so that the next plan admits the first waiting request
// as the plain loop does: the same steps, of the same sequences and tokens, in the same order.
TEST_P(OverlappedDecode, EngineOverlapsAFullBatchWhileRequestsWait) {
  const int64_t budgets[] = {10, 20, 15, 12};
  std::vector<RequestParams> requests;
  for (int i = 0; i < 4; ++i) {
    RequestParams p;
    p.prompt = request(100, 0, 70 + static_cast<uint32_t>(i)).prompt;
    p.max_tokens = budgets[i];
    p.ignore_eos = true;
    p.sampling.temperature = i % 2 ? 0.8f : 0.0f;
    p.sampling.seed = 3 + static_cast<uint64_t>(i);
    requests.push_back(p);
  }
  struct Run {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<std::array<int64_t, 2>> steps;
    int64_t overlapped = 0;
  };
  auto run = [&](const std::vector<RequestParams>& rs, bool overlap) {
    Rig rig(GetParam());
    Engine engine(rig.model, *rig.cache, &rig.tokenizer, rig.sparsity, engine_options(overlap, 2048, 2));
    Run out;
    out.tokens.resize(rs.size());
    for (size_t i = 0; i < rs.size(); ++i)
      engine.submit(rs[i], [&out, i](RequestOutput&& o) {
        out.tokens[i].insert(out.tokens[i].end(), o.tokens.begin(), o.tokens.end());
      });
    engine.run_until_idle();
    EXPECT_EQ(rig.cache->allocator(HeadKind::Retrieval).num_used(), 0);
    EXPECT_EQ(rig.cache->allocator(HeadKind::Streaming).num_used(), 0);
    out.steps = rig.backend.steps;
    out.overlapped = rig.backend.overlapped;
    return out;
  };
  const Run want = run(requests, false);
  const Run got = run(requests, true);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(got.tokens[i].size(), static_cast<size_t>(budgets[i]));
    EXPECT_EQ(got.tokens[i], want.tokens[i]) << "request " << i;
  }
  // Batches: {0, 1} until 0's 10th token, then {1, 2} until 1's 20th, then {2, 3}, then {3};
  // each new request's prompt is prefilled beside the row that goes on.
  EXPECT_EQ(got.steps, want.steps);
  // Each batch begins with a prefill step and a first decode step that is not overlapped; the
  // steps drawing tokens 3..10 of request 0 and 13..20 of request 1 are, while requests wait
  // (8 + 8), and then those drawing 13..15 of request 2 and 6..12 of request 3 (10). Without
  // overlapping while requests wait, only the last 10.
  EXPECT_EQ(got.overlapped, 26);

  // Request 1 (sampled) ends on an EOS instead while request 0 still runs: on the first of its
  // tokens 4..9 that no earlier one equals. Its place is freed a step later than without
  // overlap, so request 2's prompt is prefilled a step later; what every request gets is the same.
  const std::vector<int32_t>& drawn = want.tokens[1];
  size_t at = 3;
  while (at < 9 && std::find(drawn.begin(), drawn.begin() + static_cast<std::ptrdiff_t>(at), drawn[at]) !=
                       drawn.begin() + static_cast<std::ptrdiff_t>(at))
    ++at;
  ASSERT_LT(at, 9u) << "no token to end on while the batch is full";
  std::vector<RequestParams> eos = requests;
  eos[1].ignore_eos = false;
  eos[1].eos_token_ids = {drawn[at]};
  const Run want_eos = run(eos, false);
  const Run got_eos = run(eos, true);
  ASSERT_EQ(want_eos.tokens[1].size(), at);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(got_eos.tokens[i], want_eos.tokens[i]) << "request " << i;
  auto second_prefill = [](const Run& r) {  // the step that prefills request 2's prompt
    size_t prefills = 0;
    for (size_t k = 0; k < r.steps.size(); ++k)
      if (r.steps[k][1] > r.steps[k][0] && ++prefills == 2) return k;
    return r.steps.size();
  };
  EXPECT_EQ(second_prefill(got_eos), second_prefill(want_eos) + 1);
  EXPECT_GT(got_eos.overlapped, 0);
}

// Random traffic: requests of random lengths and budgets arriving at random steps, greedy or
// sampled, some ending on an EOS token or a stop string, some aborted at a random step. Every
// request that is not aborted gets the same tokens, text and finish reason as without overlap,
// and no page is left in use at the end. (Overlap admits an arrival a step later, so batches
// differ: the CPU's kernels are batch-invariant, and draws depend on the request alone.)
TEST_P(OverlappedDecode, RandomTrafficServesWhatItServesWithoutOverlap) {
  std::mt19937 rng(GetParam() ? 31 : 17);
  struct Arrival {
    RequestParams params;
    int step;        // the engine step it arrives at
    int abort_step;  // the step it is aborted at, or -1
  };
  std::vector<Arrival> traffic;
  for (int i = 0; i < 14; ++i) {
    Arrival a;
    a.params.prompt = request(20 + rng() % 180, 0, 100 + static_cast<uint32_t>(i)).prompt;
    a.params.max_tokens = 1 + static_cast<int64_t>(rng() % 40);
    a.params.ignore_eos = true;
    if (rng() % 3 == 0) {
      a.params.sampling.temperature = 0.8f;
      a.params.sampling.seed = rng();
    }
    a.step = static_cast<int>(rng() % 60);
    a.abort_step = rng() % 5 == 0 ? a.step + static_cast<int>(rng() % 30) : -1;
    traffic.push_back(a);
  }
  auto serve = [&](bool overlap) {
    Rig rig(GetParam());
    Engine engine(rig.model, *rig.cache, &rig.tokenizer, rig.sparsity, engine_options(overlap, 96, 6));
    EngineRun out(traffic.size());
    std::vector<uint64_t> ids(traffic.size());
    for (int step = 0; step < 400; ++step) {
      for (size_t i = 0; i < traffic.size(); ++i) {
        if (traffic[i].step == step) ids[i] = engine.submit(traffic[i].params, out.output_of(i));
        if (traffic[i].abort_step == step) engine.abort(ids[i]);
      }
      engine.step();
    }
    engine.run_until_idle();
    EXPECT_EQ(rig.cache->allocator(HeadKind::Retrieval).num_used(), 0) << "retrieval pages left in use";
    EXPECT_EQ(rig.cache->allocator(HeadKind::Streaming).num_used(), 0) << "streaming pages left in use";
    EXPECT_EQ(rig.model.queued_steps(), 0u);
    if (overlap) {
      EXPECT_GT(rig.backend.overlapped, 20);
    }
    return out;
  };
  // EOS tokens and stop strings learned from a first run.
  const EngineRun first = serve(false);
  for (size_t i = 0; i < traffic.size(); ++i) {
    const auto& t = first.tokens[i];
    if (t.size() > 4 && i % 3 == 1) {
      traffic[i].params.ignore_eos = false;
      traffic[i].params.eos_token_ids = {t[t.size() / 2]};
    } else if (first.text[i].size() > 8 && i % 3 == 2) {
      traffic[i].params.stop = {first.text[i].substr(first.text[i].size() / 2, 2)};
    }
  }
  const EngineRun want = serve(false);
  const EngineRun got = serve(true);
  int compared = 0;
  for (size_t i = 0; i < traffic.size(); ++i) {
    if (traffic[i].abort_step >= 0) continue;  // where an abort lands is a matter of timing
    ++compared;
    EXPECT_EQ(got.tokens[i], want.tokens[i]) << "request " << i;
    EXPECT_EQ(got.text[i], want.text[i]) << "request " << i;
    EXPECT_EQ(got.reasons[i], want.reasons[i]) << "request " << i;
  }
  EXPECT_GT(compared, 8);
}

// Queued downloads (the default, which copies at once): bytes as they were when queued,
// finished in order, at most kMaxQueuedDownloads open, none larger than the limit.
TEST(OverlappedDecode, QueuedDownloadsKeepTheirBytesAndOrder) {
  auto cpu = make_cpu_backend(1);
  std::vector<int32_t> device(4, 7);
  const Tensor t{device.data(), DType::I32, Shape{4}, Device::Cpu};
  const uint64_t a = cpu->queue_download(t);
  device.assign(4, 9);  // later work overwrites the source
  const uint64_t b = cpu->queue_download(t);
  std::vector<int32_t> got(4);
  EXPECT_THROW(cpu->finish_download(b, got.data()), Error) << "finished out of order";
  cpu->finish_download(a, got.data());
  EXPECT_EQ(got, std::vector<int32_t>(4, 7));
  cpu->finish_download(b, got.data());
  EXPECT_EQ(got, std::vector<int32_t>(4, 9));
  for (size_t i = 0; i < Backend::kMaxQueuedDownloads; ++i) cpu->queue_download(t);
  EXPECT_THROW(cpu->queue_download(t), Error) << "more open than the limit";
  std::vector<char> big(Backend::kMaxQueuedDownloadBytes + 1);
  const Tensor huge{big.data(), DType::U8, Shape{static_cast<int64_t>(big.size())}, Device::Cpu};
  EXPECT_THROW(cpu->queue_download(huge), Error);
}

TEST(OverlappedDecode, ModelRefusesMisuse) {
  Rig rig(false);
  const AttentionBatch batch;
  const DeviceSampling greedy;
  // Fed by a step that was never queued, and collecting none.
  EXPECT_THROW(rig.model.queue_sampled_after(batch, *rig.cache, std::span<const DeviceSampling>(&greedy, 1)), Error);
  int32_t token = 0;
  EXPECT_THROW(rig.model.collect_sampled(&token), Error);
}

}  // namespace
}  // namespace lserve
