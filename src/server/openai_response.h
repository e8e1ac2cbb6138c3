// OpenAI-style response bodies and server-sent-event chunks for completions and chat
// completions, built from the engine's outputs. ChoiceAccumulator gathers one choice's outputs
// for a non-streaming answer; the chunk builders format one output for a streaming one.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/request.h"
#include "model/tokenizer.h"

namespace lserve::server {

struct ResponseMeta {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  bool chat = false;
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  nlohmann::json to_json() const;
};

// "stop", "length", "abort" or "error", as OpenAI clients expect.
std::string api_finish_reason(FinishReason r);

class ChoiceAccumulator {
 public:
  void add(const RequestOutput& out);
  std::string text;
  std::vector<TokenLogprob> logprobs;
  std::optional<FinishReason> finish;
  std::string error;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// Log-probabilities as each endpoint spells them. `text_offset`: where the first token's text
// starts in the choice's text (completions only).
nlohmann::json completion_logprobs(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, size_t text_offset);
nlohmann::json chat_logprobs(const std::vector<TokenLogprob>& lps, const Tokenizer& tok);

// Token counts of a request whose choices come in groups of n per prompt.
Usage usage_of(const std::vector<ChoiceAccumulator>& choices, int n);
// The whole non-streaming body; echo_prefixes (per choice, may be empty) precede the text.
nlohmann::json final_response(const ResponseMeta& meta, const std::vector<ChoiceAccumulator>& choices, int n,
                              const std::vector<std::string>& echo_prefixes, const Tokenizer* tok);

// One streaming chunk (the JSON after "data: "). `delta_text` may be empty; `finish` set on
// the choice's last chunk; `role_first` adds the assistant role (chat's first chunk).
nlohmann::json stream_chunk(const ResponseMeta& meta, int index, const std::string& delta_text,
                            const nlohmann::json& logprobs, std::optional<FinishReason> finish, bool role_first);
nlohmann::json usage_chunk(const ResponseMeta& meta, const Usage& usage);

// "data: <json>\n\n", replacing invalid UTF-8 rather than failing.
std::string sse_event(const nlohmann::json& body);
std::string dump_json(const nlohmann::json& body);

}  // namespace lserve::server
