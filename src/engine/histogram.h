// Histogram: a Prometheus-style histogram (cumulative buckets, sum, count) of durations in
// seconds, for time-to-first-token, inter-token latency and request latency.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lserve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  const std::vector<uint64_t>& counts() const { return counts_; }  // per bucket, not cumulative; +Inf last
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }
  // The value under which a fraction q of observations fall, interpolated within its bucket.
  double quantile(double q) const;
  // Prometheus text exposition of the histogram under `name` (with HELP and TYPE lines).
  std::string prometheus(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Bucket bounds from `start` growing by `factor` up to `end` seconds.
std::vector<double> exponential_buckets(double start, double factor, double end);

}  // namespace lserve
