// The switch of programmatic dependent launch (dependent_launch.cuh), and whether the device
// code can honour it: kernels compiled for compute capability 9.0 or later wait with
// griddepcontrol.wait; compiled for less (and JIT-compiled from older PTX) they would not wait
// at all, so the launches must stay ordinary there.
#include <atomic>

#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"

namespace lserve::cuda {

namespace {

std::atomic<bool> g_dependent_launch{false};

__global__ void probe_kernel() {}  // built with the same architectures as every kernel

bool device_code_waits() {
  static const bool waits = [] {
    cudaFuncAttributes a{};
    int device = 0, major = 0;
    if (cudaFuncGetAttributes(&a, probe_kernel) != cudaSuccess || cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9 && a.ptxVersion >= 90 && a.binaryVersion >= 90;
  }();
  return waits;
}

}  // namespace

bool dependent_launch_enabled() {
  return g_dependent_launch.load(std::memory_order_relaxed) && device_code_waits();
}
void set_dependent_launch(bool on) { g_dependent_launch.store(on, std::memory_order_relaxed); }

}  // namespace lserve::cuda
