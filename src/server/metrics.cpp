#include "server/metrics.h"

#include <fmt/format.h>

namespace lserve::server {

namespace {

void metric(std::string& out, const char* type, const std::string& name, const std::string& help,
            const std::vector<std::pair<std::string, double>>& samples) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  for (const auto& [labels, value] : samples) out += fmt::format("{}{} {}\n", name, labels, value);
}

}  // namespace

std::string prometheus_metrics(const EngineStats& s, const std::string& model_name) {
  std::string out;
  const std::string m = fmt::format("model_name=\"{}\"", model_name);
  auto label = [&](const std::string& extra = {}) { return "{" + m + (extra.empty() ? "" : "," + extra) + "}"; };
  auto d = [](int64_t v) { return static_cast<double>(v); };

  metric(out, "gauge", "lserve_requests_running", "Requests whose sequences hold KV pages now.", {{label(), d(s.running)}});
  metric(out, "gauge", "lserve_requests_waiting", "Requests queued for admission.", {{label(), d(s.waiting)}});
  metric(out, "gauge", "lserve_kv_pages_used", "KV pages referenced by running sequences, per pool.",
         {{label("pool=\"retrieval\""), d(s.retrieval_pages_used)}, {label("pool=\"streaming\""), d(s.streaming_pages_used)}});
  metric(out, "gauge", "lserve_kv_pages_free", "KV pages free or evictable (cached, unreferenced), per pool.",
         {{label("pool=\"retrieval\""), d(s.retrieval_pages - s.retrieval_pages_used)},
          {label("pool=\"streaming\""), d(s.streaming_pages - s.streaming_pages_used)}});
  metric(out, "gauge", "lserve_kv_pages_total", "KV pages in each pool.",
         {{label("pool=\"retrieval\""), d(s.retrieval_pages)}, {label("pool=\"streaming\""), d(s.streaming_pages)}});
  metric(out, "gauge", "lserve_prefix_cache_pages", "Prefix pages indexed by the prefix cache.", {{label(), d(s.cached_pages)}});
  const double hit_rate = s.prefix_tokens_queried ? d(s.prefix_tokens_hit) / d(s.prefix_tokens_queried) : 0.0;
  metric(out, "gauge", "lserve_prefix_cache_hit_rate", "Share of admitted prompt tokens found in the prefix cache.",
         {{label(), hit_rate}});
  metric(out, "counter", "lserve_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
         {{label(), d(s.prefix_tokens_queried)}});
  metric(out, "counter", "lserve_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
         {{label(), d(s.prefix_tokens_hit)}});
  metric(out, "counter", "lserve_prompt_tokens_total", "Prompt tokens computed (prefix-cache hits excluded).",
         {{label(), d(s.prompt_tokens)}});
  metric(out, "counter", "lserve_generation_tokens_total", "Tokens generated.", {{label(), d(s.generation_tokens)}});
  metric(out, "counter", "lserve_preemptions_total", "Sequences preempted for lack of KV pages.", {{label(), d(s.preemptions)}});
  metric(out, "counter", "lserve_engine_steps_total", "Forward steps run.", {{label(), d(s.steps)}});
  std::vector<std::pair<std::string, double>> finished;
  for (int r = 0; r < 5; ++r)
    finished.emplace_back(label(fmt::format("finished_reason=\"{}\"", finish_reason_name(static_cast<FinishReason>(r)))),
                          d(s.requests_finished[r]));
  metric(out, "counter", "lserve_requests_finished_total", "Requests finished, by reason.", finished);
  out += s.time_to_first_token.prometheus("lserve_time_to_first_token_seconds", "Time from arrival to the first token.");
  out += s.inter_token_latency.prometheus("lserve_inter_token_latency_seconds", "Time between consecutive tokens.");
  out += s.request_latency.prometheus("lserve_request_latency_seconds", "Time from arrival to the end of a request.");
  return out;
}

}  // namespace lserve::server
