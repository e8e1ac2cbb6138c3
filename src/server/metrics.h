// Prometheus text exposition of the engine's state for GET /metrics: requests running and
// waiting, KV pages per pool, prefix-cache hit rate, token counters and latency histograms.
#pragma once

#include <string>

#include "engine/engine.h"

namespace lserve::server {

std::string prometheus_metrics(const EngineStats& stats, const std::string& model_name);

}  // namespace lserve::server
