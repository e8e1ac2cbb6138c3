// Sequence: one request as the engine runs it: its tokens (prompt, then generated), how many of
// them have KV in the cache, its pages, and the per-request state of sampling and detokenizing.
//
//   tokens:       | prompt ..................... | generated ......... |
//   num_computed: KV exists for tokens[0 .. num_computed)
//   the next step computes tokens[num_computed ..], a prompt chunk or exactly one generated
//   token (a decode row). A sampled token is appended when num_computed reaches tokens.size().
// Generated tokens are always computed as decode rows, also when a preempted sequence
// recomputes them (they are replayed one per step), so a request's KV and its output do not
// depend on how the scheduler happened to split or interrupt it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/stop_matcher.h"
#include "kv/kv_cache.h"
#include "model/tokenizer.h"

namespace lserve {

enum class SequenceStatus { Waiting, Running, Finished };

struct Sequence {
  using Clock = std::chrono::steady_clock;

  Sequence(uint64_t request_id, RequestParams request, OutputCallback callback, const Tokenizer* tokenizer)
      : id(request_id),
        params(std::move(request)),
        on_output(std::move(callback)),
        sampler(this->params.sampling),
        stops(this->params.stop),
        prompt_len(static_cast<int64_t>(this->params.prompt.size())),
        tokens(this->params.prompt),
        arrival(Clock::now()) {
    if (tokenizer) decoder.emplace(*tokenizer, this->params.skip_special_tokens);
  }

  int64_t num_generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  bool prefilling() const { return num_computed < prompt_len; }
  // Tokens the next step would compute if unconstrained: the rest of the prompt, or one.
  int64_t pending_tokens() const {
    return prefilling() ? prompt_len - num_computed : static_cast<int64_t>(tokens.size()) - num_computed;
  }

  const uint64_t id;
  RequestParams params;
  OutputCallback on_output;
  Sampler sampler;
  StopMatcher stops;
  std::optional<IncrementalDecoder> decoder;

  const int64_t prompt_len;
  std::vector<int32_t> tokens;
  int64_t num_computed = 0;
  SequenceKv kv;
  SequenceStatus status = SequenceStatus::Waiting;
  int64_t cached_prompt_tokens = 0;  // from the prefix cache at the last admission
  std::vector<uint64_t> page_hashes;  // prefix-cache hashes of the prompt's full pages
  int64_t pages_indexed = 0;          // of those, how many the prefix cache has been given
  StreamingWindow prefill_keep;       // streaming window kept while the prompt is computed
  int64_t preemptions = 0;

  Clock::time_point arrival;
  std::optional<Clock::time_point> first_token_time, last_token_time;
};

}  // namespace lserve
