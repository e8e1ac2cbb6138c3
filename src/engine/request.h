// Request: what a client asks the engine for (prompt ids, sampling, stops, limits), and
// RequestOutput: what the engine hands back, step by step, while the request runs. These are
// the engine's whole interface to the outside: the HTTP server and the CLI speak only these.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "engine/sampler.h"
#include "sparse/sparsity_config.h"

namespace lserve {

enum class FinishReason { Length, Stop, Eos, Abort, Error };
// OpenAI's names: "length", "stop" (stop strings and EOS alike are "stop" there; `eos` here),
// "abort", "error".
std::string_view finish_reason_name(FinishReason r);

struct RequestParams {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;        // stop strings (not returned)
  std::vector<int32_t> stop_token_ids;  // stop tokens besides EOS (not returned)
  std::vector<int32_t> eos_token_ids;
  bool ignore_eos = false;
  // Log-probabilities of the sampled token and of the `top_logprobs` likeliest tokens at each
  // step, from the model's distribution before sampling adjustments.
  bool logprobs = false;
  int32_t top_logprobs = 0;
  bool skip_special_tokens = true;
  // This request's own sparse attention (its retrieval heads' decode policy, budget, interval):
  // the engine's config with those fields changed; unset, the engine's. The engine refuses
  // what its KV cache cannot run (override_incompatibility).
  std::optional<SparsityConfig> sparsity;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // the likeliest tokens, best first
};

// One delivery: the tokens a step produced for the request and the text they completed.
struct RequestOutput {
  uint64_t request_id = 0;
  std::vector<int32_t> tokens;
  std::string text;  // new text: complete UTF-8, stop strings held back and removed
  std::vector<TokenLogprob> logprobs;  // one per token when requested
  bool finished = false;
  FinishReason finish_reason = FinishReason::Length;
  std::string error;  // for FinishReason::Error
  // Totals so far.
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
};

// Called on the engine's thread; must not block for long (hand the output to another thread).
using OutputCallback = std::function<void(RequestOutput&&)>;

}  // namespace lserve

namespace lserve {

// A request the engine refuses as asked (an HTTP 400): the message says what to change.
class InvalidRequest : public Error {
 public:
  using Error::Error;
};
// The engine is at its queue limit (an HTTP 503): try again later.
class EngineOverloaded : public Error {
 public:
  using Error::Error;
};

}  // namespace lserve
