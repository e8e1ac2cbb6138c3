#include "server/http_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <random>
#include <thread>

#include "server/api_error.h"
#include "server/client_connection.h"
#include "server/metrics.h"
#include "server/openai_response.h"
#include "server/request_stream.h"

namespace lserve::server {

using nlohmann::json;

namespace {

constexpr auto kStreamPoll = std::chrono::milliseconds(500);  // keep-alive comment period while silent
constexpr auto kClientPoll = std::chrono::milliseconds(250);  // a non-streaming response's check for its client

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = {},
                const std::string& code = {}) {
  send_json(res, status, error_body(status, message, param, code));
}

std::string random_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Runs a handler body, answering what it throws as OpenAI-style errors.
template <class Body>
void answering_errors(httplib::Response& res, Body&& body) {
  try {
    body();
  } catch (const ApiError& e) {
    send_error(res, e.status(), e.what(), e.param(), e.code());
  } catch (const InvalidRequest& e) {
    const std::string msg = e.what();
    send_error(res, 400, msg, {}, msg.find("maximum context length") != std::string::npos ? "context_length_exceeded" : "");
  } catch (const EngineOverloaded& e) {
    res.set_header("Retry-After", "1");
    send_error(res, 503, e.what());
  } catch (const Error& e) {
    send_error(res, 400, e.what());  // e.g. a chat template's raise_exception, a tokenizer error
  }
}

// Counts a request as in flight for as long as the object lives.
struct InFlight {
  explicit InFlight(std::atomic<int>& n) : count(n) { ++count; }
  ~InFlight() { --count; }
  std::atomic<int>& count;
};

// One streaming response's state, shared by the chunk provider and its releaser.
struct StreamState {
  std::shared_ptr<RequestStream> stream;
  std::vector<uint64_t> ids;
  ResponseMeta meta;
  ParsedRequest request;
  std::vector<ChoiceAccumulator> choices;
  std::vector<bool> started;
  int finished = 0;
  bool done = false;
  std::shared_ptr<InFlight> in_flight;
};

}  // namespace

HttpServer::HttpServer(ServerOptions options) : options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {
  const int threads = std::max(options_.http_threads, 4);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http_->set_payload_max_length(size_t{256} << 20);  // a 1M-token prompt is a few MB of text
  http_->set_read_timeout(60, 0);
  http_->set_write_timeout(60, 0);
  created_ = unix_now();
  routes();
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::bind() {
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
  } else {
    port_ = http_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ < 0) fail("cannot listen on {}:{} (address in use, or not an address of this machine?)", options_.host, options_.port);
}

void HttpServer::run() { http_->listen_after_bind(); }

void HttpServer::attach(Engine* engine, ModelContext model) {
  engine_ = engine;
  model_ = std::move(model);
  ready_ = true;
}

void HttpServer::drain_and_stop() {
  draining_ = true;
  while (in_flight_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop();
}

void HttpServer::stop() {
  if (http_->is_running()) http_->stop();
}

bool HttpServer::authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options_.api_key.empty()) return true;
  const std::string expected = "Bearer " + options_.api_key;
  const std::string given = req.get_header_value("Authorization");
  // Compare every byte whatever the first mismatch, so timing does not leak the key.
  bool same = given.size() == expected.size();
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  if (same && diff == 0) return true;
  send_error(res, 401, "incorrect API key provided; pass it as 'Authorization: Bearer <key>'", {}, "invalid_api_key");
  return false;
}

bool HttpServer::ready(httplib::Response& res) const {
  if (draining_) {
    res.set_header("Retry-After", "5");
    send_error(res, 503, "the server is shutting down");
    return false;
  }
  if (!ready_) {
    res.set_header("Retry-After", "5");
    send_error(res, 503, "the model is still loading");
    return false;
  }
  return true;
}

void HttpServer::routes() {
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("request failed: {}", what);
    send_error(res, 500, what);
  });
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler already answered
    if (res.status == 404) send_error(res, 404, fmt::format("no route for {} {}", req.method, req.path));
    else if (res.status == 405) send_error(res, 405, fmt::format("method {} not allowed on {}", req.method, req.path));
    else if (res.status == 413)  // past the payload limit; or a form-encoded body past the HTTP library's 8 KB
      send_error(res, 413,
                 "the request body is too large (at most 256 MiB; send JSON as Content-Type: application/json)");
    else if (res.status >= 400) send_error(res, res.status, fmt::format("the request could not be read (HTTP {})", res.status));
  });

  http_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_ && !draining_) send_json(res, 200, {{"status", "ok"}});
    else send_json(res, 503, {{"status", draining_ ? "draining" : "loading"}});
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (!ready_) {
      res.status = 503;
      res.set_content("# the model is still loading\n", "text/plain; version=0.0.4");
      return;
    }
    res.set_content(prometheus_metrics(engine_->stats(), model_.name), "text/plain; version=0.0.4");
  });
  auto model_card = [this] {
    return json{{"id", model_.name}, {"object", "model"}, {"created", created_}, {"owned_by", "lserve"},
                {"max_model_len", model_.max_context}};
  };
  http_->Get("/v1/models", [this, model_card](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res) || !ready(res)) return;
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model_card()})}});
  });
  http_->Get(R"(/v1/models/(.+))", [this, model_card](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res) || !ready(res)) return;
    if (req.matches[1] != model_.name)
      return send_error(res, 404, fmt::format("the model '{}' does not exist", req.matches[1].str()), "model", "model_not_found");
    send_json(res, 200, model_card());
  });
  http_->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); });
  http_->Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); });
  http_->Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); });
  http_->Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); });
}

void HttpServer::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  auto in_flight = std::make_shared<InFlight>(in_flight_);
  if (!authorized(req, res) || !ready(res)) return;
  answering_errors(res, [&] {
    const json body = parse_body(req.body);
    ParsedRequest pr = chat ? parse_chat_request(body, model_) : parse_completion_request(body, model_);
    const ResponseMeta meta{(chat ? "chatcmpl-" : "cmpl-") + random_id(), unix_now(), model_.name, chat};
    const int n = pr.n;
    const int num_choices = static_cast<int>(pr.prompts.size()) * n;
    auto stream = std::make_shared<RequestStream>(num_choices);
    std::vector<uint64_t> ids;
    try {
      std::random_device entropy;
      for (int c = 0; c < num_choices; ++c) {
        RequestParams params = pr.params;
        params.prompt = pr.prompts[static_cast<size_t>(c / n)];
        params.sampling.seed = pr.seed ? *pr.seed + static_cast<uint64_t>(c % n) : (uint64_t{entropy()} << 32 | entropy());
        ids.push_back(engine_->submit(std::move(params), [stream, c](RequestOutput&& o) { stream->push(c, std::move(o)); }));
      }
    } catch (...) {
      for (uint64_t id : ids) engine_->abort(id);
      throw;
    }
    std::vector<std::string> echo;
    if (pr.echo)
      for (int c = 0; c < num_choices; ++c) echo.push_back(pr.prompt_texts[static_cast<size_t>(c / n)]);

    if (!pr.stream) {
      // Nothing is written until the end, so no write can fail to tell that the client has
      // gone (timed out, aborted): its socket is watched instead, and its requests aborted.
      const ClientConnection client(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
      std::vector<ChoiceAccumulator> choices(static_cast<size_t>(num_choices));
      int finished = 0;
      while (finished < num_choices) {
        for (auto& [c, out] : stream->wait(kClientPoll)) {
          finished += out.finished;
          choices[static_cast<size_t>(c)].add(out);
        }
        if (finished < num_choices && client.closed()) {
          for (uint64_t id : ids) engine_->abort(id);
          res.status = 499;  // no one reads it (nginx's "client closed request")
          return;
        }
      }
      for (const auto& c : choices)
        if (c.finish == FinishReason::Error) return send_error(res, 500, "generation failed: " + c.error);
      return send_json(res, 200, final_response(meta, choices, n, echo, model_.tokenizer));
    }

    auto state = std::make_shared<StreamState>();
    state->stream = stream;
    state->ids = ids;
    state->meta = meta;
    state->request = std::move(pr);
    state->choices.resize(static_cast<size_t>(num_choices));
    state->started.assign(static_cast<size_t>(num_choices), false);
    state->in_flight = in_flight;
    const Tokenizer* tok = model_.tokenizer;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [state, tok, echo](size_t, httplib::DataSink& sink) {
          std::string buf;
          for (auto& [c, out] : state->stream->wait(kStreamPoll)) {
            auto& acc = state->choices[static_cast<size_t>(c)];
            const size_t offset = acc.text.size() + (echo.empty() ? 0 : echo[static_cast<size_t>(c)].size());
            acc.add(out);
            std::string text = out.text;
            if (!state->started[static_cast<size_t>(c)] && !echo.empty()) text = echo[static_cast<size_t>(c)] + text;
            json lp = nullptr;
            if (!out.logprobs.empty() && tok)
              lp = state->meta.chat ? chat_logprobs(out.logprobs, *tok) : completion_logprobs(out.logprobs, *tok, offset);
            const bool first = !state->started[static_cast<size_t>(c)];
            state->started[static_cast<size_t>(c)] = true;
            if (out.finished && out.finish_reason == FinishReason::Error) {
              buf += sse_event(error_body(500, "generation failed: " + out.error));
            } else if (!text.empty() || !lp.is_null() || (first && state->meta.chat)) {
              buf += sse_event(stream_chunk(state->meta, c, text, lp, std::nullopt, first && state->meta.chat));
            }
            if (out.finished) {
              ++state->finished;
              buf += sse_event(stream_chunk(state->meta, c, "", nullptr, out.finish_reason, false));
            }
          }
          const bool all_done = state->finished == static_cast<int>(state->choices.size());
          if (all_done) {
            if (state->request.include_usage)
              buf += sse_event(usage_chunk(state->meta, usage_of(state->choices, state->request.n)));
            buf += "data: [DONE]\n\n";
          }
          // A comment line while nothing happens (a long prefill): keeps proxies from timing
          // out, and finds a client that has gone away.
          if (buf.empty()) buf = ": keep-alive\n\n";
          if (!sink.write(buf.data(), buf.size())) return false;
          if (all_done) {
            state->done = true;
            sink.done();
          }
          return true;
        },
        [state, engine = engine_](bool) {
          // The client went away (or the write failed) before the end: stop generating.
          if (!state->done)
            for (uint64_t id : state->ids) engine->abort(id);
          state->in_flight.reset();
        });
  });
}

void HttpServer::tokenize(const httplib::Request& req, httplib::Response& res) {
  InFlight guard(in_flight_);
  if (!authorized(req, res) || !ready(res)) return;
  answering_errors(res, [&] {
    const json body = parse_body(req.body);
    if (!model_.tokenizer) throw bad_request("this model has no tokenizer");
    if (body.contains("model") && body["model"] != model_.name)
      throw ApiError(404, fmt::format("the model '{}' does not exist", body["model"].dump()), "model", "model_not_found");
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      json chat = body;
      chat.erase("add_special_tokens");
      if (!chat.contains("model")) chat["model"] = model_.name;
      ids = parse_chat_request(chat, model_).prompts.at(0);
    } else if (body.contains("prompt") && body["prompt"].is_string()) {
      bool add_special = true;
      if (body.contains("add_special_tokens")) {
        if (!body["add_special_tokens"].is_boolean()) throw bad_request("'add_special_tokens' must be a boolean", "add_special_tokens");
        add_special = body["add_special_tokens"].get<bool>();
      }
      ids = model_.tokenizer->encode(body["prompt"].get<std::string>(), add_special);
    } else {
      throw bad_request("give 'prompt' (a string) or 'messages'", "prompt");
    }
    send_json(res, 200, {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", model_.max_context}});
  });
}

void HttpServer::detokenize(const httplib::Request& req, httplib::Response& res) {
  InFlight guard(in_flight_);
  if (!authorized(req, res) || !ready(res)) return;
  answering_errors(res, [&] {
    const json body = parse_body(req.body);
    if (!model_.tokenizer) throw bad_request("this model has no tokenizer");
    if (!body.contains("tokens") || !body["tokens"].is_array()) throw bad_request("'tokens' must be an array of token ids", "tokens");
    std::vector<int32_t> ids;
    for (const json& t : body["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= model_.tokenizer->vocab_size())
        throw bad_request(fmt::format("'tokens' holds {}, not a token id of this model", t.dump()), "tokens");
      ids.push_back(t.get<int32_t>());
    }
    send_json(res, 200, {{"prompt", model_.tokenizer->decode(ids)}});
  });
}

}  // namespace lserve::server
