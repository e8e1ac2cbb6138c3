#include "server/openai_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "server/api_error.h"

namespace lserve::server {

using nlohmann::json;

namespace {

// Fields each endpoint understands. Accepted without effect: "user", "metadata", "store",
// "service_tier" (bookkeeping on OpenAI's side), "parallel_tool_calls" (tool calls are left in
// the text for the client to parse), "tool_choice" other than "required" or a named tool.
const std::set<std::string> kCommonFields = {
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed", "top_k", "min_p", "repetition_penalty",
    "ignore_eos", "stop_token_ids", "skip_special_tokens", "metadata", "store", "service_tier", "sparse_attention"};
const std::set<std::string> kCompletionFields = {"prompt", "echo", "best_of", "suffix", "add_special_tokens"};
const std::set<std::string> kChatFields = {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                                           "parallel_tool_calls", "response_format", "chat_template_kwargs",
                                           "add_generation_prompt", "continue_final_message", "documents"};

const json* find(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& v, const char* key, double lo, double hi) {
  if (!v.is_number()) throw bad_request(fmt::format("'{}' must be a number", key), key);
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) throw bad_request(fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, x), key);
  return x;
}

// An integer in [lo, hi], given as a JSON integer or a whole float (4.0). Compared exactly:
// 2^63 and above (parsed as unsigned) must not wrap into range.
int64_t integer(const json& v, const char* key, int64_t lo, int64_t hi) {
  const auto out_of_range = [&] {
    return bad_request(fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, v.dump()), key);
  };
  int64_t i = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) throw out_of_range();
    i = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    i = v.get<int64_t>();
  } else if (v.is_number_float() && std::nearbyint(v.get<double>()) == v.get<double>()) {
    const double x = v.get<double>();
    if (!(x >= -0x1p63 && x < 0x1p63)) throw out_of_range();
    i = static_cast<int64_t>(x);
  } else {
    throw bad_request(fmt::format("'{}' must be an integer", key), key);
  }
  if (i < lo || i > hi) throw out_of_range();
  return i;
}

bool boolean(const json& v, const char* key) {
  if (!v.is_boolean()) throw bad_request(fmt::format("'{}' must be a boolean", key), key);
  return v.get<bool>();
}

const std::string& string(const json& v, const char* key) {
  if (!v.is_string()) throw bad_request(fmt::format("'{}' must be a string", key), key);
  return v.get_ref<const std::string&>();
}

void check_fields(const json& body, const std::set<std::string>& specific) {
  for (const auto& [key, _] : body.items())
    if (!kCommonFields.contains(key) && !specific.contains(key))
      throw bad_request(fmt::format("unrecognized request argument supplied: {}", key), key);
}

void check_model(const json& body, const ModelContext& m) {
  const json* v = find(body, "model");
  if (!v) throw bad_request("you must provide a model parameter", "model");
  const std::string& name = string(*v, "model");
  if (name != m.name)
    throw ApiError(404, fmt::format("the model '{}' does not exist; this server serves '{}'", name, m.name), "model",
                   "model_not_found");
}

std::vector<int32_t> token_list(const json& v, const char* key) {
  std::vector<int32_t> ids;
  for (const json& t : v) ids.push_back(static_cast<int32_t>(integer(t, key, 0, INT32_MAX)));
  return ids;
}

// Sampling, stops, limits and streaming: the fields both endpoints share.
// "sparse_attention": {"policy", "token_budget", "selector_interval", "psa_mass", "psa_min_budget",
// "psa_max_budget"}: this request's own decode policy for its retrieval heads, over the server's
// config. What the engine cannot run on its KV cache it refuses (a 400 naming this field).
SparsityConfig parse_sparse_attention(const json& v, const ModelContext& m) {
  const SparsityConfig& base = m.sparsity;
  constexpr const char* kKey = "sparse_attention";
  if (!v.is_object()) throw bad_request("'sparse_attention' must be an object", kKey);
  SparsityConfig s = base;
  for (const auto& [key, value] : v.items()) {
    if (key == "policy") {
      const std::string& name = string(value, "sparse_attention.policy");
      try {
        s.policy = parse_policy(name);
      } catch (const Error& e) {
        throw bad_request(e.what(), kKey);
      }
    } else if (key == "token_budget") {
      s.token_budget = integer(value, "sparse_attention.token_budget", 1, int64_t{1} << 30);
    } else if (key == "selector_interval") {
      s.selector_interval = static_cast<int32_t>(integer(value, "sparse_attention.selector_interval", 1, 1 << 20));
    } else if (key == "psa_mass") {
      s.psa_mass = number(value, "sparse_attention.psa_mass", 0.0, 1.0);
    } else if (key == "psa_min_budget") {
      s.psa_min_budget = integer(value, "sparse_attention.psa_min_budget", 1, int64_t{1} << 30);
    } else if (key == "psa_max_budget") {
      s.psa_max_budget = integer(value, "sparse_attention.psa_max_budget", 1, int64_t{1} << 30);
    } else {
      throw bad_request(fmt::format("unrecognized sparse_attention field: {} (policy, token_budget, selector_interval, "
                                    "psa_mass, psa_min_budget, psa_max_budget)",
                                    key),
                        kKey);
    }
  }
  try {
    s.validate();
  } catch (const Error& e) {
    throw bad_request(std::string("sparse_attention: ") + e.what(), kKey);
  }
  if (const std::string why = override_incompatibility(base, s, m.page_summaries); !why.empty())
    throw bad_request("sparse_attention: " + why, kKey);
  return s;
}

void parse_common(const json& body, const ModelContext& m, ParsedRequest& r) {
  RequestParams& p = r.params;
  const GenerationConfig& g = m.generation;
  // The checkpoint's sampling defaults apply where the request says nothing (as vLLM does);
  // otherwise OpenAI's (temperature 1, top_p 1).
  SamplingParams& s = p.sampling;
  s.temperature = g.do_sample && g.temperature ? *g.temperature : 1.0f;
  s.top_p = g.do_sample && g.top_p ? *g.top_p : 1.0f;
  s.top_k = g.do_sample && g.top_k ? *g.top_k : 0;
  s.min_p = g.do_sample && g.min_p ? *g.min_p : 0.0f;
  s.repetition_penalty = g.repetition_penalty.value_or(1.0f);
  if (const json* v = find(body, "temperature")) s.temperature = static_cast<float>(number(*v, "temperature", 0, 2));
  if (const json* v = find(body, "top_p")) {
    s.top_p = static_cast<float>(number(*v, "top_p", 0, 1));
    if (s.top_p <= 0) throw bad_request("'top_p' must be in (0, 1]", "top_p");
  }
  if (const json* v = find(body, "top_k")) {
    const int64_t k = integer(*v, "top_k", -1, 1 << 20);
    s.top_k = static_cast<int32_t>(std::max<int64_t>(k, 0));  // -1: off, as in vLLM
  }
  if (const json* v = find(body, "min_p")) s.min_p = static_cast<float>(number(*v, "min_p", 0, 1));
  if (const json* v = find(body, "presence_penalty"))
    s.presence_penalty = static_cast<float>(number(*v, "presence_penalty", -2, 2));
  if (const json* v = find(body, "frequency_penalty"))
    s.frequency_penalty = static_cast<float>(number(*v, "frequency_penalty", -2, 2));
  if (const json* v = find(body, "repetition_penalty"))
    s.repetition_penalty = static_cast<float>(number(*v, "repetition_penalty", 0.01, 10));
  if (const json* v = find(body, "seed")) r.seed = static_cast<uint64_t>(integer(*v, "seed", INT64_MIN, INT64_MAX));
  if (const json* v = find(body, "n")) r.n = static_cast<int>(integer(*v, "n", 1, 16));
  if (const json* v = find(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    throw bad_request("'logit_bias' is not supported", "logit_bias");

  if (const json* v = find(body, "stop")) {
    if (v->is_string()) {
      p.stop = {v->get<std::string>()};
    } else if (v->is_array()) {
      for (const json& e : *v) p.stop.push_back(string(e, "stop"));
    } else {
      throw bad_request("'stop' must be a string or an array of strings", "stop");
    }
    if (p.stop.size() > 16) throw bad_request("'stop' takes at most 16 strings", "stop");
    for (const auto& st : p.stop)
      if (st.empty()) throw bad_request("'stop' strings must not be empty", "stop");
  }
  if (const json* v = find(body, "stop_token_ids")) {
    if (!v->is_array()) throw bad_request("'stop_token_ids' must be an array of token ids", "stop_token_ids");
    p.stop_token_ids = token_list(*v, "stop_token_ids");
  }
  if (const json* v = find(body, "ignore_eos")) p.ignore_eos = boolean(*v, "ignore_eos");
  if (const json* v = find(body, "sparse_attention")) p.sparsity = parse_sparse_attention(*v, m);
  if (const json* v = find(body, "skip_special_tokens")) p.skip_special_tokens = boolean(*v, "skip_special_tokens");
  p.eos_token_ids = g.eos_token_ids;
  if (p.eos_token_ids.empty() && m.tokenizer && m.tokenizer->eos_id()) p.eos_token_ids.push_back(*m.tokenizer->eos_id());

  if (const json* v = find(body, "stream")) r.stream = boolean(*v, "stream");
  if (const json* v = find(body, "stream_options")) {
    if (!v->is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    if (!r.stream) throw bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    for (const auto& [key, value] : v->items()) {
      if (key == "include_usage") r.include_usage = boolean(value, "stream_options.include_usage");
      else if (key == "continuous_usage_stats") r.continuous_usage = boolean(value, "stream_options.continuous_usage_stats");
      else throw bad_request(fmt::format("unrecognized stream option: {}", key), "stream_options");
    }
  }
}

// max_tokens when the request gives none: the rest of the context (chat) or OpenAI's 16.
void parse_max_tokens(const json& body, const char* key, int64_t fallback, RequestParams& p) {
  p.max_tokens = fallback;
  if (const json* v = find(body, key)) p.max_tokens = integer(*v, key, INT64_MIN, INT64_MAX);
  if (p.max_tokens <= 0) throw bad_request(fmt::format("'{}' must be at least 1, got {}", key, p.max_tokens), key);
}

std::string flatten_content(const json& content, size_t index) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    throw bad_request(fmt::format("messages[{}].content must be a string or an array of parts", index), "messages");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
        !part["text"].is_string())
      throw bad_request(fmt::format("messages[{}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                    "supported",
                                    index),
                        "messages");
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

json checked_messages(const json& body) {
  const json* v = find(body, "messages");
  if (!v) throw bad_request("'messages' is required", "messages");
  if (!v->is_array() || v->empty()) throw bad_request("'messages' must be a non-empty array", "messages");
  static const std::set<std::string> roles = {"system", "developer", "user", "assistant", "tool"};
  json messages = json::array();
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    if (!m.is_object()) throw bad_request(fmt::format("messages[{}] must be an object", i), "messages");
    if (!m.contains("role") || !m["role"].is_string() || !roles.contains(m["role"].get<std::string>()))
      throw bad_request(fmt::format("messages[{}].role must be one of system, developer, user, assistant, tool", i),
                        "messages");
    json out = m;
    const bool has_tool_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    if (!m.contains("content") || m["content"].is_null()) {
      if (m["role"] != "assistant" || !has_tool_calls)
        throw bad_request(fmt::format("messages[{}].content is required", i), "messages");
    } else {
      out["content"] = flatten_content(m["content"], i);
    }
    messages.push_back(std::move(out));
  }
  return messages;
}

}  // namespace

json parse_body(const std::string& text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // a syntax error, or a number past double's range (1e999)
    throw bad_request(fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object()) throw bad_request("the request body must be a JSON object");
  return body;
}

ParsedRequest parse_completion_request(const json& body, const ModelContext& m) {
  check_fields(body, kCompletionFields);
  check_model(body, m);
  ParsedRequest r;
  parse_common(body, m, r);
  parse_max_tokens(body, "max_tokens", 16, r.params);
  if (const json* v = find(body, "echo")) r.echo = boolean(*v, "echo");
  if (const json* v = find(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    throw bad_request("'suffix' is not supported", "suffix");
  if (const json* v = find(body, "best_of"); v && integer(*v, "best_of", 1, 16) != r.n)
    throw bad_request("'best_of' other than n is not supported", "best_of");
  if (const json* v = find(body, "logprobs")) {
    r.params.logprobs = true;
    r.params.top_logprobs = static_cast<int32_t>(integer(*v, "logprobs", 0, 20));
  }
  bool add_special = true;
  if (const json* v = find(body, "add_special_tokens")) add_special = boolean(*v, "add_special_tokens");

  const json* prompt = find(body, "prompt");
  if (!prompt) throw bad_request("'prompt' is required", "prompt");
  auto encode = [&](const std::string& text) {
    if (!m.tokenizer) throw bad_request("this model has no tokenizer; send token ids as the prompt", "prompt");
    r.prompt_texts.push_back(text);
    return m.tokenizer->encode(text, add_special);
  };
  auto decode = [&](const std::vector<int32_t>& ids) {
    std::string text;
    if (m.tokenizer) {
      for (int32_t id : ids)
        if (id >= m.tokenizer->vocab_size()) throw bad_request(fmt::format("token id {} is outside the vocabulary", id), "prompt");
      text = m.tokenizer->decode(ids);
    }
    r.prompt_texts.push_back(text);
    return ids;
  };
  if (prompt->is_string()) {
    r.prompts.push_back(encode(prompt->get<std::string>()));
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number()) {
    r.prompts.push_back(decode(token_list(*prompt, "prompt")));
  } else if (prompt->is_array() && !prompt->empty()) {
    for (const json& e : *prompt) {
      if (e.is_string()) r.prompts.push_back(encode(e.get<std::string>()));
      else if (e.is_array()) r.prompts.push_back(decode(token_list(e, "prompt")));
      else throw bad_request("'prompt' must be a string, an array of strings, or token ids", "prompt");
    }
  } else {
    throw bad_request("'prompt' must be a string, an array of strings, or token ids", "prompt");
  }
  if (r.prompts.size() * static_cast<size_t>(r.n) > 64) throw bad_request("at most 64 choices per request", "n");
  return r;
}

ParsedRequest parse_chat_request(const json& body, const ModelContext& m) {
  check_fields(body, kChatFields);
  check_model(body, m);
  ParsedRequest r;
  r.chat = true;
  parse_common(body, m, r);
  if (const json* v = find(body, "logprobs")) r.params.logprobs = boolean(*v, "logprobs");
  if (const json* v = find(body, "top_logprobs")) {
    r.params.top_logprobs = static_cast<int32_t>(integer(*v, "top_logprobs", 0, 20));
    if (!r.params.logprobs) throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
  }
  if (const json* v = find(body, "response_format")) {
    if (!v->is_object() || !v->contains("type") || (*v)["type"] != "text")
      throw bad_request("'response_format' other than {\"type\": \"text\"} is not supported", "response_format");
  }
  if (const json* v = find(body, "tool_choice")) {
    if (!(v->is_string() && (*v == "auto" || *v == "none")))
      throw bad_request("'tool_choice' must be \"auto\" or \"none\": forcing a tool call is not supported", "tool_choice");
  }

  const json messages = checked_messages(body);
  json options = json::object();
  if (const json* v = find(body, "chat_template_kwargs")) {
    if (!v->is_object()) throw bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    options = *v;
  }
  bool add_generation_prompt = true, continue_final = false;
  if (const json* v = find(body, "add_generation_prompt")) add_generation_prompt = boolean(*v, "add_generation_prompt");
  if (const json* v = find(body, "continue_final_message")) continue_final = boolean(*v, "continue_final_message");
  if (continue_final && add_generation_prompt && find(body, "add_generation_prompt"))
    throw bad_request("'continue_final_message' and 'add_generation_prompt' cannot both be true", "continue_final_message");
  if (continue_final) add_generation_prompt = false;
  options["add_generation_prompt"] = add_generation_prompt;
  if (const json* v = find(body, "tools")) {
    if (!v->is_array()) throw bad_request("'tools' must be an array", "tools");
    if (const json* c = find(body, "tool_choice"); !(c && *c == "none")) options["tools"] = *v;
  }
  if (const json* v = find(body, "documents")) options["documents"] = *v;

  if (!m.render_chat || !m.tokenizer) throw bad_request("this model has no chat template; use /v1/completions");
  std::string text = m.render_chat(messages, options);
  if (continue_final) {
    // Cut the rendered prompt right after the final message's content, so the model goes on
    // with that message instead of starting a new turn.
    const auto& last = messages.back();
    const std::string content = last.contains("content") && last["content"].is_string() ? last["content"].get<std::string>() : "";
    const size_t at = content.empty() ? std::string::npos : text.rfind(content);
    if (at == std::string::npos) throw bad_request("the final message's content is not in the rendered prompt", "messages");
    text.resize(at + content.size());
  }
  r.prompt_texts.push_back(text);
  r.prompts.push_back(m.tokenizer->encode(text, /*add_special_tokens=*/false));
  const int64_t room = m.max_context - static_cast<int64_t>(r.prompts[0].size());
  parse_max_tokens(body, find(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
                   std::max<int64_t>(room, 1), r.params);
  return r;
}

}  // namespace lserve::server
