// Generator: runs one request to completion on one sequence: chunked prefill of the prompt,
// then token-by-token decode with sampling, stop strings and EOS, streaming text out as it
// becomes complete UTF-8. The serving engine (continuous batching) supersedes it for many
// requests; `lserve generate` and the benchmarks use it directly.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/request.h"
#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "sparse/sparsity_config.h"

namespace lserve {

class Tokenizer;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  std::vector<int32_t> eos_token_ids;
  bool ignore_eos = false;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt)
  std::string text;
  FinishReason finish_reason = FinishReason::Length;
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the first sampled token to the last
  int64_t decode_steps = 0;   // forward passes after prefill
  // Mean over decode steps of the KV tokens each (layer, query head) attended to: the context
  // length under dense attention, about the budget under page selection.
  double mean_kv_tokens_read = 0;
  size_t kv_bytes = 0;            // KV the sequence held at the end (both pools)
  int64_t kv_retrieval_pages = 0;  // of which pages in the retrieval pool (every position)
};

class Generator {
 public:
  // prefill_chunk: prompt tokens per forward pass (bounds activation memory on long prompts).
  // `sparsity` must outlive the generator; its streaming windows must match the cache's pattern.
  Generator(LlamaModel& model, KvCache& cache, const Tokenizer* tokenizer, int64_t prefill_chunk = 2048,
            const SparsityConfig* sparsity = nullptr);

  // on_text receives each piece of text as it becomes final (may be null). Releases the
  // sequence's pages before returning, also on error.
  GenerationResult run(const GenerationRequest& request, const std::function<void(std::string_view)>& on_text);

  // Overlapped decoding (off by default): while the device runs decode step n, the host plans
  // and queues step n + 1, fed by the token step n draws on the device, and only then reads
  // step n's token back; the device never waits for the host between steps. Needs tokens drawn
  // on the device, and only when the backend can_begin_before_end(). A request that stops early
  // (EOS, a stop string) computes one token past its end, which is dropped. Tokens, text,
  // finish reason and KV read are those of the plain loop; the KV held at the end (kv_bytes)
  // includes the dropped token's, a page more at most.
  void set_overlap_steps(bool on) { overlap_steps_ = on; }

  // Teacher-forced logits, for tests and evaluation: prefill `prefill_len` tokens of `tokens`
  // in chunks of `chunk`, then feed the rest one at a time. Returns the logits after each
  // token from index prefill_len - 1 on ([tokens.size() - prefill_len + 1, vocab]).
  std::vector<float> score(const std::vector<int32_t>& tokens, int64_t prefill_len, int64_t chunk);
  // Logits of every prompt position from one prefill pass ([tokens.size(), vocab]).
  std::vector<float> prefill_logits(const std::vector<int32_t>& tokens);

 private:
  // Appends `tokens` at positions seq.num_tokens().. and computes them in one forward pass;
  // writes logits of the rows in `logit_rows` (relative to the chunk) to `logits`. `decoding`:
  // a decode step (selection, decode windows); `prefill_done`: the next step decodes (so
  // streaming heads keep only the decode window afterwards). With `sampling`, the one logit
  // row's next token is drawn on the device into *sampled instead (logits untouched).
  void step(SequenceKv& seq, std::span<const int32_t> tokens, bool decoding, bool prefill_done,
            std::span<const int32_t> logit_rows, float* logits, const DeviceSampling* sampling = nullptr,
            int32_t* sampled = nullptr);
  // The two halves of a step around its forward pass: reserving pages and planning the batch
  // for n tokens at seq.num_tokens()..; then counting the step and releasing the streaming
  // pages no later query sees (as soon as the step is queued: later work on the device, which
  // may reuse them, runs after it).
  AttentionBatch plan(SequenceKv& seq, int64_t n, bool decoding);
  void after_step(SequenceKv& seq, bool decoding, bool prefill_done);

  LlamaModel& model_;
  KvCache& cache_;
  const Tokenizer* tokenizer_;
  int64_t prefill_chunk_;
  SparsityConfig dense_;  // used when no config is given
  const SparsityConfig* sparsity_;
  bool overlap_steps_ = false;
};

}  // namespace lserve
