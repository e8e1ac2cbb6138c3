// CPU paged attention: decode (one query over a long context) and prefill (causal), on the
// default model's layer shape and a Llama-3-8B layer's. Reports keys/s and GB/s of KV read.
//   ./build/bench/attention_bench --benchmark_filter=Decode
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "backend/cpu/cpu_attention.h"

namespace lserve {
namespace {

struct Shape3 {
  int64_t heads, kv_heads, head_dim;
};
constexpr Shape3 kTinyLlama{8, 2, 32};
constexpr Shape3 kLlama8B{32, 8, 128};
constexpr int64_t kPage = 64;

struct Setup {
  std::vector<float> q, k, v, out;
  AttentionBatch batch;
  std::vector<HeadSlot> slots;
  CpuAttentionArgs args{};
  Setup(Shape3 s, int32_t context, int32_t queries) {
    const int32_t pages = static_cast<int32_t>((context + kPage - 1) / kPage);
    std::mt19937 rng(1);
    std::normal_distribution<float> d;
    k.resize(static_cast<size_t>(pages * s.kv_heads * kPage * s.head_dim));
    v.resize(k.size());
    for (auto& x : k) x = d(rng);
    for (auto& x : v) x = d(rng);
    q.resize(static_cast<size_t>(queries * s.heads * s.head_dim));
    for (auto& x : q) x = d(rng);
    out.resize(q.size());
    batch.query_start = {0, queries};
    batch.seq_lens = {context};
    batch.page_indptr = {0, pages};
    for (int32_t p = 0; p < pages; ++p) batch.page_indices.push_back(p);
    args = dense_attention_args(q.data(), k.data(), v.data(), out.data(), s.heads, s.kv_heads, s.head_dim, kPage, 0.1f, slots);
  }
};

void Decode(benchmark::State& state, Shape3 s) {
  const auto context = static_cast<int32_t>(state.range(0));
  Setup setup(s, context, 1);
  for (auto _ : state) cpu_paged_attention(setup.args, setup.batch);
  const double kv_bytes = 2.0 * static_cast<double>(context) * static_cast<double>(s.kv_heads * s.head_dim) * 4;
  state.counters["GB/s"] = benchmark::Counter(kv_bytes * static_cast<double>(state.iterations()) / 1e9,
                                              benchmark::Counter::kIsRate);
}

void Prefill(benchmark::State& state, Shape3 s) {
  const auto n = static_cast<int32_t>(state.range(0));
  Setup setup(s, n, n);
  for (auto _ : state) cpu_paged_attention(setup.args, setup.batch);
  // Causal: about n^2/2 scores, 4 flops each per head dim (QK and PV).
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(s.heads * s.head_dim);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK_CAPTURE(Decode, tiny_llama, kTinyLlama)->RangeMultiplier(4)->Range(4096, 131072)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(Decode, llama3_8b, kLlama8B)->RangeMultiplier(4)->Range(4096, 131072)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(Prefill, tiny_llama, kTinyLlama)->RangeMultiplier(4)->Range(1024, 16384)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Prefill, llama3_8b, kLlama8B)->RangeMultiplier(4)->Range(1024, 4096)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace lserve

BENCHMARK_MAIN();
