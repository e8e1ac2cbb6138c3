// Error checks for the CUDA runtime: every runtime call goes through LSERVE_CUDA_CHECK, which
// throws lserve::Error naming the call, its file:line and CUDA's message. Every kernel launch is
// followed by LSERVE_CUDA_CHECK_LAUNCH(): launch-configuration errors surface there at once, faults
// inside a kernel at the next synchronizing call (compute-sanitizer pins those to a line).
// Plain C++ on purpose: .cu files include it, and nvcc need not parse the project's fmt headers.
#pragma once

#include <cuda_runtime_api.h>

namespace lserve::cuda {

[[noreturn]] void cuda_fail(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void cublas_fail(int status, const char* expr, const char* file, int line);

}  // namespace lserve::cuda

#define LSERVE_CUDA_CHECK(expr)                                                   \
  do {                                                                            \
    const cudaError_t lserve_cuda_err_ = (expr);                                  \
    if (lserve_cuda_err_ != cudaSuccess)                                          \
      ::lserve::cuda::cuda_fail(lserve_cuda_err_, #expr, __FILE__, __LINE__);     \
  } while (0)

#define LSERVE_CUDA_CHECK_LAUNCH() LSERVE_CUDA_CHECK(cudaGetLastError())
