// Parsing and validation of OpenAI-style request bodies (/v1/completions and
// /v1/chat/completions) into engine requests. Every problem becomes an ApiError naming the
// parameter; nothing is guessed or silently dropped: unknown fields are refused, fields we
// accept but do not act on are listed in the source with the reason.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/request.h"
#include "model/generation_config.h"
#include "model/tokenizer.h"

namespace lserve::server {

// What the parser needs to know about the served model.
struct ModelContext {
  std::string name;  // the id clients pass as "model"
  const Tokenizer* tokenizer = nullptr;
  GenerationConfig generation;
  int64_t max_context = 0;
  // The engine's sparse attention, over which a request's "sparse_attention" applies, and
  // whether its KV cache keeps the page summaries that page selection needs.
  SparsityConfig sparsity;
  bool page_summaries = false;
  // Renders chat messages (and options: tools, add_generation_prompt, template kwargs) to the
  // prompt text with the model's chat template (server/chat_renderer.h); a template error
  // throws an Error, answered with a 400. Empty: the model has no chat template.
  std::function<std::string(const nlohmann::json& messages, const nlohmann::json& options)> render_chat;
};

struct ParsedRequest {
  bool chat = false;
  std::vector<std::vector<int32_t>> prompts;  // completions may carry several; chat has one
  std::vector<std::string> prompt_texts;      // for echo
  RequestParams params;                       // everything but the prompt
  int n = 1;                                  // choices per prompt
  std::optional<uint64_t> seed;               // choice i samples with seed + i
  bool stream = false;
  bool include_usage = false;
  bool echo = false;
  bool continuous_usage = false;  // usage in every chunk (stream_options.continuous_usage_stats)
};

ParsedRequest parse_completion_request(const nlohmann::json& body, const ModelContext& model);
ParsedRequest parse_chat_request(const nlohmann::json& body, const ModelContext& model);

// The JSON body of a request: an object, or ApiError 400 saying why not.
nlohmann::json parse_body(const std::string& text);

}  // namespace lserve::server
