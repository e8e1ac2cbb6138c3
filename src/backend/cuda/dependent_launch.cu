// The switch of programmatic dependent launch (dependent_launch.cuh).
#include <atomic>

#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/kernels.h"

namespace lserve::cuda {

namespace {
std::atomic<bool> g_dependent_launch{true};
}

bool dependent_launch_enabled() { return g_dependent_launch.load(std::memory_order_relaxed); }
void set_dependent_launch(bool on) { g_dependent_launch.store(on, std::memory_order_relaxed); }

}  // namespace lserve::cuda
