#include "cli/decode_breakdown.h"

#include <algorithm>
#include <cstdio>

#include "backend/backend.h"
#ifdef LSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace lserve::cli {

namespace {

#ifdef LSERVE_HAVE_CUDA
DecodeBreakdown totals(Backend& backend) {
  const CudaStepStats s = cuda_step_stats(backend);
  DecodeBreakdown b;
  b.steps = s.timed_steps;
  b.overlapped = static_cast<double>(s.overlapped);
  b.overlap_waits = static_cast<double>(s.overlap_waits);
  b.host_plan = s.host_plan_s * 1e3;
  b.device_before_kernels = s.device_before_kernels_s * 1e3;
  b.device_kernels = s.device_kernels_s * 1e3;
  b.host_finish = s.host_finish_s * 1e3;
  b.forward_wall = s.step_wall_s * 1e3;
  b.host_select_plan = s.host_select_plan_s * 1e3;
  return b;
}
#endif

}  // namespace

DecodeTimer::DecodeTimer(Backend& backend, bool profile) : backend_(backend), cuda_(backend.device() == Device::Cuda) {
#ifdef LSERVE_HAVE_CUDA
  if (cuda_) enable_cuda_step_timing(backend_, profile);
#else
  (void)profile;
#endif
}

void DecodeTimer::start() {
#ifdef LSERVE_HAVE_CUDA
  if (cuda_) begin_ = totals(backend_);
#endif
}

void DecodeTimer::stop() {
#ifdef LSERVE_HAVE_CUDA
  if (!cuda_) return;
  const DecodeBreakdown end = totals(backend_);
  sum_.steps += end.steps - begin_.steps;
  sum_.overlapped += end.overlapped - begin_.overlapped;
  sum_.overlap_waits += end.overlap_waits - begin_.overlap_waits;
  sum_.host_plan += end.host_plan - begin_.host_plan;
  sum_.device_before_kernels += end.device_before_kernels - begin_.device_before_kernels;
  sum_.device_kernels += end.device_kernels - begin_.device_kernels;
  sum_.host_finish += end.host_finish - begin_.host_finish;
  sum_.forward_wall += end.forward_wall - begin_.forward_wall;
  sum_.host_select_plan += end.host_select_plan - begin_.host_select_plan;
#endif
}

std::optional<DecodeBreakdown> DecodeTimer::result() const {
  if (sum_.steps <= 0) return std::nullopt;
  const auto n = static_cast<double>(sum_.steps);
  DecodeBreakdown b = sum_;
  b.overlapped = std::min(sum_.overlapped / n, 1.0);
  b.overlap_waits = std::min(sum_.overlap_waits / n, 1.0);
  for (double* v : {&b.host_plan, &b.device_before_kernels, &b.device_kernels, &b.host_finish, &b.forward_wall,
                    &b.host_select_plan})
    *v /= n;
  return b;
}

void print_decode_breakdown(const DecodeBreakdown& b, double measured_step_ms, int64_t context, int64_t batch) {
  if (b.overlapped > 0) {
    // Overlapped steps: the host's work runs beside the device's, so the parts do not add up to
    // the step; what the device did not spend on the step's uploads and kernels, it idled.
    std::fprintf(stderr,
                 "[lserve] decode step at %lld tokens x%lld, %lld steps (%.0f%% begun while the one before ran, "
                 "%.0f%% of them waiting for its page selections): %.3f ms measured; device clock: uploads %.3f, "
                 "kernels %.3f, idle %.3f; host, beside it: planning %.3f (of which page selection %.3f), "
                 "finish %.3f\n",
                 static_cast<long long>(context), static_cast<long long>(batch), static_cast<long long>(b.steps),
                 100 * b.overlapped, b.overlapped > 0 ? 100 * b.overlap_waits / b.overlapped : 0.0, measured_step_ms, b.device_before_kernels, b.device_kernels,
                 measured_step_ms - b.device_before_kernels - b.device_kernels, b.host_plan, b.host_select_plan,
                 b.host_finish);
    return;
  }
  // The forward pass's wall time minus its parts: waiting for the queued work to drain and the
  // download of the sampled tokens.
  const double rest = b.forward_wall - b.host_plan - b.host_finish;
  std::fprintf(stderr,
               "[lserve] decode step at %lld tokens x%lld, %lld steps: %.3f ms measured; the forward pass %.3f ms "
               "= host planning %.3f (of which page selection %.3f) + queued work and download %.3f (device clock: "
               "%.3f before the kernels, the uploads and the wait for the planning; kernels %.3f) + host finish %.3f; "
               "outside the forward pass %.3f\n",
               static_cast<long long>(context), static_cast<long long>(batch), static_cast<long long>(b.steps),
               measured_step_ms, b.forward_wall, b.host_plan, b.host_select_plan, rest, b.device_before_kernels,
               b.device_kernels, b.host_finish, measured_step_ms - b.forward_wall);
}

}  // namespace lserve::cli
