// Where the decode steps of a benchmark spent their time on a CUDA backend, from the backend's
// own host clocks and CUDA events (CudaStepStats): a snapshot before the timed steps, the
// difference after (making one turns the backend's step timing on). On any other backend it
// measures nothing.
#pragma once

#include <cstdint>
#include <optional>

namespace lserve {
class Backend;
}

namespace lserve::cli {

struct DecodeBreakdown {  // per decode step, in milliseconds
  int64_t steps = 0;
  double overlapped = 0;     // of the steps, the share begun while the one before ran
  double overlap_waits = 0;  // and the share whose plan waited for the one before's selections
  double host_plan = 0, device_before_kernels = 0, device_kernels = 0, host_finish = 0, forward_wall = 0;
  double host_select_plan = 0;  // of host_plan: the page selections' plan
};

class DecodeTimer {
 public:
  // profile: each timed step also inside cudaProfilerStart/Stop (for ncu --profile-from-start off).
  explicit DecodeTimer(Backend& backend, bool profile = false);
  void start();  // before timed decode steps
  void stop();   // after them; several start/stop spans add up
  // The spans' steps, averaged; nothing on a backend without step statistics or no steps.
  std::optional<DecodeBreakdown> result() const;

 private:
  Backend& backend_;
  bool cuda_ = false;
  DecodeBreakdown begin_, sum_;
};

// The breakdown as one line on stderr, against the step time the benchmark measured around
// the whole generation loop (its remainder is the engine's host work outside the forward pass).
void print_decode_breakdown(const DecodeBreakdown& b, double measured_step_ms, int64_t context, int64_t batch);

}  // namespace lserve::cli
