// Generation on the GPU end to end: tokens drawn on the device, decode steps replayed from CUDA
// graphs.
//   - The same greedy text as the CPU on every fixture model and the bundled models; the two may
//     part only at a step where the CPU's top-2 margin is within bf16 rounding of a tie
//     (random-weight fixtures have such steps; from there the continuations rightly differ).
//   - Graphs change nothing: a generation and a batch of requests in the engine, greedy and
//     sampled, give bit-identical tokens with graphs and with every launch made from the host,
//     and the graphs were really replayed.
#include <gtest/gtest.h>

#include <algorithm>

#include "cuda_test_util.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "fixture_model.h"
#include "mixed_batch.h"
#include "model/safetensors.h"

namespace lserve {
namespace {

std::vector<int32_t> prompt_of(const std::filesystem::path& dir, int which) {
  SafetensorsFile ref(dir / "reference.safetensors");
  const auto& t = ref.tensors().at("prompt" + std::to_string(which) + ".ids");
  std::vector<int32_t> ids(t.nbytes / 4);
  std::memcpy(ids.data(), t.data, t.nbytes);
  return ids;
}

GenerationResult generate(test::FixtureModel& f, const std::vector<int32_t>& prompt, int64_t n,
                          const SamplingParams& sampling = {}) {
  GenerationRequest req;
  req.prompt = prompt;
  req.max_tokens = n;
  req.ignore_eos = true;
  req.sampling = sampling;
  return f.gen.run(req, nullptr);
}

class CudaGeneration : public ::testing::TestWithParam<std::filesystem::path> {};

TEST_P(CudaGeneration, GreedyTextIsTheCpus) {
  LSERVE_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend(0);
  auto gpu = make_cuda_backend(0);
  test::FixtureModel on_cpu(GetParam(), *cpu), on_gpu(GetParam(), *gpu);
  const int64_t V = on_cpu.config.vocab_size, n = 32;
  for (int p = 0; p < 2; ++p) {
    const auto prompt = prompt_of(GetParam(), p);
    const auto want = generate(on_cpu, prompt, n).tokens;
    const auto got = generate(on_gpu, prompt, n).tokens;
    ASSERT_EQ(got.size(), want.size());
    // Where the two part, the CPU must have been near a tie: its top-2 margin at that step
    // within the GPU's bf16 error bound (twice 3% of the largest logit, as in model_test.cpp).
    size_t same = 0;
    while (same < want.size() && got[same] == want[same]) ++same;
    if (same < want.size()) {
      std::vector<int32_t> tokens = prompt;
      tokens.insert(tokens.end(), want.begin(), want.begin() + static_cast<std::ptrdiff_t>(same));
      const auto logits = on_cpu.gen.score(tokens, static_cast<int64_t>(tokens.size()), 64);
      float first = -INFINITY, second = -INFINITY, scale = 0;
      for (int64_t i = 0; i < V; ++i) {
        const float x = logits[static_cast<size_t>(i)];
        if (x > first) second = first, first = x;
        else if (x > second) second = x;
        scale = std::max(scale, std::abs(x));
      }
      const float margin = first - second, bound = 2 * 3e-2f * scale;
      EXPECT_LE(margin, bound) << "prompt " << p << ": the GPU parted from the CPU at token " << same
                               << " where the CPU's choice was clear";
      std::printf("  %s prompt %d: first %zu of %zu greedy tokens identical, then a near-tie (margin %.3g, bound %.3g)\n",
                  GetParam().filename().c_str(), p, same, want.size(), margin, bound);
    } else {
      std::printf("  %s prompt %d: all %zu greedy tokens identical\n", GetParam().filename().c_str(), p, want.size());
    }
  }
  EXPECT_EQ(on_gpu.cache.allocator().num_used(), 0) << "pages leaked";
}

TEST_P(CudaGeneration, GraphsChangeNothing) {
  LSERVE_SKIP_WITHOUT_GPU();
  auto with = make_cuda_backend(0);
  CudaBackendOptions off;
  off.graphs = false;
  auto without = make_cuda_backend(off);
  test::FixtureModel a(GetParam(), *with), b(GetParam(), *without);
  SamplingParams sampled;
  sampled.temperature = 0.9f;
  sampled.top_p = 0.95f;
  sampled.top_k = 50;
  sampled.seed = 7;
  for (const SamplingParams& s : {SamplingParams{}, sampled}) {
    const auto prompt = prompt_of(GetParam(), 1);
    EXPECT_EQ(generate(a, prompt, 48, s).tokens, generate(b, prompt, 48, s).tokens)
        << (s.greedy() ? "greedy" : "sampled");
  }
  const CudaStepStats stats = cuda_step_stats(*with);
  EXPECT_GT(stats.replayed, 40) << "decode steps should replay a recorded graph";
  EXPECT_LE(stats.recorded, 4) << "one recording per decode shape";
  EXPECT_EQ(cuda_step_stats(*without).recorded, 0);
}

// Kernels that start while the one before them drains (dependent_launch.cuh) must compute
// exactly what ordinary launches do. The switch is process-wide: one backend at a time.
TEST_P(CudaGeneration, DependentLaunchChangesNothing) {
  LSERVE_SKIP_WITHOUT_GPU();
  SamplingParams sampled;
  sampled.temperature = 0.9f;
  sampled.top_k = 50;
  sampled.seed = 11;
  auto run = [&](bool dependent) {
    CudaBackendOptions options;
    options.dependent_launch = dependent;
    auto backend = make_cuda_backend(options);
    test::FixtureModel m(GetParam(), *backend);
    std::vector<std::vector<int32_t>> out;
    for (const SamplingParams& s : {SamplingParams{}, sampled}) out.push_back(generate(m, prompt_of(GetParam(), 1), 48, s).tokens);
    return out;
  };
  const auto ordinary = run(false);
  EXPECT_EQ(run(true), ordinary);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGeneration, ::testing::ValuesIn(test::reference_model_dirs()),
                         [](const auto& param_info) { return test::model_test_name(param_info.param); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CudaGeneration);

// A batch in the continuous-batching engine: requests of different lengths joining and leaving,
// so the recorded decode shapes change and the sequences' splits grow between replays.
TEST(CudaEngine, GraphsChangeNothingInABatch) {
  LSERVE_SKIP_WITHOUT_GPU();
  const auto dir = test::bundled_model_dirs("config.json").back();  // the trained model
  auto run = [&](bool graphs) {
    CudaBackendOptions cuda;
    cuda.graphs = graphs;
    auto backend = make_cuda_backend(cuda);
    const ModelConfig config = ModelConfig::from_file(dir / "config.json");
    LlamaModel model(config, load_weights(config, dir, *backend), *backend, 4096);
    KvCacheOptions kv;
    kv.page_size = 16;
    kv.retrieval_pages = 1024;
    kv.max_sequences = 8;
    KvCache cache(config, kv, *backend);
    SparsityConfig dense;
    dense.page_size = 16;
    EngineOptions options;
    options.scheduler.max_running = 8;
    Engine engine(model, cache, nullptr, dense, options);
    const auto out = test::serve_mixed_batch(engine, config.vocab_size);
    EXPECT_EQ(cache.allocator().num_used(), 0) << "pages leaked";
    return std::make_pair(out, cuda_step_stats(*backend));
  };
  const auto [with, stats] = run(true);
  const auto [without, none] = run(false);
  for (size_t i = 0; i < with.size(); ++i) EXPECT_EQ(with[i], without[i]) << "request " << i;
  EXPECT_GT(stats.replayed, 50);
  EXPECT_EQ(none.recorded, 0);
  std::printf("  %lld steps recorded, %lld replayed\n", static_cast<long long>(stats.recorded),
              static_cast<long long>(stats.replayed));
}

}  // namespace
}  // namespace lserve
