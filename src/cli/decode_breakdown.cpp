#include "cli/decode_breakdown.h"

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
  return {s.timed_steps,          s.host_plan_s * 1e3,   s.device_before_kernels_s * 1e3, s.device_kernels_s * 1e3,
          s.host_finish_s * 1e3, s.step_wall_s * 1e3, s.host_select_plan_s * 1e3};
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
  return DecodeBreakdown{sum_.steps,          sum_.host_plan / n,   sum_.device_before_kernels / n,
                         sum_.device_kernels / n, sum_.host_finish / n, sum_.forward_wall / n,
                         sum_.host_select_plan / n};
}

void print_decode_breakdown(const DecodeBreakdown& b, double measured_step_ms, int64_t context, int64_t batch) {
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
