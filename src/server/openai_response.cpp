#include "server/openai_response.h"

#include <algorithm>

namespace lserve::server {

using nlohmann::json;

json Usage::to_json() const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

std::string api_finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
  }
  return "stop";
}

void ChoiceAccumulator::add(const RequestOutput& out) {
  text += out.text;
  logprobs.insert(logprobs.end(), out.logprobs.begin(), out.logprobs.end());
  prompt_tokens = out.prompt_tokens;
  completion_tokens = out.completion_tokens;
  cached_tokens = out.cached_prompt_tokens;
  if (out.finished) {
    finish = out.finish_reason;
    error = out.error;
  }
}

namespace {

std::string token_text(const Tokenizer& tok, int32_t id) {
  const int32_t one[] = {id};
  return tok.decode(one);
}

json byte_list(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

json completion_logprobs(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, size_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t offset = text_offset;
  for (const TokenLogprob& lp : lps) {
    const std::string text = token_text(tok, lp.token);
    tokens.push_back(text);
    token_logprobs.push_back(lp.logprob);
    json alternatives = json::object();
    for (const auto& [id, logprob] : lp.top) alternatives[token_text(tok, id)] = logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(offset);
    offset += text.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json chat_logprobs(const std::vector<TokenLogprob>& lps, const Tokenizer& tok) {
  json content = json::array();
  for (const TokenLogprob& lp : lps) {
    const std::string text = token_text(tok, lp.token);
    json top = json::array();
    for (const auto& [id, logprob] : lp.top) {
      const std::string t = token_text(tok, id);
      top.push_back({{"token", t}, {"logprob", logprob}, {"bytes", byte_list(t)}});
    }
    content.push_back({{"token", text}, {"logprob", lp.logprob}, {"bytes", byte_list(text)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

Usage usage_of(const std::vector<ChoiceAccumulator>& choices, int n) {
  Usage usage;
  for (size_t i = 0; i < choices.size(); i += static_cast<size_t>(n)) {
    // A prompt counts once however many choices it has (as OpenAI counts n > 1).
    usage.prompt_tokens += choices[i].prompt_tokens;
    int64_t cached = 0;
    for (size_t k = i; k < i + static_cast<size_t>(n) && k < choices.size(); ++k)
      cached = std::max(cached, choices[k].cached_tokens);
    usage.cached_tokens += cached;
  }
  for (const ChoiceAccumulator& c : choices) usage.completion_tokens += c.completion_tokens;
  return usage;
}

json final_response(const ResponseMeta& meta, const std::vector<ChoiceAccumulator>& choices, int n,
                    const std::vector<std::string>& echo_prefixes, const Tokenizer* tok) {
  json out_choices = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceAccumulator& c = choices[i];
    const std::string& prefix = i < echo_prefixes.size() ? echo_prefixes[i] : std::string();
    json lp = nullptr;
    if (!c.logprobs.empty() && tok)
      lp = meta.chat ? chat_logprobs(c.logprobs, *tok) : completion_logprobs(c.logprobs, *tok, prefix.size());
    json choice = {{"index", i}, {"logprobs", lp}, {"finish_reason", api_finish_reason(c.finish.value_or(FinishReason::Length))}};
    if (meta.chat)
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else
      choice["text"] = prefix + c.text;
    out_choices.push_back(std::move(choice));
  }
  return {{"id", meta.id},
          {"object", meta.chat ? "chat.completion" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", out_choices},
          {"usage", usage_of(choices, n).to_json()}};
}

json stream_chunk(const ResponseMeta& meta, int index, const std::string& delta_text, const json& logprobs,
                  std::optional<FinishReason> finish, bool role_first) {
  json choice = {{"index", index}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = api_finish_reason(*finish);
  if (meta.chat) {
    json delta = json::object();
    if (role_first) delta["role"] = "assistant";
    if (!delta_text.empty() || role_first) delta["content"] = delta_text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = delta_text;
  }
  return {{"id", meta.id},
          {"object", meta.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const ResponseMeta& meta, const Usage& usage) {
  return {{"id", meta.id},
          {"object", meta.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array()},
          {"usage", usage.to_json()}};
}

std::string dump_json(const json& body) { return body.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& body) { return "data: " + dump_json(body) + "\n\n"; }

}  // namespace lserve::server
