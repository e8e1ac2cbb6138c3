// Programmatic dependent launch (Hopper): a kernel launched with launch_dependent() may be
// scheduled while the kernel before it in the stream is still running, so that its launch and
// whatever it does before wait_for_previous_kernels() overlap the predecessor's last wave and
// drain instead of following them. In a decode step that gap comes after every one of a layer's
// ten-odd small kernels (a few microseconds each at batch 1).
//
// The contract, for every kernel launched this way:
//   - call allow_next_kernel() early (the next kernel may then be scheduled once all of this
//     kernel's blocks are running; they never wait for the next one, so nothing deadlocks);
//   - call wait_for_previous_kernels() before reading anything an earlier kernel wrote and
//     before writing anything at all; before it, only memory no kernel of the stream writes
//     (weights) may be read. It returns once the previous kernel has finished and its writes
//     are visible, and that kernel waited for its own predecessor the same way.
// Kernels launched the ordinary way keep the ordinary stream order, before and after.
#pragma once

#include <cuda_runtime_api.h>

#include <utility>

#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

__device__ inline void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ inline void wait_for_previous_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The process-wide switch set_dependent_launch() (kernels.h) sets, and-ed with whether this
// build's device code waits at all (compiled for compute capability 9.0 or later, running on
// such a device): otherwise the same kernels launch the ordinary way (their waits are no-ops).
bool dependent_launch_enabled();

template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = dependent_launch_enabled() ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  LSERVE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace lserve::cuda
