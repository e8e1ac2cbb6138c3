// Head profiling: which KV heads a model needs at full attention (retrieval heads) and which can
// attend to the sink and local tokens only (streaming heads), measured on retrieval samples of
// docs/eval_tasks.md. DuoAttention learns a gate per head by gradient descent; this is the
// training-free proxy the same question asks directly: for each KV head alone, make it stream
// (in prefill and decode, with the decode window) and measure how much the log-likelihood of the
// correct answer drops, teacher-forced. A head whose streaming costs nothing is a streaming head.
//
// Cost: (1 + layers x KV heads) prefills of every profiling sample, each head in a KV cache of
// its own pattern; on the bundled model (32 KV heads) a few minutes of CPU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "eval/eval_runner.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "sparse/head_pattern.h"
#include "sparse/sparsity_config.h"

namespace lserve::eval {

struct HeadProfileOptions {
  // Every task: a head that only some tasks need (listing several values, following a chain
  // of assignments) is a retrieval head too. Profiled on the first four alone, the bundled
  // model's pattern streamed heads that multivalue and vartrack need: 0% on both (dense 70%).
  std::vector<Task> tasks{kAllTasks.begin(), kAllTasks.end()};
  int64_t length = 2048;      // prompt tokens of each sample (far longer than the window)
  int64_t samples = 2;        // per task, at depths spread over the prompt
  uint64_t seed = 0x9E0F11E5; // not lserve eval's default, so profiling and evaluation differ
  StreamingWindow window{128, 256};  // what a head keeps while it is tested (LServe's decode window)
  int64_t prefill_chunk = 2048;
};

struct HeadProfile {
  // [layer][kv head]: mean over samples of max(0, log p(answer | dense) - log p(answer | that
  // head streaming)), in nats; and the same normalised by the largest, in [0, 1] (1 = the head
  // the answers depend on most), the scores a head-pattern file holds.
  std::vector<std::vector<double>> drop, scores;
  double dense_logprob = 0;   // mean log p(answer) with every head dense
  int64_t samples = 0;
};

struct HeadProfileProgress {
  int64_t done = 0, total = 0;  // prefills
  double seconds = 0;
};

// `make_cache(pattern)`: a KV cache for one sequence of the samples' length under that pattern.
using CacheFactory = std::function<std::unique_ptr<KvCache>(const HeadPattern&)>;

HeadProfile profile_heads(LlamaModel& model, const Tokenizer& tokenizer, const Haystack& haystack,
                          const HeadProfileOptions& options, const CacheFactory& make_cache,
                          const std::function<void(const HeadProfileProgress&)>& progress = {});

// The pattern file text: the scores with a `streaming_ratio` rule and comments saying how they
// were measured.
HeadPattern profiled_pattern(const HeadProfile& profile, double streaming_ratio);

// Scores drawn at random (seeded): the baseline that shows what profiling buys at the same ratio.
HeadPattern random_pattern(int64_t num_layers, int64_t num_kv_heads, double streaming_ratio, uint64_t seed);

}  // namespace lserve::eval
