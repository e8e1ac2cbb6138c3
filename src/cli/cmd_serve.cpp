// `lserve serve`: the OpenAI-compatible HTTP server. It listens first (health says "loading"),
// then loads the model, then serves until SIGTERM or SIGINT, on which it stops taking requests,
// lets the ones in flight finish, and exits.
#include <spdlog/spdlog.h>

#include <csignal>
#include <thread>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "engine/engine.h"
#include "server/chat_renderer.h"
#include "server/http_server.h"

namespace lserve::cli {

namespace {

struct ServeOptions {
  ModelOptions model;
  server::ServerOptions http;
  std::string served_model_name;
  int64_t max_running = 64;
  int64_t max_batched_tokens = 2048;
  int64_t max_waiting = 1024;
  bool no_prefix_caching = false;
};

// Blocks SIGTERM and SIGINT in every thread started after it, so that one thread can wait for
// them with sigwait() instead of a handler running at an arbitrary point.
sigset_t block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server
  return set;
}

void run_serve(ServeOptions o) {
  const sigset_t signals = block_shutdown_signals();
  server::HttpServer http(o.http);
  http.bind();
  std::thread listener([&] { http.run(); });
  spdlog::info("listening on http://{}:{} (loading the model)", o.http.host, http.port());
  struct Joiner {
    server::HttpServer& http;
    std::thread& t;
    ~Joiner() {
      http.stop();
      if (t.joinable()) t.join();
    }
  } joiner{http, listener};

  default_server_threads(o.model);
  LoadedModel m = load_model(o.model);
  if (!m.tokenizer) fail("{}: no tokenizer.json; serve needs a tokenizer", m.dir.string());
  const int64_t max_context = m.model->max_context();
  // One KV cache layout serves every request, so the choice follows the longest prompt served.
  resolve_auto_policy(o.model, m, max_context);
  auto cache = make_server_kv_cache(m, o.model, max_context, o.max_running, o.max_batched_tokens);
  EngineOptions eo;
  eo.scheduler.max_batched_tokens = o.max_batched_tokens;
  eo.scheduler.max_running = static_cast<int32_t>(o.max_running);
  eo.max_waiting = o.max_waiting;
  eo.prefix_caching = !o.no_prefix_caching;
  eo.overlap_steps = o.model.overlap_steps;
  Engine engine(*m.model, *cache, &*m.tokenizer, o.model.sparsity, eo);
  engine.start();

  server::ModelContext ctx;
  ctx.name = o.served_model_name.empty() ? m.dir.filename().string() : o.served_model_name;
  ctx.tokenizer = &*m.tokenizer;
  ctx.generation = m.generation;
  ctx.max_context = max_context;
  ctx.render_chat = server::make_chat_renderer(m.dir);
  ctx.sparsity = o.model.sparsity;
  ctx.page_summaries = cache->logical_page_size() > 0;
  if (!ctx.render_chat) spdlog::warn("{}: no chat template; /v1/chat/completions will refuse requests", m.dir.string());
  http.attach(&engine, ctx);
  spdlog::info("serving '{}' ({}; max context {}, prefix caching {}) on http://{}:{}", ctx.name,
               o.model.sparsity.summary(), max_context, eo.prefix_caching ? "on" : "off", o.http.host, http.port());

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("{}: finishing the requests in flight, then exiting", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  http.drain_and_stop();
  engine.stop(/*drain=*/true);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  add_model_options(cmd, o->model);
  cmd->add_option("--host", o->http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->http.port, "Port to listen on (0: any free port)")->capture_default_str();
  cmd->add_option("--api-key", o->http.api_key, "Require 'Authorization: Bearer KEY' on the API");
  cmd->add_option("--served-model-name", o->served_model_name, "Model id clients use (default: the folder name)");
  cmd->add_option("--max-running", o->max_running, "Sequences running at once")->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--max-batched-tokens", o->max_batched_tokens, "Tokens per engine step (prefill chunks + decodes)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--max-waiting", o->max_waiting, "Queued requests beyond which the server answers 503")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--http-threads", o->http.http_threads, "Connections served at once")->capture_default_str();
  cmd->add_flag("--no-prefix-caching", o->no_prefix_caching, "Do not reuse the KV of shared prompt prefixes");
  cmd->callback([o] {
    finish_sparsity(o->model);
    run_serve(*o);
  });
}

}  // namespace lserve::cli
