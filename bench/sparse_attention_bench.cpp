// Decode and prefill attention time vs context length on the CPU, dense vs LServe's sparse
// policies, through the real pieces (KvCache pools, kv_append with summaries, the CPU backend's
// attention op with page selection). Prints a table and writes CSV for bench/plot_sparse.py.
//
//   ./build/bench/sparse_attention_bench [--csv FILE] [--quick]
//
// Decode: one query at the end of a context of L tokens; the time is the mean over 8 steps,
// so the selector (re-run every 4 steps) is amortized as in generation. Prefill: a whole prompt
// of L tokens in 4096-token chunks (chunked prefill), summed.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/attention_batch.h"
#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "sparse/sparsity_config.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

struct LayerShape {
  const char* name;
  int64_t heads, kv_heads, head_dim;
};

struct Setup {
  const char* label;
  AttentionPolicy policy;
  double streaming_ratio;
  StreamingWindow prefill_window;
};

ModelConfig layer_config(const LayerShape& s) {
  ModelConfig c;
  c.num_layers = 1;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.hidden_size = s.heads * s.head_dim;
  return c;
}

// One sequence of `len` tokens (prefilled in chunks) under a policy; returns seconds.
struct Runner {
  LayerShape shape;
  Setup setup;
  SparsityConfig sparsity;
  std::unique_ptr<Backend> backend = make_cpu_backend(0);
  std::unique_ptr<KvCache> cache;
  SequenceKv seq;
  std::mt19937 rng{1};

  Runner(const LayerShape& sh, const Setup& st, int64_t max_len) : shape(sh), setup(st) {
    sparsity.policy = st.policy;
    sparsity.prefill_window = st.prefill_window;
    if (st.streaming_ratio > 0) sparsity.streaming_ratio = st.streaming_ratio;
    const ModelConfig c = layer_config(sh);
    const HeadPattern pattern = sparsity.has_streaming_heads()
                                    ? HeadPattern::uniform(1, sh.kv_heads, st.streaming_ratio)
                                    : HeadPattern::all_retrieval(1, sh.kv_heads);
    KvCacheOptions o;
    o.page_size = sparsity.page_size;
    o.logical_page_size = sparsity.selects_pages() ? sparsity.logical_page_size : 0;
    o.retrieval_pages = (max_len + 64) / sparsity.page_size + 2;
    o.streaming_pages = o.retrieval_pages;
    o.streaming_pages_per_sequence = o.streaming_pages;
    cache = std::make_unique<KvCache>(c, pattern, o, *backend);
  }

  std::vector<float> random(int64_t n) {
    std::normal_distribution<float> d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng);
    return v;
  }

  // Appends n tokens' K/V and (if `attend`) runs attention for them; returns the attention
  // op's seconds.
  double step(int64_t n, bool decoding, bool attend = true) {
    const int64_t start = seq.num_tokens();
    cache->reserve(seq, start + n);
    AttentionBatch b;
    b.query_start = {0, static_cast<int32_t>(n)};
    b.seq_lens = {static_cast<int32_t>(start + n)};
    b.page_indptr = {0, static_cast<int32_t>(seq.retrieval.pages.size())};
    b.page_indices = seq.retrieval.pages;
    const bool streaming = cache->has_streaming_heads();
    if (streaming) {
      b.streaming_page_indptr = {0, static_cast<int32_t>(seq.streaming.pages.size())};
      b.streaming_page_indices = seq.streaming.pages;
    }
    const int64_t P = cache->page_size();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = start + i;
      b.positions.push_back(static_cast<int32_t>(pos));
      b.slot_mapping.push_back(int64_t{seq.retrieval.pages[static_cast<size_t>(pos / P)]} * P + pos % P);
      if (streaming) b.streaming_slot_mapping.push_back(int64_t{seq.streaming.pages[static_cast<size_t>(pos / P)]} * P + pos % P);
    }
    b.sparsity = &sparsity;
    b.decoding = {static_cast<uint8_t>(decoding)};
    b.sequences = {&seq};
    const int64_t kv = shape.kv_heads * shape.head_dim, qd = shape.heads * shape.head_dim;
    auto k = random(n * kv), v = random(n * kv), q = random(n * qd);
    std::vector<float> out(q.size());
    backend->kv_append(*cache, 0, Tensor{k.data(), DType::F32, Shape{n, kv}}, Tensor{v.data(), DType::F32, Shape{n, kv}}, b);
    const auto t0 = Clock::now();
    if (attend) backend->attention(*cache, 0, Tensor{q.data(), DType::F32, Shape{n, qd}}, b, 0.125f, Tensor{out.data(), DType::F32, Shape{n, qd}});
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (decoding) ++seq.decode_steps;
    if (streaming)
      cache->trim_streaming(seq, start + n, decoding ? sparsity.decode_window : sparsity.prefill_window);
    return secs;
  }

  // A prompt of `len` tokens in chunks. timed: run and time the attention of every chunk;
  // else only fill the KV (and summaries), for the decode measurements.
  double prefill(int64_t len, int64_t chunk, bool timed) {
    double total = 0;
    for (int64_t done = 0; done < len; done += chunk) total += step(std::min(chunk, len - done), false, timed);
    if (cache->has_streaming_heads()) cache->trim_streaming(seq, len, sparsity.decode_window);
    return total;
  }
};

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  using namespace lserve;
  std::string csv_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv) std::fprintf(csv, "kind,shape,policy,context,seconds,kv_tokens_read\n");
  std::printf("threads: %d\n", omp_get_max_threads());

  const LayerShape tiny{"tiny-llama (8/2 heads, d 32)", 8, 2, 32};
  const LayerShape llama8b{"Llama-3-8B layer (32/8 heads, d 128)", 32, 8, 128};
  const Setup dense{"dense", AttentionPolicy::Dense, 0, {128, 8192}};
  const Setup lserve_setup{"lserve", AttentionPolicy::LServe, 0.5, {128, 8192}};
  const Setup quest{"quest", AttentionPolicy::Quest, 0, {128, 8192}};

  // ---- decode ----
  std::vector<int64_t> lengths = quick ? std::vector<int64_t>{4096, 16384} : std::vector<int64_t>{4096, 8192, 16384, 32768, 65536, 131072};
  for (const LayerShape& shape : {tiny, llama8b}) {
    std::printf("\ndecode attention, one layer, %s: ms per token\n%-10s", shape.name, "context");
    for (const Setup* s : {&dense, &quest, &lserve_setup}) std::printf(" %12s", s->label);
    std::printf(" %14s\n", "dense/lserve");
    for (int64_t len : lengths) {
      std::printf("%-10lld", static_cast<long long>(len));
      double times[3];
      int i = 0;
      for (const Setup* s : {&dense, &quest, &lserve_setup}) {
        Runner r(shape, *s, len + 16);
        r.prefill(len, 8192, false);
        r.step(1, true);  // warm-up: first-touch of buffers and thread start-up stay out of the numbers
        r.seq.kv_tokens_read = r.seq.kv_head_reads = 0;
        double total = 0;
        int64_t read = 0;
        const int steps = 8;
        for (int st = 0; st < steps; ++st) {
          total += r.step(1, true);
          read += r.seq.kv_head_reads ? r.seq.kv_tokens_read / r.seq.kv_head_reads : 0;
          r.seq.kv_tokens_read = r.seq.kv_head_reads = 0;
        }
        times[i++] = total / steps;
        std::printf(" %12.3f", 1e3 * total / steps);
        if (csv) std::fprintf(csv, "decode,\"%s\",\"%s\",%lld,%.6g,%lld\n", shape.name, s->label, static_cast<long long>(len), total / steps,
                              static_cast<long long>(read / steps));
        std::fflush(stdout);
      }
      std::printf(" %13.1fx\n", times[0] / times[2]);
    }
  }

  // ---- prefill ----
  const Setup stream_lserve{"50% streaming, local 8192", AttentionPolicy::Streaming, 0.5, {128, 8192}};
  const Setup stream_duo{"50% streaming, local 256", AttentionPolicy::Streaming, 0.5, {128, 256}};
  std::vector<int64_t> prefill_lengths = quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 8192, 16384, 32768};
  for (const LayerShape& shape : {tiny}) {
    std::printf("\nprefill attention, one layer, %s: seconds (4096-token chunks)\n%-10s", shape.name, "prompt");
    for (const Setup* s : {&dense, &stream_lserve, &stream_duo}) std::printf(" %26s", s->label);
    std::printf("\n");
    for (int64_t len : prefill_lengths) {
      std::printf("%-10lld", static_cast<long long>(len));
      double base = 0;
      for (const Setup* s : {&dense, &stream_lserve, &stream_duo}) {
        Runner r(shape, *s, len + 16);
        const double t = r.prefill(len, 4096, true);
        if (s == &dense) base = t;
        std::printf(" %17.3f (%5.2fx)", t, base / t);
        if (csv) std::fprintf(csv, "prefill,\"%s\",\"%s\",%lld,%.6g,0\n", shape.name, s->label, static_cast<long long>(len), t);
        std::fflush(stdout);
      }
      std::printf("\n");
    }
  }
  if (csv) std::fclose(csv);
  return 0;
}
