#include "eval/head_profiler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>

#include "engine/generator.h"

namespace lserve::eval {

namespace {

struct ProfileSample {
  std::vector<int32_t> tokens;  // prompt, then the answer's tokens
  int64_t prompt_len = 0;
};

// Sum over the answer tokens of log softmax(row)[token]; row i of `logits` (Generator::score's
// layout) is the distribution after tokens[prompt_len - 1 + i].
double answer_logprob(const std::vector<float>& logits, int64_t vocab, const ProfileSample& s) {
  double total = 0;
  const auto answer_len = static_cast<int64_t>(s.tokens.size()) - s.prompt_len;
  for (int64_t i = 0; i < answer_len; ++i) {
    const float* row = logits.data() + i * vocab;
    const float top = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - top));
    total += static_cast<double>(row[s.tokens[static_cast<size_t>(s.prompt_len + i)]] - top) - std::log(sum);
  }
  return total;
}

// Depths spread evenly over the prompt, away from its ends: (k + 0.5) / n.
std::vector<int> spread_depths(int64_t n) {
  std::vector<int> depths;
  for (int64_t k = 0; k < n; ++k)
    depths.push_back(static_cast<int>(std::lround(1000.0 * (static_cast<double>(k) + 0.5) / static_cast<double>(n))));
  return depths;
}

// Every head retrieval except (layer, head), which streams.
HeadPattern one_streaming_head(int64_t layers, int64_t heads, int64_t layer, int64_t head) {
  std::vector<std::vector<double>> scores(static_cast<size_t>(layers), std::vector<double>(static_cast<size_t>(heads), 1.0));
  scores[static_cast<size_t>(layer)][static_cast<size_t>(head)] = 0.0;
  return HeadPattern::from_scores(std::move(scores), HeadRule{std::nullopt, 0.5}, "profiling");
}

}  // namespace

HeadProfile profile_heads(LlamaModel& model, const Tokenizer& tokenizer, const Haystack& haystack,
                          const HeadProfileOptions& options, const CacheFactory& make_cache,
                          const std::function<void(const HeadProfileProgress&)>& progress) {
  const ModelConfig& config = model.config();
  const int64_t L = config.num_layers, H = config.num_kv_heads, V = config.vocab_size;

  EvalGrid grid;
  grid.tasks = options.tasks;
  grid.lengths = {options.length};
  grid.depths_permille = spread_depths(options.samples);
  grid.samples = 1;
  grid.seed = options.seed;
  std::vector<ProfileSample> samples;
  for (PreparedSample& p : prepare_samples(grid, haystack, tokenizer)) {
    ProfileSample s{std::move(p.prompt), 0};
    s.prompt_len = static_cast<int64_t>(s.tokens.size());
    for (int32_t t : tokenizer.encode(" " + p.sample.answer, /*add_special_tokens=*/false)) s.tokens.push_back(t);
    samples.push_back(std::move(s));
  }

  const auto start = std::chrono::steady_clock::now();
  HeadProfileProgress state{0, static_cast<int64_t>(samples.size()) * (1 + L * H), 0};
  // Mean answer log-likelihood of every sample under `pattern` (streaming heads keep `window`).
  auto measure = [&](const HeadPattern& pattern) {
    SparsityConfig sparsity;
    sparsity.policy = pattern.num_streaming() > 0 ? AttentionPolicy::Streaming : AttentionPolicy::Dense;
    sparsity.prefill_window = options.window;
    sparsity.decode_window = options.window;
    std::unique_ptr<KvCache> cache = make_cache(pattern);
    Generator generator(model, *cache, &tokenizer, options.prefill_chunk, &sparsity);
    std::vector<double> logprobs;
    for (const ProfileSample& s : samples) {
      logprobs.push_back(answer_logprob(generator.score(s.tokens, s.prompt_len, options.prefill_chunk), V, s));
      ++state.done;
      state.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (progress) progress(state);
    }
    return logprobs;
  };

  HeadProfile profile;
  profile.samples = static_cast<int64_t>(samples.size());
  const std::vector<double> dense = measure(HeadPattern::all_retrieval(L, H));
  for (double lp : dense) profile.dense_logprob += lp / static_cast<double>(dense.size());
  profile.drop.assign(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(H), 0.0));
  double largest = 0;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      const std::vector<double> streamed = measure(one_streaming_head(L, H, l, h));
      double drop = 0;
      for (size_t i = 0; i < dense.size(); ++i)
        drop += std::max(0.0, dense[i] - streamed[i]) / static_cast<double>(dense.size());
      profile.drop[static_cast<size_t>(l)][static_cast<size_t>(h)] = drop;
      largest = std::max(largest, drop);
    }
  profile.scores = profile.drop;
  for (auto& row : profile.scores)
    for (double& x : row) x = largest > 0 ? x / largest : 0.0;
  return profile;
}

HeadPattern profiled_pattern(const HeadProfile& profile, double streaming_ratio) {
  return HeadPattern::from_scores(profile.scores, HeadRule{streaming_ratio, std::nullopt}, "lserve profile-heads");
}

HeadPattern random_pattern(int64_t num_layers, int64_t num_kv_heads, double streaming_ratio, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::vector<double>> scores(static_cast<size_t>(num_layers), std::vector<double>(static_cast<size_t>(num_kv_heads)));
  for (auto& row : scores)
    for (double& x : row) x = uniform(rng);
  return HeadPattern::from_scores(std::move(scores), HeadRule{streaming_ratio, std::nullopt},
                                  "random (seed " + std::to_string(seed) + ")");
}

}  // namespace lserve::eval
