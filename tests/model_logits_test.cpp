// Whole-model logits against HF transformers, on the tiny random-weight models that
// python/make_fixtures.py saved with HF's own reference outputs (reference.safetensors):
//   prompt{p}.ids            [T]      the prompt
//   prompt{p}.logits         [T, V]   one full forward (f32)
//   prompt{p}.decode_logits  [D, V]   HF incremental decode of the last D tokens, one at a time
//   prompt{p}.greedy         [G]      HF greedy continuation
// Tolerance: max |ours - HF| / max |HF| < 1e-4 per prompt. Both sides compute in f32 from the
// same weights, so the difference is summation order alone (BLAS vs torch), about 1e-6 here;
// 1e-4 leaves room for long prompts without hiding a wrong rope or norm (those give > 1e-2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "engine/generator.h"
#include "fixture_model.h"
#include "model/llama_model.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "test_util.h"

namespace lserve {
namespace {

template <typename T>
std::vector<T> read_tensor(const SafetensorsFile& f, const std::string& name, DType dtype, Shape* shape = nullptr) {
  const auto it = f.tensors().find(name);
  if (it == f.tensors().end()) throw Error("reference is missing " + name);
  EXPECT_EQ(it->second.dtype, dtype) << name;
  if (shape) *shape = it->second.shape;
  std::vector<T> v(it->second.nbytes / sizeof(T));
  std::memcpy(v.data(), it->second.data, it->second.nbytes);
  return v;
}

struct Compare {
  double rel_error;
  int64_t argmax_mismatches;
};

Compare compare_rows(const float* ours, const float* ref, int64_t rows, int64_t vocab) {
  double max_diff = 0, max_ref = 0;
  int64_t mismatches = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = ours + r * vocab;
    const float* b = ref + r * vocab;
    for (int64_t i = 0; i < vocab; ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::abs(a[i] - b[i])));
      max_ref = std::max(max_ref, static_cast<double>(std::abs(b[i])));
    }
    mismatches += (std::max_element(a, a + vocab) - a) != (std::max_element(b, b + vocab) - b);
  }
  return {max_diff / std::max(max_ref, 1e-30), mismatches};
}

class ModelLogits : public ::testing::TestWithParam<std::filesystem::path> {};

TEST_P(ModelLogits, MatchHuggingFace) {
  const auto dir = GetParam();
  auto backend = make_cpu_backend(0);
  test::FixtureModel fixture(dir, *backend);
  const ModelConfig& config = fixture.config;
  Generator& gen = fixture.gen;
  SafetensorsFile ref(dir / "reference.safetensors");
  const int64_t V = config.vocab_size;

  for (int p = 0; p < 2; ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    const std::string key = "prompt" + std::to_string(p);
    const auto ids = read_tensor<int32_t>(ref, key + ".ids", DType::I32);
    Shape ls, ds;
    const auto want = read_tensor<float>(ref, key + ".logits", DType::F32, &ls);
    ASSERT_EQ(ls, (Shape{static_cast<int64_t>(ids.size()), V}));

    // 1. One prefill pass over the whole prompt.
    const auto got = gen.prefill_logits(ids);
    const Compare c = compare_rows(got.data(), want.data(), static_cast<int64_t>(ids.size()), V);
    EXPECT_LT(c.rel_error, 1e-4) << "prefill";
    EXPECT_EQ(c.argmax_mismatches, 0) << "prefill";
    RecordProperty(key + "_prefill_rel_error", fmt::format("{:.2e}", c.rel_error));

    // 2. Chunked prefill (chunks of 40 cross the 64-token pages) then token-by-token decode.
    const auto want_dec = read_tensor<float>(ref, key + ".decode_logits", DType::F32, &ds);
    const int64_t D = ds[0];
    const auto scored = gen.score(ids, static_cast<int64_t>(ids.size()) - D, 40);
    const Compare cd = compare_rows(scored.data() + V, want_dec.data(), D, V);
    EXPECT_LT(cd.rel_error, 1e-4) << "decode";
    EXPECT_EQ(cd.argmax_mismatches, 0) << "decode";

    // 3. Greedy generation.
    const auto want_greedy = read_tensor<int32_t>(ref, key + ".greedy", DType::I32);
    GenerationRequest req;
    req.prompt = ids;
    req.max_tokens = static_cast<int64_t>(want_greedy.size());
    req.ignore_eos = true;
    const auto result = gen.run(req, nullptr);
    EXPECT_EQ(result.tokens, want_greedy) << "greedy continuation";
    EXPECT_EQ(fixture.cache.allocator().num_used(), 0) << "pages leaked";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelLogits, ::testing::ValuesIn(test::reference_model_dirs()),
                         [](const auto& param_info) { return test::model_test_name(param_info.param); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ModelLogits);

TEST(ModelLogitsFixtures, ArePresent) {
  EXPECT_GE(test::reference_model_dirs().size(), 6u) << "run python/make_fixtures.py on a machine with transformers";
}

TEST(DummyWeights, RunAnyConfig) {
  auto backend = make_cpu_backend(0);
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 128;
  LlamaModel model(c, make_dummy_weights(c, *backend, 1), *backend, 128);
  KvCacheOptions kv;
  kv.page_size = 16;
  kv.memory_bytes = KvCache::bytes_per_page(c, 16, DType::F32) * 8;
  KvCache cache(c, kv, *backend);
  Generator gen(model, cache, nullptr);
  const auto logits = gen.prefill_logits({1, 2, 3, 4, 5});
  ASSERT_EQ(logits.size(), 5u * 64);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_NE(logits[0], logits[64]);  // positions differ
}

}  // namespace
}  // namespace lserve
