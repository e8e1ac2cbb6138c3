// Times the GPU paged attention at long contexts against the two ceilings that bound it:
//   - the device's copy bandwidth (a large device-to-device copy, bytes read + written), for
//     decode, which must read every cached K and V byte once;
//   - tensor-core throughput, for prefill: 4 * head_dim * heads * (causal pairs) flops.
// Shapes are Llama-3-8B's attention (32 query heads, 8 KV heads, head_dim 128), one layer.
// Then the same layer with half its KV heads streaming (prefill under LServe's and DuoAttention's
// windows, and decode), and LServe's decode with the GPU page selector against dense decode.
// Prints one line per case; numbers are medians of timed repeats after a warm-up.
//
//   cuda_attention_timing [dense] [streaming] [lserve] [profile] [list-keys=N] [batch=N] [dependent-launch]
//   (the sections to run, default all; list-keys and batch: see run())
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "backend/attention_batch.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "copy_bandwidth.h"
#include "engine/batch_plan.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "sparse/head_pattern.h"

namespace lserve {
namespace {

constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128;

// Set by the "profile" section: each timed call runs once after its warm-up, between
// cudaProfilerStart and Stop, so that `ncu --profile-from-start off` sees exactly one step.
bool g_profile_once = false;
int32_t g_list_keys = 0;  // list-keys=N: keys per split of a page list (CudaBackendOptions)
bool g_dependent_launch = false;  // dependent-launch: programmatic dependent launch

using bench::copy_bandwidth;
using bench::median;

struct Case {
  const char* name;
  std::vector<std::pair<int32_t, int32_t>> seqs;  // (context before, new tokens)
};

struct Timing {
  double ms, kv_bytes, flops;
};

// One Llama-3-8B attention layer, the shape every case times.
ModelConfig layer_config() {
  ModelConfig config;
  config.num_layers = 1;
  config.num_heads = kHeads;
  config.num_kv_heads = kKvHeads;
  config.head_dim = kHeadDim;
  return config;
}

// Median ms of one attention call over `batch` on `cache` (random K, V, key summaries and q);
// plan_selection: the step plans its page selections from the cache (as the model's steps do).
double time_attention(Backend& gpu, KvCache& cache, const AttentionBatch& batch, bool plan_selection = false) {
  // Random bf16 (not zeros: zeros can run faster than real data), repeated over the pools.
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> block(size_t{16} << 20);
  for (auto& x : block) x = f32_to_bf16(normal(rng));
  std::vector<Tensor> pools;
  for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming})
    for (const Tensor& pool : {cache.k_pages(0, kind), cache.v_pages(0, kind)}) pools.push_back(pool);
  if (cache.logical_page_size() > 0 && cache.heads_in_pool(HeadKind::Retrieval, 0) > 0) {
    pools.push_back(cache.key_min(0));
    pools.push_back(cache.key_max(0));
  }
  for (const Tensor& pool : pools) {
    if (!pool.data) continue;
    const size_t total = pool.nbytes();
    for (size_t off = 0; off < total; off += block.size() * 2)
      LSERVE_CUDA_CHECK(cudaMemcpy(static_cast<char*>(pool.data) + off, block.data(),
                                   std::min(block.size() * 2, total - off), cudaMemcpyHostToDevice));
  }
  const int64_t T = batch.num_tokens();
  auto qmem = gpu.allocate(static_cast<size_t>(T * kHeads * kHeadDim) * 2);
  auto omem = gpu.allocate(qmem->size());
  const Tensor q = qmem->view(DType::BF16, Shape{T, kHeads * kHeadDim}, Device::Cuda);
  const Tensor out = omem->view(DType::BF16, Shape{T, kHeads * kHeadDim}, Device::Cuda);
  for (size_t off = 0; off < qmem->size(); off += block.size() * 2)
    LSERVE_CUDA_CHECK(cudaMemcpy(static_cast<char*>(q.data) + off, block.data(),
                                 std::min(block.size() * 2, qmem->size() - off), cudaMemcpyHostToDevice));

  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  gpu.begin_step(batch, AttentionHeads{static_cast<int32_t>(kHeads), static_cast<int32_t>(kKvHeads),
                                       static_cast<int32_t>(kHeadDim),
                                       static_cast<int32_t>(cache.heads_in_pool(HeadKind::Retrieval, 0)),
                                       plan_selection ? &cache : nullptr});
  gpu.attention(cache, 0, q, batch, scale, out);  // warm-up: module load, plan upload
  gpu.synchronize();
  if (g_profile_once) {
    LSERVE_CUDA_CHECK(cudaProfilerStart());
    gpu.attention(cache, 0, q, batch, scale, out);
    gpu.synchronize();
    LSERVE_CUDA_CHECK(cudaProfilerStop());
    return 0.0;
  }
  // Timed on the GPU with events around `reps` back-to-back launches (as a decode step's layers
  // run them: no host sync in between), so a short kernel's time is its own and not the host's
  // launch-and-wait latency. reps is picked so one sample is ~20 ms of work.
  cudaEvent_t e0, e1;
  LSERVE_CUDA_CHECK(cudaEventCreate(&e0));
  LSERVE_CUDA_CHECK(cudaEventCreate(&e1));
  const auto t0 = std::chrono::steady_clock::now();
  gpu.attention(cache, 0, q, batch, scale, out);
  gpu.synchronize();
  const double once = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int reps = std::clamp(static_cast<int>(20.0 / std::max(once, 1e-3)), 1, 200);
  std::vector<double> ms;
  for (int sample = 0; sample < 7; ++sample) {
    LSERVE_CUDA_CHECK(cudaEventRecord(e0, cuda_stream_of(gpu)));
    for (int r = 0; r < reps; ++r) gpu.attention(cache, 0, q, batch, scale, out);
    LSERVE_CUDA_CHECK(cudaEventRecord(e1, cuda_stream_of(gpu)));
    LSERVE_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    LSERVE_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(static_cast<double>(t) / reps);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(ms);
}

Timing time_case(Backend& gpu, const Case& c, int32_t page_size) {
  const ModelConfig config = layer_config();
  AttentionBatch batch;
  batch.query_start = {0};
  batch.page_indptr = {0};
  int32_t next_page = 0;
  double kv_bytes = 0, flops = 0;
  for (auto [ctx, n] : c.seqs) {
    const int32_t len = ctx + n, pages = (len + page_size - 1) / page_size;
    for (int32_t p = 0; p < pages; ++p) batch.page_indices.push_back(next_page + p);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t pos = ctx + i;
      batch.positions.push_back(pos);
      batch.slot_mapping.push_back(int64_t{next_page + pos / page_size} * page_size + pos % page_size);
      flops += 4.0 * kHeadDim * kHeads * (pos + 1);
    }
    next_page += pages;
    batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
    batch.seq_lens.push_back(len);
    batch.query_start.push_back(batch.query_start.back() + n);
    kv_bytes += 2.0 * len * kKvHeads * kHeadDim * 2;
  }
  KvCacheOptions o;
  o.page_size = page_size;
  o.memory_bytes = KvCache::bytes_per_page(config, page_size, DType::BF16) * static_cast<size_t>(next_page);
  KvCache cache(config, o, gpu);

  return {time_attention(gpu, cache, batch), kv_bytes, flops};
}

// Half the KV heads streaming (HeadPattern::uniform), the rest dense: one prompt prefilled in one
// pass under `window`, or one decode step after it (streaming heads keep sink 128 + local 256).
// FLOPs are counted as dense causal attention's ("dense-equivalent"), bytes as those read.
Timing time_streaming(Backend& gpu, int32_t n, StreamingWindow window, bool decode) {
  const ModelConfig config = layer_config();
  SparsityConfig sp;
  sp.policy = AttentionPolicy::Streaming;
  sp.page_size = 64;
  sp.prefill_window = window;
  sp.decode_window = {128, 256};
  KvCacheOptions o;
  o.page_size = 64;
  o.retrieval_pages = n / 64 + 2;
  o.streaming_pages = n / 64 + 2;
  KvCache cache(config, HeadPattern::uniform(1, kKvHeads, 0.5), o, gpu);
  SequenceKv seq;
  cache.reserve(seq, decode ? n + 1 : n);
  if (decode) cache.trim_streaming(seq, n, sp.decode_window);
  const StepChunk chunk{&seq, decode ? n : 0, decode ? 1 : n, decode, nullptr};
  const AttentionBatch batch = plan_step(cache, std::span<const StepChunk>(&chunk, 1), &sp);
  const double pos = decode ? n : 0;
  const double flops = decode ? 4.0 * kHeadDim * kHeads * (pos + 1) : 4.0 * kHeadDim * kHeads * n * (n + 1.0) / 2;
  const double visible = std::min<double>(n + 1, static_cast<double>(sp.decode_window.sink + sp.decode_window.local));
  const double kv_bytes = decode ? 2.0 * (kKvHeads / 2) * (n + 1 + visible) * kHeadDim * 2 : 0;
  const double ms = time_attention(gpu, cache, batch);
  cache.release(seq);
  return {ms, kv_bytes, flops};
}

// LServe in decode: half the KV heads streaming (sink 128 + local 256), the other half reading
// the pages the GPU selector picks under a 4096-token budget (16-token logical pages pooled onto
// 64-token pages), for `batch` sequences of n tokens. Times a step that selects afresh and one
// that reuses the selection (the selector runs every 4 steps), each including its own launches;
// their difference is the selector's time. Bytes: what the kernels must read at least (the
// selected and windowed K/V, and in a fresh step every logical page's key min and max).
struct SelectedTiming {
  double fresh_ms, reused_ms, fresh_bytes, reused_bytes;
};
SelectedTiming time_selected_decode(int32_t n, int32_t batch_size, SelectionGranularity granularity) {
  CudaBackendOptions options;
  options.decode_list_keys = g_list_keys;
  options.dependent_launch = g_dependent_launch;
  auto gpu = make_cuda_backend(options);
  const ModelConfig config = layer_config();
  SparsityConfig sp;
  sp.policy = AttentionPolicy::LServe;
  sp.page_size = 64;
  sp.logical_page_size = 16;
  sp.token_budget = 4096;
  sp.selector_interval = 4;
  sp.decode_window = {128, 256};
  sp.granularity = granularity;
  KvCacheOptions o;
  o.page_size = 64;
  o.logical_page_size = 16;
  o.max_sequences = batch_size;
  o.retrieval_pages = int64_t{batch_size} * (n / 64 + 2);
  o.streaming_pages = o.retrieval_pages;  // reserve() takes the whole context before the trim frees it
  KvCache cache(config, HeadPattern::uniform(1, kKvHeads, 0.5), o, *gpu);
  std::vector<SequenceKv> seqs(static_cast<size_t>(batch_size));
  std::vector<StepChunk> chunks;
  for (SequenceKv& seq : seqs) {
    cache.reserve(seq, n + 1);
    cache.trim_streaming(seq, n, sp.decode_window);
    chunks.push_back({&seq, n, 1, true, nullptr});
  }
  const AttentionBatch batch = plan_step(cache, chunks, &sp);
  SelectedTiming t{};
  t.fresh_ms = time_attention(*gpu, cache, batch, true);
  gpu->end_step(batch);  // the selections go to the sequences, as after a real step
  for (SequenceKv& seq : seqs) seq.decode_steps = 1;  // the next step reuses them
  t.reused_ms = time_attention(*gpu, cache, batch, true);
  for (SequenceKv& seq : seqs) cache.release(seq);
  const double G = static_cast<double>(kHeads) / kKvHeads, half = kKvHeads / 2.0, row = kHeadDim * 2.0 * 2;  // K + V
  const double readers = granularity == SelectionGranularity::QueryHead ? half * G : half;
  const double kv = batch_size * (readers * static_cast<double>(sp.token_budget) + half * 384.0) * row;
  t.reused_bytes = kv;
  t.fresh_bytes = kv + batch_size * half * (n / 16.0) * row;  // min and max of each logical page
  return t;
}

// sections: any of "dense", "streaming", "lserve" (empty: all); "profile" runs one LServe case alone.
// Options among them: list-keys=N (LServe's page-list splits), batch=N (LServe's batch sizes: 1, 8
// or both), dependent-launch (programmatic dependent launch: dependent_launch.cuh).
int run(std::vector<std::string> sections) {
  int32_t only_batch = 0;
  std::erase_if(sections, [&](const std::string& a) {
    if (a.rfind("list-keys=", 0) == 0) return g_list_keys = std::stoi(a.substr(10)), true;
    if (a.rfind("batch=", 0) == 0) return only_batch = std::stoi(a.substr(6)), true;
    if (a == "dependent-launch") return g_dependent_launch = true, true;
    return false;
  });
  auto want_only = [&](const char* name) { return std::find(sections.begin(), sections.end(), name) != sections.end(); };
  auto want = [&](const char* name) { return sections.empty() || want_only(name); };
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "no CUDA GPU visible\n");
    return 1;
  }
  CudaBackendOptions options;
  options.dependent_launch = g_dependent_launch;
  auto gpu = make_cuda_backend(options);
  std::printf("%s%s\n", gpu->name().c_str(), g_dependent_launch ? ", programmatic dependent launch" : "");
  const double bw = copy_bandwidth();
  std::printf("copy bandwidth (device to device, read + write): %.0f GB/s\n\n", bw);
  const std::vector<Case> cases = {
      {"prefill 32K (one pass, causal)", {{0, 32768}}},
      {"prefill 128K (one pass, causal)", {{0, 131072}}},
      {"prefill 256K (one pass, causal)", {{0, 262144}}},
      {"prefill 2K chunk after 30K", {{30720, 2048}}},
      {"decode 64K x1", {{65535, 1}}},
      {"decode 128K x1", {{131071, 1}}},
      {"decode 256K x1", {{262143, 1}}},
      {"decode 64K x8", std::vector<std::pair<int32_t, int32_t>>(8, {65535, 1})},
      {"decode 128K x8", std::vector<std::pair<int32_t, int32_t>>(8, {131071, 1})},
      {"decode 256K x8", std::vector<std::pair<int32_t, int32_t>>(8, {262143, 1})},
      {"decode 8K x64", std::vector<std::pair<int32_t, int32_t>>(64, {8191, 1})},
  };
  if (want("dense"))
    std::printf("%-34s %5s %10s %12s %12s %10s\n", "case (32/8 heads, d 128)", "page", "ms", "KV GB/s", "% of copy",
                "TFLOP/s");
  for (const auto& c : cases) {
    if (!want("dense")) break;
    for (int32_t page : {16, 64}) {
      const Timing t = time_case(*gpu, c, page);
      const double gbs = t.kv_bytes / (t.ms * 1e-3) / 1e9;
      std::printf("%-34s %5d %10.3f %12.0f %11.1f%% %10.1f\n", c.name, page, t.ms, gbs, 100.0 * gbs / bw,
                  t.flops / (t.ms * 1e-3) / 1e12);
    }
  }

  if (want("streaming")) {
    std::printf("\nhalf the KV heads streaming, the rest dense; page 64; TFLOP/s dense-equivalent\n");
    for (const auto& [name, window] : {std::pair{"LServe's window (sink 128 + local 8192)", StreamingWindow{128, 8192}},
                                       std::pair{"DuoAttention's (sink 64 + local 256)", StreamingWindow{64, 256}}}) {
      for (int32_t n : {32768, 131072, 262144}) {
        const Timing t = time_streaming(*gpu, n, window, false);
        std::printf("prefill %3dK, %-40s %10.3f ms %10.1f TFLOP/s\n", n / 1024, name, t.ms,
                    t.flops / (t.ms * 1e-3) / 1e12);
      }
    }
    for (int32_t n : {131072, 262144}) {
      const Timing t = time_streaming(*gpu, n, StreamingWindow{128, 8192}, true);
      const double gbs = t.kv_bytes / (t.ms * 1e-3) / 1e9;
      std::printf("decode %3dK x1 (streaming heads: sink 128 + local 256)    %10.3f ms %10.0f GB/s of KV read\n",
                  n / 1024, t.ms, gbs);
    }
  }

  if (want_only("profile")) {
    // One LServe case only, for a profiler: at 256K x1, one selecting step, then one reusing
    // step, each after its own warm-up and alone between cudaProfilerStart and Stop.
    g_profile_once = true;
    time_selected_decode(262144, 1, SelectionGranularity::KvHead);
    std::printf("profile: decode 256K x1 shared: one selecting step, then one reusing step\n");
    return 0;
  }
  if (!want("lserve")) return 0;
  std::printf("\nLServe decode (half the heads streaming, the rest selecting under a 4096-token budget, every 4 "
              "steps);\nselector = select + read - reuse; GB/s: the least bytes the step must read over its time\n");
  for (int32_t B : {1, 8}) {
    if (only_batch > 0 && B != only_batch) continue;
    for (int32_t n : {65536, 131072, 262144, 524288}) {
      const Timing dense = time_case(*gpu, Case{"dense", std::vector<std::pair<int32_t, int32_t>>(B, {n - 1, 1})}, 64);
      for (const auto& [gname, g] : {std::pair{"shared", SelectionGranularity::KvHead},
                                     std::pair{"per-query", SelectionGranularity::QueryHead}}) {
        const SelectedTiming st = time_selected_decode(n, B, g);
        const double step = (st.fresh_ms + 3 * st.reused_ms) / 4;  // a selection every 4 steps
        std::printf("decode %3dK x%d, %-9s: select + read %7.3f ms (%5.0f GB/s), reuse %7.3f ms (%5.0f GB/s), "
                    "selector %7.3f ms, per step %7.3f ms; dense %7.3f ms: %5.1fx\n",
                    n / 1024, B, gname, st.fresh_ms, st.fresh_bytes / (st.fresh_ms * 1e6), st.reused_ms,
                    st.reused_bytes / (st.reused_ms * 1e6), st.fresh_ms - st.reused_ms, step, dense.ms,
                    dense.ms / step);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  try {
    return lserve::run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
