#include "engine/histogram.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"

namespace lserve {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1) {
  LSERVE_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bounds must ascend");
}

void Histogram::observe(double value) {
  const auto bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[static_cast<size_t>(bucket)];
  sum_ += value;
  ++count_;
}

double Histogram::quantile(double q) const {
  if (count_ == 0) return 0;
  const double rank = q * static_cast<double>(count_);
  double seen = 0;
  for (size_t b = 0; b < counts_.size(); ++b) {
    const double c = static_cast<double>(counts_[b]);
    if (seen + c >= rank && c > 0) {
      const double lo = b == 0 ? 0 : bounds_[b - 1];
      if (b == bounds_.size()) return lo;  // the +Inf bucket: its lower edge is all we know
      return lo + (bounds_[b] - lo) * ((rank - seen) / c);
    }
    seen += c;
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

std::string Histogram::prometheus(const std::string& name, const std::string& help) const {
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t b = 0; b < bounds_.size(); ++b) {
    cumulative += counts_[b];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[b], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, sum_, name, count_);
  return out;
}

std::vector<double> exponential_buckets(double start, double factor, double end) {
  LSERVE_CHECK(start > 0 && factor > 1 && end >= start);
  std::vector<double> b;
  for (double v = start; v <= end * (1 + 1e-9); v *= factor) b.push_back(v);
  return b;
}

}  // namespace lserve
