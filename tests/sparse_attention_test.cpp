// Sparse attention end to end through the real pieces (KvCache with both pools, HeadPattern, the
// CPU backend's kv_append and attention), on small random models: GQA ratios 1 to 8, head_dim
// 16/32, pages of 16/32/64 tokens with logical pages of 4/8/16, every policy and both selection
// granularities, prefill chunks that are not page multiples and decode steps, several sequences
// in one batch. Every step of every scenario is checked by the Rig against
//   - reference_paged_attention (the engine's explicit-mask reference), and
//   - a plain reference written here from first principles: the K and V each sequence was
//     given, by position; causal + Lambda masks for streaming heads; for retrieval heads in
//     decode, the stored page selection (+ pages newer than it), which in turn must equal the
//     exhaustive top pages recomputed from the keys whenever it is fresh.
// The tests then add the properties: dense equivalence, streaming windows, selector
// interval, pages returned, and the same through Generator on a fixture model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <span>

#include "backend/attention_batch.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_attention.h"
#include "engine/generator.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "model/weights.h"
#include "sparse/head_pattern.h"
#include "sparse/sparsity_config.h"
#include "sparse_reference.h"
#include "test_util.h"

namespace lserve {
namespace {

// ---- scenarios ----

struct Scenario {
  std::string name;
  int64_t layers = 2, heads = 8, kv_heads = 2, head_dim = 16;
  SparsityConfig sparsity;
  HeadPattern pattern;
};

// A scenario with LServe-like knobs scaled to small pages: budget of `budget_pages` pages,
// windows that are not page multiples (the decode window inside the prefill window), and the
// selector re-run every `interval` steps. `streaming` KV heads per layer stream.
Scenario scenario(std::string name, AttentionPolicy policy, int64_t kv_heads, int64_t head_dim, int32_t page,
                  int32_t logical, int64_t streaming_per_layer = 0, int64_t budget_pages = 3, int32_t interval = 2,
                  SelectionGranularity granularity = SelectionGranularity::KvHead) {
  Scenario s;
  s.name = std::move(name);
  s.kv_heads = kv_heads;
  s.head_dim = head_dim;
  SparsityConfig& c = s.sparsity;
  c.policy = policy;
  c.page_size = page;
  c.logical_page_size = logical;
  c.token_budget = budget_pages * page;
  c.selector_interval = interval;
  c.granularity = granularity;
  c.prefill_window = {page + 3, 2 * page + 5};
  c.decode_window = {page / 2 + 3, page + 7};
  c.psa_mass = 0.9;
  c.psa_min_budget = 2 * page;
  c.psa_max_budget = 4 * page;
  if (streaming_per_layer > 0 && !c.has_streaming_heads()) c.streaming_ratio = 0.5;  // quest/psa with streaming heads
  c.validate();
  // Streaming heads: the first `streaming_per_layer` KV heads of layer 0, the last ones of layer 1, ...
  std::vector<std::vector<double>> scores(static_cast<size_t>(s.layers), std::vector<double>(static_cast<size_t>(kv_heads), 1.0));
  for (int64_t l = 0; l < s.layers; ++l)
    for (int64_t i = 0; i < streaming_per_layer; ++i)
      scores[static_cast<size_t>(l)][static_cast<size_t>(l % 2 ? kv_heads - 1 - i : i)] = 0.0;
  s.pattern = HeadPattern::from_scores(scores, HeadRule{std::nullopt, 0.5}, s.name);
  return s;
}

// Whether a decoding sequence of `len` tokens reads selected pages: fixed budgets leave contexts
// within the budget dense; PSA ranks anything longer than two pages.
bool selects(const SparsityConfig& s, bool decoding, int64_t len) {
  if (!s.selects_pages() || !decoding) return false;
  return s.policy == AttentionPolicy::Psa ? len > 2 * s.page_size : len > s.token_budget;
}

// ---- the rig ----

// A sequence under test: its KV state in the cache and, kept apart, every K and V it was given.
struct TestSequence {
  SequenceKv kv;
  std::vector<std::vector<float>> k, v;  // [layer][(pos * kv_heads + kv_head) * head_dim + d]
};

// What one sequence does in a step.
struct Work {
  TestSequence* seq;
  int32_t new_tokens;
  bool decoding = false;
  bool prefill_done = true;  // the next step of this sequence decodes (streaming heads trim to the decode window)
};

// Drives a KvCache through the CPU backend and checks every layer of every step (see the top).
class Rig {
 public:
  Rig(const Scenario& s, uint32_t seed, int64_t retrieval_pages = 96, int64_t streaming_pages = 64)
      : s_(s), backend_(make_cpu_backend(2)), rng_(seed) {
    config_.num_layers = s.layers;
    config_.num_heads = s.heads;
    config_.num_kv_heads = s.kv_heads;
    config_.head_dim = s.head_dim;
    config_.hidden_size = s.heads * s.head_dim;
    KvCacheOptions o;
    o.page_size = s.sparsity.page_size;
    o.logical_page_size = s.sparsity.selects_pages() ? s.sparsity.logical_page_size : 0;
    o.retrieval_pages = retrieval_pages;
    o.streaming_pages = streaming_pages;
    cache_ = std::make_unique<KvCache>(config_, s.pattern, o, *backend_);
    if (cache_->has_streaming_heads()) { EXPECT_TRUE(s.sparsity.has_streaming_heads()) << "inconsistent scenario"; }
    poison();
  }

  KvCache& cache() { return *cache_; }
  const SparsityConfig& sparsity() const { return s_.sparsity; }
  int64_t fresh_selections() const { return fresh_; }
  int64_t stale_selections() const { return stale_; }
  int64_t stale_outputs_differing_from_fresh() const { return stale_differs_; }

  // Runs one step of the batch: reserve, kv_append and attention per layer with random K, V, q,
  // all checks; then what Generator::step does after the forward pass. Returns each layer's
  // attention output.
  std::vector<std::vector<float>> step(const std::vector<Work>& work) {
    for (const Work& w : work) cache_->reserve(w.seq->kv, w.seq->kv.num_tokens() + w.new_tokens);
    const AttentionBatch batch = plan(work);
    const int64_t T = batch.num_tokens(), H = s_.heads, Hk = s_.kv_heads, D = s_.head_dim;
    for (const Work& w : work) w.seq->kv.kv_tokens_read = w.seq->kv.kv_head_reads = 0;
    std::vector<int64_t> expected_reads(work.size(), 0);
    std::vector<std::vector<float>> outputs;
    for (int64_t layer = 0; layer < s_.layers; ++layer) {
      auto k = test::random_floats(static_cast<size_t>(T * Hk * D), rng_);
      auto v = test::random_floats(k.size(), rng_);
      auto q = test::random_floats(static_cast<size_t>(T * H * D), rng_);
      for (size_t b = 0; b < work.size(); ++b) {  // the sequence's own record of its K and V
        auto& hk = work[b].seq->k, &hv = work[b].seq->v;
        hk.resize(static_cast<size_t>(s_.layers));
        hv.resize(static_cast<size_t>(s_.layers));
        const auto rows = std::span(k).subspan(static_cast<size_t>(batch.query_start[b] * Hk * D),
                                               static_cast<size_t>(batch.query_len(static_cast<int32_t>(b)) * Hk * D));
        hk[static_cast<size_t>(layer)].insert(hk[static_cast<size_t>(layer)].end(), rows.begin(), rows.end());
        const auto vrows = std::span(v).subspan(static_cast<size_t>(batch.query_start[b] * Hk * D), rows.size());
        hv[static_cast<size_t>(layer)].insert(hv[static_cast<size_t>(layer)].end(), vrows.begin(), vrows.end());
      }
      backend_->kv_append(*cache_, layer, tensor(k, T, Hk * D), tensor(v, T, Hk * D), batch);
      std::vector<float> out(q.size(), std::nanf("")), ref(q.size(), std::nanf(""));
      backend_->attention(*cache_, layer, tensor(q, T, H * D), batch, scale(), tensor(out, T, H * D));
      std::vector<HeadSlot> slots;
      reference_paged_attention(args(layer, q.data(), ref.data(), slots), batch);
      expect_close(out, ref, "vs reference_paged_attention, layer " + std::to_string(layer));
      check_plain(batch, work, layer, q, out, expected_reads);
      check_selections(batch, work, layer, q, out);
      outputs.push_back(std::move(out));
    }
    for (size_t b = 0; b < work.size(); ++b) {
      SequenceKv& kv = work[b].seq->kv;
      if (work[b].new_tokens == 1) {  // decode statistics: keys visible to each (layer, query head)
        EXPECT_EQ(kv.kv_tokens_read, expected_reads[b]) << "sequence " << b;
        EXPECT_EQ(kv.kv_head_reads, s_.layers * H) << "sequence " << b;
      }
      if (work[b].decoding) ++kv.decode_steps;
      if (cache_->has_streaming_heads()) {  // as Generator::step: both windows' pages until the prefill is done
        const StreamingWindow& pw = s_.sparsity.prefill_window;
        const StreamingWindow& dw = s_.sparsity.decode_window;
        cache_->trim_streaming(kv, kv.num_tokens(), work[b].prefill_done ? dw : StreamingWindow{std::max(pw.sink, dw.sink), std::max(pw.local, dw.local)});
      }
    }
    return outputs;
  }

  void release(TestSequence& seq) {
    cache_->release(seq.kv);
    seq = TestSequence{};
  }

  float scale() const { return 1.0f / std::sqrt(static_cast<float>(s_.head_dim)); }

 private:
  static Tensor tensor(std::vector<float>& data, int64_t rows, int64_t cols) {
    return Tensor{data.data(), DType::F32, Shape{rows, cols}, Device::Cpu};
  }

  // Unwritten K/V read as NaN; summaries of logical pages not yet filled score above any real page.
  void poison() {
    for (int64_t l = 0; l < s_.layers; ++l) {
      for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming})
        for (const Tensor& t : {cache_->k_pages(l, kind), cache_->v_pages(l, kind)})
          if (t.data) std::fill_n(t.as<float>(), t.numel(), std::nanf(""));
      if (cache_->logical_page_size() > 0 && cache_->heads_in_pool(HeadKind::Retrieval, l) > 0) {
        std::fill_n(cache_->key_min(l).as<float>(), cache_->key_min(l).numel(), -1e30f);
        std::fill_n(cache_->key_max(l).as<float>(), cache_->key_max(l).numel(), 1e30f);
      }
    }
  }

  // The step's plan, built the way Generator::step builds it, for several sequences.
  AttentionBatch plan(const std::vector<Work>& work) const {
    AttentionBatch batch;
    const bool streaming = cache_->has_streaming_heads();
    const int64_t P = cache_->page_size();
    batch.query_start = {0};
    batch.page_indptr = {0};
    if (streaming) batch.streaming_page_indptr = {0};
    for (const Work& w : work) {
      const SequenceKv& kv = w.seq->kv;
      const int64_t start = kv.num_tokens() - w.new_tokens;
      batch.query_start.push_back(batch.query_start.back() + w.new_tokens);
      batch.seq_lens.push_back(static_cast<int32_t>(kv.num_tokens()));
      batch.page_indices.insert(batch.page_indices.end(), kv.retrieval.pages.begin(), kv.retrieval.pages.end());
      batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
      if (streaming) {
        batch.streaming_page_indices.insert(batch.streaming_page_indices.end(), kv.streaming.pages.begin(), kv.streaming.pages.end());
        batch.streaming_page_indptr.push_back(static_cast<int32_t>(batch.streaming_page_indices.size()));
      }
      for (int64_t pos = start; pos < kv.num_tokens(); ++pos) {
        const auto page = static_cast<size_t>(pos / P);
        batch.positions.push_back(static_cast<int32_t>(pos));
        batch.slot_mapping.push_back(page < kv.retrieval.pages.size() ? static_cast<int64_t>(kv.retrieval.pages[page]) * P + pos % P : -1);
        if (streaming) batch.streaming_slot_mapping.push_back(static_cast<int64_t>(kv.streaming.pages[page]) * P + pos % P);
      }
      batch.decoding.push_back(static_cast<uint8_t>(w.decoding));
      batch.sequences.push_back(&w.seq->kv);
    }
    batch.sparsity = &s_.sparsity;
    return batch;
  }

  // The args CpuBackend::attention builds, for the reference.
  CpuAttentionArgs args(int64_t layer, const float* q, float* out, std::vector<HeadSlot>& slots) const {
    for (int64_t h = 0; h < s_.kv_heads; ++h) slots.push_back(cache_->slot(layer, h));
    CpuAttentionArgs a{};
    a.q = q;
    a.out = out;
    a.num_heads = s_.heads;
    a.num_kv_heads = s_.kv_heads;
    a.head_dim = s_.head_dim;
    a.page_size = cache_->page_size();
    a.scale = scale();
    for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
      const int i = static_cast<int>(kind);
      a.k[i] = cache_->k_pages(layer, kind).as<float>();
      a.v[i] = cache_->v_pages(layer, kind).as<float>();
      a.pool_heads[i] = cache_->heads_in_pool(kind, layer);
    }
    a.slots = slots.data();
    if (cache_->logical_page_size() > 0 && cache_->heads_in_pool(HeadKind::Retrieval, layer) > 0) {
      a.key_min = cache_->key_min(layer).as<float>();
      a.key_max = cache_->key_max(layer).as<float>();
    }
    a.logical_page_size = cache_->logical_page_size();
    a.layer = layer;
    return a;
  }

  static void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    for (size_t i = 0; i < got.size(); ++i)
      if (std::isnan(got[i]) || !(std::abs(got[i] - want[i]) <= 2e-5f * (1 + std::abs(want[i])))) {
        ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", want " << want[i];
        return;  // one report per comparison
      }
  }

  test::RowAt row_at(const std::vector<std::vector<float>>& store, int64_t layer, int64_t kv_head) const {
    const float* base = store[static_cast<size_t>(layer)].data();
    const int64_t Hk = s_.kv_heads, D = s_.head_dim;
    return [base, Hk, D, kv_head](int64_t pos) { return base + (pos * Hk + kv_head) * D; };
  }

  int64_t units() const {
    return s_.sparsity.granularity == SelectionGranularity::KvHead ? s_.kv_heads : s_.heads;
  }
  int64_t unit_of(int64_t head) const {
    return s_.sparsity.granularity == SelectionGranularity::KvHead ? head / (s_.heads / s_.kv_heads) : head;
  }

  // The keys query head `head` at `qpos` sees, from the definitions: causal; the Lambda window
  // for streaming heads; for retrieval heads reading a selection, its pages and every page
  // newer than it.
  std::function<bool(int64_t)> mask(int64_t layer, int64_t head, int64_t qpos, bool decoding,
                                    const PageSelection* selection) const {
    const int64_t P = s_.sparsity.page_size;
    if (cache_->slot(layer, head / (s_.heads / s_.kv_heads)).kind == HeadKind::Streaming) {
      const StreamingWindow w = decoding ? s_.sparsity.decode_window : s_.sparsity.prefill_window;
      return [=](int64_t key) { return key <= qpos && (key < w.sink || key > qpos - w.local); };
    }
    if (selection) {
      return [=](int64_t key) {
        const auto page = static_cast<int32_t>(key / P);
        return key <= qpos && (page >= selection->num_pages_then ||
                               std::find(selection->pages.begin(), selection->pages.end(), page) != selection->pages.end());
      };
    }
    return [=](int64_t key) { return key <= qpos; };
  }

  std::vector<float> plain_row(const TestSequence& seq, int64_t layer, int64_t head, const float* q, int64_t qpos,
                               const std::function<bool(int64_t)>& visible) const {
    const int64_t kvh = head / (s_.heads / s_.kv_heads);
    return test::masked_attention(q, s_.head_dim, qpos, visible, row_at(seq.k, layer, kvh), row_at(seq.v, layer, kvh), scale());
  }

  // Every output row against the plain reference; counts the keys each decode query sees.
  void check_plain(const AttentionBatch& batch, const std::vector<Work>& work, int64_t layer, const std::vector<float>& q,
                   const std::vector<float>& out, std::vector<int64_t>& reads) {
    const int64_t H = s_.heads, D = s_.head_dim;
    for (int32_t b = 0; b < batch.num_seqs(); ++b) {
      const Work& w = work[static_cast<size_t>(b)];
      const int64_t len = batch.seq_lens[b], qlen = batch.query_len(b);
      const bool selecting = selects(s_.sparsity, w.decoding, len);
      for (int64_t i = 0; i < qlen; ++i) {
        const int64_t row = batch.query_start[b] + i, qpos = len - qlen + i;
        for (int64_t h = 0; h < H; ++h) {
          const PageSelection* sel = nullptr;
          if (selecting && cache_->slot(layer, h / (H / s_.kv_heads)).kind == HeadKind::Retrieval) {
            sel = &w.seq->kv.selections.at(static_cast<size_t>(layer * units() + unit_of(h)));
            ASSERT_GE(sel->decode_step, 0) << "no selection for head " << h;
          }
          const auto visible = mask(layer, h, qpos, w.decoding, sel);
          const auto want = plain_row(*w.seq, layer, h, q.data() + (row * H + h) * D, qpos, visible);
          const std::vector<float> got(out.begin() + (row * H + h) * D, out.begin() + (row * H + h + 1) * D);
          expect_close(got, want, "vs plain reference, layer " + std::to_string(layer) + " sequence " + std::to_string(b) +
                                      " position " + std::to_string(qpos) + " head " + std::to_string(h));
          if (qlen == 1)
            for (int64_t key = 0; key <= qpos; ++key) reads[static_cast<size_t>(b)] += visible(key);
        }
      }
    }
  }

  // The exhaustive selection for a unit's heads (q rows from head0) of a decoding sequence.
  std::vector<int32_t> exhaustive_selection(const TestSequence& seq, int64_t layer, int64_t kv_head, const float* q,
                                            int64_t heads, int64_t len) const {
    const SparsityConfig& c = s_.sparsity;
    const auto scores = test::exhaustive_page_scores(q, heads, s_.head_dim, row_at(seq.k, layer, kv_head), len, c.page_size,
                                                     c.logical_page_size);
    const auto mass = test::softmax_mass(scores, scale());
    if (c.policy == AttentionPolicy::Psa)
      return test::psa_pages(mass, c.psa_mass, c.psa_min_budget / c.page_size, c.psa_max_budget / c.page_size);
    return test::top_pages(mass, c.token_budget / c.page_size);
  }

  // Fresh selections equal the exhaustive top pages; stale ones are younger than the interval,
  // and (to show the interval matters) their output is compared with a fresh selection's.
  void check_selections(const AttentionBatch& batch, const std::vector<Work>& work, int64_t layer,
                        const std::vector<float>& q, const std::vector<float>& out) {
    const int64_t H = s_.heads, G = s_.heads / s_.kv_heads, D = s_.head_dim, P = s_.sparsity.page_size;
    for (int32_t b = 0; b < batch.num_seqs(); ++b) {
      const Work& w = work[static_cast<size_t>(b)];
      const int64_t len = batch.seq_lens[b];
      if (!selects(s_.sparsity, w.decoding, len)) continue;
      const int64_t row = batch.query_start[b];
      for (int64_t u = 0; u < units(); ++u) {
        const bool per_kv = s_.sparsity.granularity == SelectionGranularity::KvHead;
        const int64_t kvh = per_kv ? u : u / G, head0 = per_kv ? kvh * G : u, nheads = per_kv ? G : 1;
        if (cache_->slot(layer, kvh).kind != HeadKind::Retrieval) continue;
        const PageSelection& sel = w.seq->kv.selections.at(static_cast<size_t>(layer * units() + u));
        const auto fresh = exhaustive_selection(*w.seq, layer, kvh, q.data() + (row * H + head0) * D, nheads, len);
        SCOPED_TRACE(::testing::Message() << "layer " << layer << " sequence " << b << " unit " << u << " decode step "
                                          << w.seq->kv.decode_steps);
        if (sel.decode_step == w.seq->kv.decode_steps) {
          ++fresh_;
          EXPECT_EQ(sel.pages, fresh);
          EXPECT_EQ(sel.num_pages_then, (len + P - 1) / P);
          continue;
        }
        ++stale_;
        EXPECT_LT(w.seq->kv.decode_steps - sel.decode_step, s_.sparsity.selector_interval);
        if (sel.pages == fresh && sel.num_pages_then == (len + P - 1) / P) continue;
        const PageSelection now{fresh, w.seq->kv.decode_steps, (len + P - 1) / P};
        float diff = 0;
        for (int64_t h = head0; h < head0 + nheads; ++h) {
          const auto want = plain_row(*w.seq, layer, h, q.data() + (row * H + h) * D, len - 1, mask(layer, h, len - 1, true, &now));
          for (int64_t d = 0; d < D; ++d) diff = std::max(diff, std::abs(want[static_cast<size_t>(d)] - out[static_cast<size_t>((row * H + h) * D + d)]));
        }
        stale_differs_ += diff > 1e-3f;
      }
    }
  }

  Scenario s_;
  std::unique_ptr<Backend> backend_;
  std::mt19937 rng_;
  ModelConfig config_;
  std::unique_ptr<KvCache> cache_;
  int64_t fresh_ = 0, stale_ = 0, stale_differs_ = 0;
};

// The pages both pools hand out must all come back.
void expect_pools_empty(const KvCache& cache) {
  EXPECT_EQ(cache.allocator(HeadKind::Retrieval).num_used(), 0) << "retrieval pages leaked";
  EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_used(), 0) << "streaming pages leaked";
}

// The standard script, in page units so every page size gets the same shape: two prompts
// prefilled in chunks that are not page multiples, then batches that mix decoding sequences of
// different lengths with a third sequence's prefill chunks; a fourth sequence reuses freed pages.
// Returns every step's per-layer outputs.
std::vector<std::vector<std::vector<float>>> run_script(Rig& rig) {
  const int32_t P = rig.sparsity().page_size;
  TestSequence a, b, c, d;
  std::vector<std::vector<std::vector<float>>> out;
  auto step = [&](const std::vector<Work>& work) { out.push_back(rig.step(work)); };
  step({{&a, 2 * P + 3, false, false}, {&b, 3 * P + 7}});
  step({{&a, 3 * P + 8}, {&b, 1, true}});  // a: 5P + 11 tokens
  step({{&a, 1, true}, {&c, P + 5, false, false}, {&b, 1, true}});
  step({{&b, 1, true}, {&a, 1, true}, {&c, P + 9}});
  for (int i = 0; i < 4; ++i) step({{&a, 1, true}, {&b, 1, true}, {&c, 1, true}});
  rig.release(b);
  step({{&d, 2 * P + 1}, {&a, 1, true}});  // d's pages were b's
  for (int i = 0; i < 3; ++i) step({{&c, 1, true}, {&d, 1, true}, {&a, 1, true}});
  for (TestSequence* s : {&a, &c, &d}) rig.release(*s);
  expect_pools_empty(rig.cache());
  return out;
}

// ---- the properties ----

TEST(SparseAttention, EveryPolicyMatchesTheReferencesOnRandomShapes) {
  using P = AttentionPolicy;
  constexpr auto kQuery = SelectionGranularity::QueryHead;
  const std::vector<Scenario> scenarios = {
      scenario("dense, MHA, d16, page 16", P::Dense, 8, 16, 16, 4),
      scenario("streaming, GQA 2, d32, page 32", P::Streaming, 4, 32, 32, 8, 2),
      scenario("streaming, every KV head, GQA 4, d16, page 16", P::Streaming, 2, 16, 16, 4, 2),
      scenario("quest per KV head, GQA 4, d16, page 16/4", P::Quest, 2, 16, 16, 4, 0, 4),
      scenario("quest per query head, MQA, d32, page 64/16", P::Quest, 1, 32, 64, 16, 0, 3, 2, kQuery),
      scenario("psa per KV head, GQA 2, d16, page 32/8", P::Psa, 4, 16, 32, 8),
      scenario("psa per query head with streaming heads, GQA 4, d32, page 16/8", P::Psa, 2, 32, 16, 8, 1, 3, 3, kQuery),
      scenario("lserve per query head, GQA 4, d32, page 16/8", P::LServe, 2, 32, 16, 8, 1, 3, 2, kQuery),
      scenario("lserve per KV head, MHA, d16, page 32/4", P::LServe, 8, 16, 32, 4, 3, 3, 1),
      scenario("lserve per KV head, GQA 8, d16, page 64/16", P::LServe, 1, 16, 64, 16, 0, 3, 3),
  };
  uint32_t seed = 100;
  for (const Scenario& s : scenarios) {
    SCOPED_TRACE(s.name);
    Rig rig(s, seed++);
    run_script(rig);
    if (s.sparsity.selects_pages()) {
      EXPECT_GT(rig.fresh_selections(), 0) << "no selection was checked";
      if (s.sparsity.selector_interval > 1) { EXPECT_GT(rig.stale_selections(), 0) << "no reused selection was checked"; }
    }
  }
}

// (a) Without streaming heads and with a budget covering the context, every policy is dense
// attention, bit for bit.
TEST(SparseAttention, NoStreamingHeadsAndBudgetCoveringTheContextIsExactlyDense) {
  using P = AttentionPolicy;
  for (auto [policy, granularity] : {std::pair{P::Quest, SelectionGranularity::KvHead},
                                     {P::Quest, SelectionGranularity::QueryHead},
                                     {P::Psa, SelectionGranularity::KvHead},
                                     {P::Psa, SelectionGranularity::QueryHead},
                                     {P::LServe, SelectionGranularity::QueryHead},
                                     {P::Streaming, SelectionGranularity::KvHead}}) {
    for (auto [kv_heads, page, logical] : {std::tuple{2, 16, 4}, {4, 32, 8}}) {
      Scenario s = scenario(std::string(policy_name(policy)), policy, kv_heads, 16, page, logical, 0, 64, 2, granularity);
      s.sparsity.psa_min_budget = s.sparsity.psa_max_budget = 64 * page;  // PSA ranks, but must keep every page
      SCOPED_TRACE(::testing::Message() << s.name << (granularity == SelectionGranularity::KvHead ? " per KV head" : " per query head")
                                        << ", " << kv_heads << " KV heads, page " << page);
      Rig sparse(s, 7), dense(scenario("dense", P::Dense, kv_heads, 16, page, logical), 7);
      const auto got = run_script(sparse), want = run_script(dense);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << "step " << i;
      if (policy == P::Psa) { EXPECT_GT(sparse.fresh_selections(), 0) << "PSA should have ranked (and kept all)"; }
    }
  }
}

// (b) A streaming head is dense attention under the explicit Lambda mask, in prefill (prefill
// window) and decode (decode window), whatever the windows' alignment to pages.
TEST(SparseAttention, StreamingHeadsSeeExactlyTheLambdaWindow) {
  struct Windows {
    StreamingWindow prefill, decode;
  };
  const std::vector<Windows> windows = {
      {{0, 1}, {0, 1}},       // only the query itself
      {{5, 9}, {3, 7}},       // both smaller than a page
      {{5, 9}, {20, 30}},     // decode window reaching further back than the prefill window
      {{16, 32}, {16, 16}},   // page-aligned
      {{40, 23}, {17, 11}},   // sink wider than the local band
      {{7, 300}, {7, 300}},   // local covering the whole context: causal
  };
  for (int64_t kv_heads : {8, 2}) {
    for (const Windows& w : windows) {
      Scenario s = scenario("streaming", AttentionPolicy::Streaming, kv_heads, 16, 16, 4, kv_heads / 2);
      s.sparsity.prefill_window = w.prefill;
      s.sparsity.decode_window = w.decode;
      SCOPED_TRACE(::testing::Message() << kv_heads << " KV heads, prefill sink " << w.prefill.sink << " local "
                                        << w.prefill.local << ", decode sink " << w.decode.sink << " local " << w.decode.local);
      Rig rig(s, 11);
      TestSequence a, b;
      rig.step({{&a, 37, false, false}, {&b, 50}});
      rig.step({{&a, 45, false, false}, {&b, 1, true}});
      rig.step({{&a, 21}, {&b, 1, true}});
      for (int i = 0; i < 20; ++i) {
        rig.step({{&a, 1, true}, {&b, 1, true}});
        // The streaming pool holds exactly the pages the decode window can still see.
        const int64_t P = 16, next = a.kv.num_tokens();
        int64_t visible_pages = 0;
        for (int64_t p = 0; p < rig.cache().pages_for(next); ++p)
          visible_pages += p * P < w.decode.sink || p * P + P - 1 >= next - w.decode.local + 1;
        EXPECT_EQ(a.kv.live_streaming_pages, visible_pages) << "at " << next << " tokens";
      }
      rig.release(a);
      rig.release(b);
      expect_pools_empty(rig.cache());
    }
  }
}

// (c) and (d): the selector runs once every R decode steps (from the first step whose context
// exceeds the budget); in between, the output is that of the stale selection plus the newer
// pages (the rig checks it against the plain reference), which differs from a fresh one's.
TEST(SparseAttention, SelectorRunsEveryIntervalAndStaleSelectionsAreUsedExactly) {
  for (int32_t interval : {1, 3, 5}) {
    for (auto granularity : {SelectionGranularity::KvHead, SelectionGranularity::QueryHead}) {
      const bool per_kv = granularity == SelectionGranularity::KvHead;
      Scenario s = scenario("lserve", AttentionPolicy::LServe, 2, 16, 16, 4, 1, 4, interval, granularity);
      SCOPED_TRACE(::testing::Message() << "interval " << interval << (per_kv ? ", per KV head" : ", per query head"));
      Rig rig(s, 21);
      TestSequence seq;
      rig.step({{&seq, 60}});  // 60 tokens: within the budget of 64
      // Layer 0's streaming KV head is head 0, so its retrieval head is 1: unit 1 (KV) or 4 (query).
      const size_t unit = per_kv ? 1 : 4;
      std::vector<int64_t> ran_at;
      int64_t first = -1;
      for (int64_t step = 0; step < 30; ++step) {
        rig.step({{&seq, 1, true}});
        const int64_t len = seq.kv.num_tokens();
        if (len <= 64) {  // dense: no selection yet
          EXPECT_TRUE(seq.kv.selections.empty() || seq.kv.selections[unit].decode_step < 0) << "step " << step;
          continue;
        }
        if (first < 0) first = step;
        const int64_t at = seq.kv.selections[unit].decode_step;
        EXPECT_EQ(at, first + (step - first) / interval * interval) << "step " << step;
        if (ran_at.empty() || ran_at.back() != at) ran_at.push_back(at);
      }
      EXPECT_EQ(first, 4);  // the context passes 64 tokens at the fifth decode step
      EXPECT_EQ(static_cast<int64_t>(ran_at.size()), (30 - first + interval - 1) / interval);
      if (interval > 1) { EXPECT_GT(rig.stale_outputs_differing_from_fresh(), 0) << "reuse never mattered: the test cannot fail"; }
      rig.release(seq);
      expect_pools_empty(rig.cache());
    }
  }
}

// (e) Pages come back: after every sequence, with streaming trims in between; and running out
// of pages is a recoverable error that leaves the sequence as it was.
TEST(SparseAttention, PagesFreedEqualPagesAllocated) {
  Scenario s = scenario("lserve", AttentionPolicy::LServe, 4, 16, 16, 4, 2);
  Rig rig(s, 31, 12, 8);
  KvCache& cache = rig.cache();
  const auto used = [&](HeadKind k) { return cache.allocator(k).num_used(); };
  TestSequence a, b;
  rig.step({{&a, 70, false, false}, {&b, 20}});
  rig.step({{&a, 20}, {&b, 1, true}});
  // In use: every retrieval page, and the streaming pages the trims kept.
  EXPECT_EQ(used(HeadKind::Retrieval), cache.pages_for(90) + cache.pages_for(21));
  EXPECT_EQ(used(HeadKind::Streaming), a.kv.live_streaming_pages + b.kv.live_streaming_pages);
  EXPECT_LT(a.kv.live_streaming_pages, cache.pages_for(90));  // trimmed

  // Retrieval pool: 6 + 2 of 12 pages used; 170 tokens would need 5 more for a.
  const SequenceKv before = a.kv;
  const int32_t ret_free = cache.allocator(HeadKind::Retrieval).num_free(), str_free = cache.allocator(HeadKind::Streaming).num_free();
  EXPECT_THROW(cache.reserve(a.kv, 170), KvCacheFull);
  EXPECT_EQ(a.kv.retrieval.pages, before.retrieval.pages);
  EXPECT_EQ(a.kv.streaming.pages, before.streaming.pages);
  EXPECT_EQ(a.kv.num_tokens(), before.num_tokens());
  EXPECT_EQ(a.kv.live_streaming_pages, before.live_streaming_pages);
  EXPECT_EQ(cache.allocator(HeadKind::Retrieval).num_free(), ret_free);
  EXPECT_EQ(cache.allocator(HeadKind::Streaming).num_free(), str_free);

  // Streaming pool: a sequence whose window needs more streaming pages than are left.
  TestSequence c;
  do rig.step({{&c, 16, false, false}});
  while (cache.allocator(HeadKind::Streaming).num_free() > 0);
  ASSERT_GT(cache.allocator(HeadKind::Retrieval).num_free(), 0);
  const SequenceKv c_before = c.kv;
  EXPECT_THROW(cache.reserve(c.kv, c.kv.num_tokens() + 1), KvCacheFull);
  EXPECT_EQ(c.kv.retrieval.pages, c_before.retrieval.pages);
  EXPECT_EQ(c.kv.streaming.pages, c_before.streaming.pages);
  EXPECT_EQ(c.kv.num_tokens(), c_before.num_tokens());

  // The sequences still run after the refusal.
  rig.step({{&a, 1, true}, {&b, 1, true}});
  for (TestSequence* seq : {&a, &b, &c}) rig.release(*seq);
  expect_pools_empty(cache);
}

// ---- (f) through Generator and LlamaModel on a fixture model ----

// The llama3 fixture (2 layers, 4 query / 2 KV heads, head_dim 16) with a cache made for a
// policy, as the CLI makes it.
struct FixtureModel {
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
  ModelConfig config = ModelConfig::from_file(test::fixture_models_dir() / "llama3" / "config.json");
  LlamaModel model{config, load_weights(config, test::fixture_models_dir() / "llama3", *backend), *backend, 1024};

  std::unique_ptr<KvCache> cache(const SparsityConfig& s, const HeadPattern& pattern) {
    KvCacheOptions o;
    o.page_size = s.page_size;
    o.logical_page_size = s.selects_pages() ? s.logical_page_size : 0;
    o.retrieval_pages = 64;
    o.streaming_pages = 64;
    return std::make_unique<KvCache>(config, pattern, o, *backend);
  }
  std::vector<int32_t> prompt(size_t n, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(config.vocab_size));
    return ids;
  }
};

SparsityConfig fixture_sparsity(AttentionPolicy policy) {
  SparsityConfig s;
  s.policy = policy;
  s.page_size = 16;
  s.logical_page_size = 4;
  s.token_budget = 512;
  s.selector_interval = 3;
  s.prefill_window = {20, 100};
  s.decode_window = {20, 40};
  return s;
}

TEST(SparseGenerator, BudgetCoveringTheContextGivesDenseTokens) {
  if (!std::filesystem::exists(test::fixture_models_dir() / "llama3")) GTEST_SKIP() << "no llama3 fixture";
  FixtureModel m;
  GenerationRequest req;
  req.prompt = m.prompt(150, 1);
  req.max_tokens = 12;
  req.ignore_eos = true;
  const SparsityConfig dense_cfg = fixture_sparsity(AttentionPolicy::Dense);
  auto dense_cache = m.cache(dense_cfg, HeadPattern::all_retrieval(2, 2));
  Generator dense(m.model, *dense_cache, nullptr, 40, &dense_cfg);
  const auto want = dense.run(req, nullptr);
  const auto want_logits = dense.score(req.prompt, 100, 33);

  // Streaming heads whose windows cover the context are dense too.
  SparsityConfig lserve_cfg = fixture_sparsity(AttentionPolicy::LServe);
  lserve_cfg.prefill_window = lserve_cfg.decode_window = {0, 512};
  const HeadPattern mixed = HeadPattern::from_scores({{1, 0}, {0, 1}}, HeadRule{}, "mixed");
  struct Case {
    const char* name;
    SparsityConfig sparsity;
    HeadPattern pattern;
  };
  const std::vector<Case> cases = {{"quest", fixture_sparsity(AttentionPolicy::Quest), HeadPattern::all_retrieval(2, 2)},
                                   {"lserve, no streaming heads", fixture_sparsity(AttentionPolicy::LServe), HeadPattern::all_retrieval(2, 2)},
                                   {"lserve, streaming heads seeing everything", lserve_cfg, mixed}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto cache = m.cache(c.sparsity, c.pattern);
    Generator gen(m.model, *cache, nullptr, 40, &c.sparsity);
    const auto got = gen.run(req, nullptr);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.mean_kv_tokens_read, want.mean_kv_tokens_read);
    EXPECT_EQ(gen.score(req.prompt, 100, 33), want_logits);  // bit for bit
    expect_pools_empty(*cache);
  }
}

TEST(SparseGenerator, SmallBudgetReadsWhatThePolicySays) {
  if (!std::filesystem::exists(test::fixture_models_dir() / "llama3")) GTEST_SKIP() << "no llama3 fixture";
  FixtureModel m;
  SparsityConfig s = fixture_sparsity(AttentionPolicy::LServe);
  s.token_budget = 64;  // 4 pages of 16
  const HeadPattern pattern = HeadPattern::from_scores({{1, 0}, {0, 1}}, HeadRule{}, "one streaming head per layer");
  auto cache = m.cache(s, pattern);
  Generator gen(m.model, *cache, nullptr, 70, &s);
  GenerationRequest req;
  req.prompt = m.prompt(300, 2);
  req.max_tokens = 20;
  req.ignore_eos = true;
  const auto result = gen.run(req, nullptr);
  ASSERT_EQ(result.tokens.size(), 20u);
  ASSERT_EQ(result.decode_steps, 19);
  expect_pools_empty(*cache);

  // Per decode step i the context is L = 301 + i. Streaming heads read sink + local = 60 keys.
  // Retrieval heads read the 4 selected pages, made at step i - i % 3 when the context had n0
  // pages: 3 full pages plus everything from page n0 - 1 on. Half the query heads of each
  // layer are of each kind.
  const int64_t P = 16;
  double sum = 0;
  for (int64_t i = 0; i < 19; ++i) {
    const int64_t len = 301 + i, n0 = (301 + i - i % 3 + P - 1) / P;
    const int64_t retrieval = 3 * P + (len - (n0 - 1) * P), streaming = 20 + 40;
    sum += (retrieval + streaming) / 2.0;
  }
  EXPECT_DOUBLE_EQ(result.mean_kv_tokens_read, sum / 19);
  EXPECT_LT(result.mean_kv_tokens_read, 0.3 * 310);  // far below dense
}

// Chunking the prefill must not change what decode sees, also when the decode window reaches
// further back than the prefill window (trims between prefill chunks must keep those pages).
TEST(SparseGenerator, ChunkedPrefillDecodesLikeOneChunk) {
  if (!std::filesystem::exists(test::fixture_models_dir() / "llama3")) GTEST_SKIP() << "no llama3 fixture";
  FixtureModel m;
  const HeadPattern pattern = HeadPattern::from_scores({{1, 0}, {0, 1}}, HeadRule{}, "one streaming head per layer");
  const auto tokens = m.prompt(230, 3);
  struct Case {
    const char* name;
    StreamingWindow prefill, decode;
  };
  const std::vector<Case> cases = {{"decode window inside the prefill window", {20, 100}, {20, 40}},
                                   {"decode window wider than the prefill window", {4, 30}, {20, 60}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SparsityConfig s = fixture_sparsity(AttentionPolicy::LServe);
    s.token_budget = 64;
    s.prefill_window = c.prefill;
    s.decode_window = c.decode;
    auto cache = m.cache(s, pattern);
    Generator gen(m.model, *cache, nullptr, 2048, &s);
    const auto one = gen.score(tokens, 200, 200), chunked = gen.score(tokens, 200, 30);
    double diff = 0, scale = 0;
    for (size_t i = 0; i < one.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(one[i] - chunked[i])));
      scale = std::max(scale, static_cast<double>(std::abs(one[i])));
    }
    EXPECT_LT(diff / scale, 1e-4);
    expect_pools_empty(*cache);
  }
}

// Every KV head streaming: no retrieval pool at all.
TEST(SparseGenerator, AllHeadsStreaming) {
  if (!std::filesystem::exists(test::fixture_models_dir() / "llama3")) GTEST_SKIP() << "no llama3 fixture";
  FixtureModel m;
  const SparsityConfig s = fixture_sparsity(AttentionPolicy::Streaming);
  auto cache = m.cache(s, HeadPattern::uniform(2, 2, 1.0));
  Generator gen(m.model, *cache, nullptr, 70, &s);
  GenerationRequest req;
  req.prompt = m.prompt(200, 4);
  req.max_tokens = 5;
  req.ignore_eos = true;
  const auto result = gen.run(req, nullptr);
  EXPECT_EQ(result.tokens.size(), 5u);
  EXPECT_DOUBLE_EQ(result.mean_kv_tokens_read, 60.0);  // sink 20 + local 40
  expect_pools_empty(*cache);
}

}  // namespace
}  // namespace lserve
