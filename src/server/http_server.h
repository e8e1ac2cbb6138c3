// HttpServer: the OpenAI-compatible HTTP API over an Engine, on cpp-httplib.
//
//   POST /v1/completions, /v1/chat/completions   (stream: true answers with server-sent events)
//   GET  /v1/models, /v1/models/{id}
//   POST /tokenize, /detokenize
//   GET  /health   (503 until a model is attached, and while draining)
//   GET  /metrics  (Prometheus text)
// With an API key, /v1/*, /tokenize and /detokenize need "Authorization: Bearer <key>".
// The server listens before the model is loaded, so load balancers see "loading", not
// "connection refused".
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "engine/engine.h"
#include "server/openai_request.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace lserve::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see port())
  std::string api_key;
  int http_threads = 256;  // connections served at once (a streaming request holds one)
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions options);
  ~HttpServer();

  // Binds the socket (throws Error when it cannot); then run() serves.
  void bind();
  int port() const { return port_; }
  // Serves until stop(); call from its own thread.
  void run();
  // The model is ready: the API starts answering. The engine must outlive the server.
  void attach(Engine* engine, ModelContext model);
  // Graceful: new API requests get 503, requests in flight finish, then run() returns.
  void drain_and_stop();
  // Immediately.
  void stop();

 private:
  void routes();
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  bool ready(httplib::Response& res) const;
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void tokenize(const httplib::Request& req, httplib::Response& res);
  void detokenize(const httplib::Request& req, httplib::Response& res);

  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  Engine* engine_ = nullptr;
  ModelContext model_;
  std::atomic<bool> ready_{false}, draining_{false};
  std::atomic<int> in_flight_{0};
  int64_t created_ = 0;
};

}  // namespace lserve::server
