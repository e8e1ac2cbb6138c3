// The serving engine end to end on the bundled model: continuous batching, chunked prefill,
// preemption and prefix caching must not change what a greedy request generates, under dense
// attention and under LServe's sparse policy (streaming heads + page selection), and must
// return every page when requests finish or are aborted.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "engine/engine.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "small_policies.h"
#include "test_util.h"

namespace lserve {
namespace {

const std::filesystem::path kModelDir = std::filesystem::path(LSERVE_SOURCE_DIR) / "models/tiny-llama";

SparsityConfig sparse_policy() { return test::small_lserve_policy(2); }
SparsityConfig dense_policy() { return test::small_dense_policy(); }

struct Served {
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
  ModelConfig config = ModelConfig::from_file(kModelDir / "config.json");
  LlamaModel model{config, load_weights(config, kModelDir, *backend), *backend, 2048};
  Tokenizer tokenizer = Tokenizer::from_dir(kModelDir);
  SparsityConfig sparsity;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Engine> engine;

  Served(const SparsityConfig& s, int64_t pages, EngineOptions options) : sparsity(s) {
    KvCacheOptions kv;
    kv.page_size = s.page_size;
    kv.logical_page_size = s.selects_pages() ? s.logical_page_size : 0;
    kv.retrieval_pages = pages;
    kv.streaming_pages = s.has_streaming_heads() ? pages : 0;
    kv.max_sequences = options.scheduler.max_running;
    const HeadPattern pattern = s.has_streaming_heads() ? HeadPattern::uniform(config.num_layers, config.num_kv_heads, 0.5)
                                                        : HeadPattern::all_retrieval(config.num_layers, config.num_kv_heads);
    cache = std::make_unique<KvCache>(config, pattern, kv, *backend);
    engine = std::make_unique<Engine>(model, *cache, &tokenizer, sparsity, options);
  }

  int64_t pages_in_use() const {
    const auto s = engine->stats();
    return s.retrieval_pages_used + s.streaming_pages_used;
  }
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::Error;
  int64_t cached = 0;
  bool finished = false;
  std::vector<float> logprobs;  // of each generated token, when the request asks for them
};

// Submits every request, runs the engine on this thread until all finish.
std::vector<Outcome> run_all(Engine& engine, const std::vector<RequestParams>& requests) {
  std::vector<Outcome> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    engine.submit(requests[i], [&out, i](RequestOutput&& o) {
      Outcome& r = out[i];
      EXPECT_FALSE(r.finished) << "output after the end";
      r.tokens.insert(r.tokens.end(), o.tokens.begin(), o.tokens.end());
      r.text += o.text;
      r.cached = o.cached_prompt_tokens;
      for (const TokenLogprob& lp : o.logprobs) r.logprobs.push_back(lp.logprob);
      if (o.finished) {
        r.finished = true;
        r.reason = o.finish_reason;
      }
    });
  }
  engine.run_until_idle();
  for (const Outcome& r : out) EXPECT_TRUE(r.finished);
  return out;
}

std::vector<RequestParams> random_requests(int n, uint64_t seed, int64_t min_len, int64_t max_len,
                                           std::vector<int32_t> shared_prefix = {}) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, 4000);
  std::uniform_int_distribution<int64_t> length(min_len, max_len);
  std::vector<RequestParams> requests;
  for (int i = 0; i < n; ++i) {
    RequestParams p;
    p.prompt = shared_prefix;
    for (int64_t k = length(rng); k > 0; --k) p.prompt.push_back(token(rng));
    p.max_tokens = 10 + i % 7;
    p.ignore_eos = true;
    requests.push_back(std::move(p));
  }
  return requests;
}

std::vector<Outcome> run_alone(const SparsityConfig& s, const std::vector<RequestParams>& requests) {
  std::vector<Outcome> out;
  for (const RequestParams& r : requests) {
    EngineOptions options;
    options.prefix_caching = false;
    Served served(s, 256, options);
    out.push_back(run_all(*served.engine, {r})[0]);
  }
  return out;
}

void expect_same_tokens(const std::vector<Outcome>& got, const std::vector<Outcome>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "request " << i;
    EXPECT_EQ(got[i].text, want[i].text) << "request " << i;
  }
}

class EngineByPolicy : public ::testing::TestWithParam<bool> {
 protected:
  SparsityConfig policy() const { return GetParam() ? sparse_policy() : dense_policy(); }
};

TEST_P(EngineByPolicy, BatchedChunkedRequestsMatchEachRunAlone) {
  const auto requests = random_requests(10, 7, 5, 300);
  const auto alone = run_alone(policy(), requests);
  EngineOptions options;
  options.scheduler.max_batched_tokens = 96;  // long prompts are chunked beside running decodes
  Served served(policy(), 256, options);
  expect_same_tokens(run_all(*served.engine, requests), alone);
  EXPECT_EQ(served.pages_in_use(), 0);
  EXPECT_GT(served.engine->stats().steps, 0);
}

TEST_P(EngineByPolicy, PreemptionRecomputesTheSameOutput) {
  const auto requests = random_requests(6, 11, 150, 250);
  const auto alone = run_alone(policy(), requests);
  EngineOptions options;
  options.scheduler.max_batched_tokens = 64;
  // Room for about two of them at once: the others wait, and growing ones preempt the newest.
  Served served(policy(), 40, options);
  expect_same_tokens(run_all(*served.engine, requests), alone);
  EXPECT_GT(served.engine->stats().preemptions, 0);
  EXPECT_EQ(served.pages_in_use(), 0);
}

TEST_P(EngineByPolicy, PrefixCacheReusesSharedPagesWithoutChangingOutput) {
  std::vector<int32_t> prefix;
  for (int i = 0; i < 200; ++i) prefix.push_back((i * 37 + 11) % 4000);
  const auto requests = random_requests(5, 3, 5, 60, prefix);
  const auto alone = run_alone(policy(), requests);
  EngineOptions options;
  options.scheduler.max_batched_tokens = 128;
  Served served(policy(), 256, options);
  // The first request computes the prefix; the rest then find it cached.
  const auto first = run_all(*served.engine, {requests[0]});
  expect_same_tokens(first, {alone[0]});
  EXPECT_EQ(first[0].cached, 0);
  const auto rest = run_all(*served.engine, {requests.begin() + 1, requests.end()});
  expect_same_tokens(rest, {alone.begin() + 1, alone.end()});
  for (const Outcome& r : rest) EXPECT_GE(r.cached, 192) << "the 12 full pages of the prefix";
  const auto stats = served.engine->stats();
  EXPECT_GE(stats.prefix_tokens_hit, 4 * 192);
  EXPECT_EQ(served.pages_in_use(), 0) << "cached pages are evictable, not in use";
  EXPECT_GT(stats.evictable_pages, 0);
}

INSTANTIATE_TEST_SUITE_P(DenseAndSparse, EngineByPolicy, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "lserve" : "dense"; });

// A request's own sparse attention runs beside requests that use the engine's: each gets what
// an engine configured with its policy gives it alone.
TEST(Engine, PerRequestSparseAttentionMatchesAnEngineOfThatPolicy) {
  auto requests = random_requests(6, 23, 150, 300);
  for (RequestParams& r : requests) r.logprobs = true;
  SparsityConfig all_pages = sparse_policy();
  all_pages.policy = AttentionPolicy::Streaming;  // same streaming heads, retrieval heads read every page
  SparsityConfig wide = sparse_policy();
  wide.token_budget = 128;
  wide.selector_interval = 1;
  std::vector<SparsityConfig> configs;
  for (size_t i = 0; i < requests.size(); ++i) {
    configs.push_back(i % 3 == 0 ? sparse_policy() : i % 3 == 1 ? all_pages : wide);
    if (i % 3 != 0) requests[i].sparsity = configs.back();
  }
  std::vector<Outcome> want;
  for (size_t i = 0; i < requests.size(); ++i) {
    RequestParams alone = requests[i];
    alone.sparsity.reset();
    want.push_back(run_alone(configs[i], {alone})[0]);
  }
  EngineOptions options;
  options.scheduler.max_batched_tokens = 96;
  Served served(sparse_policy(), 256, options);
  const auto got = run_all(*served.engine, requests);
  expect_same_tokens(got, want);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].logprobs, want[i].logprobs) << "request " << i;
  EXPECT_EQ(served.pages_in_use(), 0);
  // The overrides really change the attention: the same request under the engine's own policy
  // gives other probabilities (random weights may still pick the same tokens).
  for (size_t i : {size_t{1}, size_t{2}}) {
    RequestParams plain = requests[i];
    plain.sparsity.reset();
    EXPECT_NE(run_alone(sparse_policy(), {plain})[0].logprobs, want[i].logprobs) << "request " << i;
  }
}

TEST(Engine, RefusesSparseAttentionItsCacheCannotRun) {
  Served sparse(sparse_policy(), 64, {});
  RequestParams p = random_requests(1, 5, 20, 20)[0];
  SparsityConfig dense = sparse_policy();
  dense.policy = AttentionPolicy::Dense;  // would need the streaming heads' dropped KV
  p.sparsity = dense;
  EXPECT_THROW(sparse.engine->submit(p, [](RequestOutput&&) {}), InvalidRequest);
  SparsityConfig window = sparse_policy();
  window.decode_window.local = 64;  // the cache keeps another window
  p.sparsity = window;
  EXPECT_THROW(sparse.engine->submit(p, [](RequestOutput&&) {}), InvalidRequest);
  SparsityConfig budget = sparse_policy();
  budget.token_budget = 20;  // not a page multiple
  p.sparsity = budget;
  EXPECT_THROW(sparse.engine->submit(p, [](RequestOutput&&) {}), InvalidRequest);

  Served dense_engine(dense_policy(), 64, {});
  SparsityConfig quest = dense_policy();
  quest.policy = AttentionPolicy::Quest;  // no page summaries in a dense engine's cache
  p.sparsity = quest;
  EXPECT_THROW(dense_engine.engine->submit(p, [](RequestOutput&&) {}), InvalidRequest);
}

TEST(Engine, PrefixCacheEvictsUnderPressureAndStaysCorrect) {
  // A pool too small to keep earlier prefixes: new requests evict them (LRU) and still match.
  const auto requests = random_requests(8, 5, 100, 200);
  const auto alone = run_alone(dense_policy(), requests);
  EngineOptions options;
  Served served(dense_policy(), 30, options);
  for (size_t i = 0; i < requests.size(); ++i)
    expect_same_tokens(run_all(*served.engine, {requests[i], requests[i]}), {alone[i], alone[i]});
  EXPECT_EQ(served.pages_in_use(), 0);
}

TEST(Engine, AbortFreesEverythingAtOnce) {
  Served served(sparse_policy(), 256, {});
  auto requests = random_requests(4, 9, 100, 200);
  for (auto& r : requests) r.max_tokens = 500;
  std::vector<uint64_t> ids;
  std::map<uint64_t, FinishReason> ended;
  for (const auto& r : requests)
    ids.push_back(served.engine->submit(r, [&](RequestOutput&& o) {
      if (o.finished) ended[o.request_id] = o.finish_reason;
    }));
  for (int i = 0; i < 6; ++i) served.engine->step();
  EXPECT_GT(served.pages_in_use(), 0);
  for (uint64_t id : ids) served.engine->abort(id);
  served.engine->run_until_idle();
  EXPECT_EQ(served.pages_in_use(), 0);
  ASSERT_EQ(ended.size(), ids.size());
  for (const auto& [id, reason] : ended) EXPECT_EQ(reason, FinishReason::Abort);
}

TEST(Engine, RefusesRequestsItCannotServe) {
  Served served(dense_policy(), 16, {});
  Engine& e = *served.engine;
  auto ok = [] {
    RequestParams p;
    p.prompt = {1, 2, 3};
    p.max_tokens = 4;
    return p;
  };
  auto no_op = [](RequestOutput&&) {};
  RequestParams p = ok();
  p.prompt.clear();
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  p = ok();
  p.prompt.push_back(4096);
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  p = ok();
  p.max_tokens = 0;
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  p = ok();
  p.max_tokens = 2048;  // beyond the model instance's context
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  p = ok();
  p.max_tokens = 300;  // within the context, beyond the 16 x 16-token pool
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  p = ok();
  p.sampling.top_p = 0;
  EXPECT_THROW(e.submit(p, no_op), InvalidRequest);
  EXPECT_NO_THROW(e.submit(ok(), no_op));
}

TEST(Engine, StopStringsEndTheRequestAndAreNotReturned) {
  Served served(dense_policy(), 256, {});
  RequestParams p = random_requests(1, 21, 20, 20)[0];
  p.max_tokens = 24;
  const Outcome full = run_all(*served.engine, {p})[0];
  ASSERT_GE(full.text.size(), 6u);
  // Stop at a piece of the text generated greedily: the output ends right before it.
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  p.stop = {stop};
  const Outcome stopped = run_all(*served.engine, {p})[0];
  EXPECT_EQ(stopped.reason, FinishReason::Stop);
  EXPECT_EQ(stopped.text, full.text.substr(0, full.text.find(stop)));
}

TEST(Engine, ServesSubmissionsFromManyThreads) {
  EngineOptions options;
  options.scheduler.max_batched_tokens = 128;
  Served served(sparse_policy(), 256, options);
  const auto requests = random_requests(16, 13, 10, 120);
  const auto alone = run_alone(sparse_policy(), requests);
  served.engine->start();
  std::vector<Outcome> out(requests.size());
  std::atomic<int> done{0};
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i)
    clients.emplace_back([&, i] {
      served.engine->submit(requests[i], [&, i](RequestOutput&& o) {
        out[i].tokens.insert(out[i].tokens.end(), o.tokens.begin(), o.tokens.end());
        out[i].text += o.text;
        if (o.finished) ++done;
      });
    });
  for (auto& t : clients) t.join();
  while (done < static_cast<int>(requests.size())) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  served.engine->stop(true);
  expect_same_tokens(out, alone);
  EXPECT_EQ(served.pages_in_use(), 0);
}

}  // namespace
}  // namespace lserve
