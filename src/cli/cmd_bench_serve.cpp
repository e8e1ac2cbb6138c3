// `lserve bench serve`: a serving benchmark in the style of vLLM's benchmark_serving. Synthetic
// prompts of random token ids go to an OpenAI-compatible server (this one, started in-process
// on a free port, or any --url) as streaming completions, at each concurrency level of a sweep;
// it reports throughput and the percentiles of time to first token (TTFT), inter-token latency
// (ITL) and request latency, and can write them as CSV for bench/plot_serve.py.
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "engine/engine.h"
#include "server/chat_renderer.h"
#include "server/http_server.h"

namespace lserve::cli {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct ServeBenchOptions {
  ModelOptions model;
  std::string url;  // empty: serve --model in-process
  std::string api_key;
  std::vector<int> concurrency{1, 4, 16, 64};
  int64_t requests = 0;  // per level; 0: 2 x concurrency, at least 8
  int64_t input_len = 1024;
  int64_t output_len = 64;
  int64_t max_batched_tokens = 2048;
  uint64_t seed = 0;
  std::string csv;
};

struct RequestTiming {
  double ttft = 0, latency = 0;
  std::vector<double> itl;
  int64_t output_tokens = 0;
  bool ok = false;
  std::string error;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

// One streaming completion; times each server-sent event that carries text.
RequestTiming timed_request(httplib::Client& client, const std::string& body, const std::string& api_key) {
  RequestTiming t;
  std::string buffer;
  const auto start = Clock::now();
  auto last = start;
  bool first = true;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  if (!api_key.empty()) req.set_header("Authorization", "Bearer " + api_key);
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buffer.append(data, len);
    for (size_t end; (end = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, end + 2)) {
      const std::string event = buffer.substr(0, end);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const json chunk = json::parse(event.substr(6), nullptr, false);
      if (chunk.is_discarded()) continue;
      if (chunk.contains("error")) t.error = chunk["error"].value("message", "error");
      if (chunk.contains("usage") && chunk["usage"].is_object()) t.output_tokens = chunk["usage"]["completion_tokens"];
      if (!chunk.contains("choices") || chunk["choices"].empty() || chunk["choices"][0].value("text", "").empty()) continue;
      const auto now = Clock::now();
      if (first) t.ttft = std::chrono::duration<double>(now - start).count();
      else t.itl.push_back(std::chrono::duration<double>(now - last).count());
      first = false;
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = client.send(req, res, err);
  t.latency = std::chrono::duration<double>(Clock::now() - start).count();
  if (!sent) t.error = httplib::to_string(err);
  else if (res.status != 200) t.error = fmt::format("HTTP {}: {}", res.status, res.body);
  t.ok = t.error.empty();
  return t;
}

void run_serve_bench(ServeBenchOptions o) {
  // An in-process server unless --url points at one.
  std::unique_ptr<LoadedModel> m;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<server::HttpServer> http;
  std::thread listener;
  int32_t vocab = 1000;
  std::string host = "127.0.0.1";
  int port = 0;
  const int max_concurrency = *std::max_element(o.concurrency.begin(), o.concurrency.end());
  if (o.url.empty()) {
    default_server_threads(o.model);
    m = std::make_unique<LoadedModel>(load_model(o.model));
    if (!m->tokenizer) fail("{}: no tokenizer.json", m->dir.string());
    resolve_auto_policy(o.model, *m, m->model->max_context());
    cache = make_server_kv_cache(*m, o.model, m->model->max_context(), max_concurrency, o.max_batched_tokens);
    EngineOptions eo;
    eo.scheduler.max_running = max_concurrency;
    eo.scheduler.max_batched_tokens = o.max_batched_tokens;
    eo.overlap_steps = o.model.overlap_steps;
    engine = std::make_unique<Engine>(*m->model, *cache, &*m->tokenizer, o.model.sparsity, eo);
    engine->start();
    server::ServerOptions so;
    so.port = 0;
    so.http_threads = std::max(64, 2 * max_concurrency);
    http = std::make_unique<server::HttpServer>(so);
    http->bind();
    server::ModelContext ctx;
    ctx.name = "bench";
    ctx.tokenizer = &*m->tokenizer;
    ctx.generation = m->generation;
    ctx.max_context = m->model->max_context();
    ctx.render_chat = server::make_chat_renderer(m->dir);
    ctx.sparsity = o.model.sparsity;
    ctx.page_summaries = cache->logical_page_size() > 0;
    http->attach(engine.get(), ctx);
    listener = std::thread([&] { http->run(); });
    port = http->port();
    vocab = static_cast<int32_t>(m->model->config().vocab_size);
  } else {
    const auto colon = o.url.rfind(':');
    const auto scheme = o.url.find("://");
    if (scheme == std::string::npos || colon == std::string::npos || colon < scheme + 3) fail("--url must look like http://HOST:PORT");
    host = o.url.substr(scheme + 3, colon - scheme - 3);
    port = std::stoi(o.url.substr(colon + 1));
  }
  // The model id the server expects.
  std::string model_name;
  {
    httplib::Client c(host, port);
    httplib::Headers h;
    if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
    auto res = c.Get("/v1/models", h);
    if (!res || res->status != 200) fail("cannot list models at {}:{}", host, port);
    model_name = json::parse(res->body)["data"][0]["id"];
  }

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  std::FILE* csv = o.csv.empty() ? nullptr : std::fopen(o.csv.c_str(), "w");
  if (!o.csv.empty() && !csv) fail("{}: cannot write", o.csv);
  if (csv)
    std::fprintf(csv, "concurrency,requests,input_len,output_len,seconds,req_per_s,output_tok_per_s,ttft_p50,ttft_p90,"
                      "ttft_p99,itl_p50,itl_p90,itl_p99,latency_mean,errors\n");
  std::printf("%5s %6s %9s %9s %11s | %8s %8s %8s | %7s %7s %7s | %8s %6s\n", "conc", "reqs", "seconds", "req/s",
              "out tok/s", "TTFT p50", "p90", "p99", "ITL p50", "p90", "p99", "lat mean", "errors");
  for (int c : o.concurrency) {
    const int64_t n = o.requests > 0 ? o.requests : std::max<int64_t>(8, 2 * c);
    std::vector<std::string> bodies;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> prompt(static_cast<size_t>(o.input_len));
      for (auto& t : prompt) t = token(rng);
      bodies.push_back(json{{"model", model_name}, {"prompt", prompt}, {"max_tokens", o.output_len}, {"temperature", 0},
                            {"ignore_eos", true}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}
                           .dump());
    }
    std::vector<RequestTiming> timings(static_cast<size_t>(n));
    std::atomic<int64_t> next{0};
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int w = 0; w < c; ++w)
      workers.emplace_back([&] {
        httplib::Client client(host, port);
        client.set_read_timeout(3600, 0);
        for (int64_t i; (i = next++) < n;) timings[static_cast<size_t>(i)] = timed_request(client, bodies[static_cast<size_t>(i)], o.api_key);
      });
    for (auto& w : workers) w.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> ttft, itl, latency;
    int64_t out_tokens = 0, errors = 0;
    for (const auto& t : timings) {
      if (!t.ok) {
        if (errors++ == 0) spdlog::warn("request failed: {}", t.error);
        continue;
      }
      ttft.push_back(t.ttft * 1e3);
      itl.insert(itl.end(), t.itl.begin(), t.itl.end());
      latency.push_back(t.latency);
      out_tokens += t.output_tokens;
    }
    for (auto& x : itl) x *= 1e3;
    double lat_mean = 0;
    for (double x : latency) lat_mean += x / static_cast<double>(std::max<size_t>(latency.size(), 1));
    const double rps = static_cast<double>(n - errors) / seconds, tps = static_cast<double>(out_tokens) / seconds;
    std::printf("%5d %6lld %9.2f %9.2f %11.1f | %8.1f %8.1f %8.1f | %7.2f %7.2f %7.2f | %8.2f %6lld\n", c,
                static_cast<long long>(n), seconds, rps, tps, percentile(ttft, .5), percentile(ttft, .9),
                percentile(ttft, .99), percentile(itl, .5), percentile(itl, .9), percentile(itl, .99), lat_mean,
                static_cast<long long>(errors));
    std::fflush(stdout);
    if (csv)
      std::fprintf(csv, "%d,%lld,%lld,%lld,%.4f,%.4f,%.2f,%.3f,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%lld\n", c,
                   static_cast<long long>(n), static_cast<long long>(o.input_len), static_cast<long long>(o.output_len),
                   seconds, rps, tps, percentile(ttft, .5), percentile(ttft, .9), percentile(ttft, .99),
                   percentile(itl, .5), percentile(itl, .9), percentile(itl, .99), lat_mean, static_cast<long long>(errors));
  }
  if (csv) std::fclose(csv);
  if (http) {
    http->stop();
    listener.join();
    engine->stop(false);
  }
}

}  // namespace

void add_bench_serve_command(CLI::App& bench) {
  auto o = std::make_shared<ServeBenchOptions>();
  CLI::App* cmd = bench.add_subcommand("serve", "serving benchmark: streaming requests at a sweep of concurrencies");
  add_model_options(cmd, o->model);
  cmd->add_option("--url", o->url, "benchmark this OpenAI-compatible server (default: serve --model in-process)");
  cmd->add_option("--api-key", o->api_key, "bearer token for --url");
  cmd->add_option("--concurrency", o->concurrency, "requests in flight, per level of the sweep")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--requests", o->requests, "requests per level (default: 2 x concurrency, at least 8)");
  cmd->add_option("--input-len", o->input_len, "prompt tokens per request")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--output-len", o->output_len, "tokens generated per request")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--max-batched-tokens", o->max_batched_tokens, "in-process server: tokens per engine step")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the synthetic prompts");
  cmd->add_option("--csv", o->csv, "also write the results as CSV (bench/plot_serve.py plots it)");
  cmd->callback([o] {
    finish_sparsity(o->model);
    run_serve_bench(*o);
  });
}

}  // namespace lserve::cli
