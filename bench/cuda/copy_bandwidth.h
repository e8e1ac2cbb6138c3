// What the GPU timing programs share: the median of repeats, and the copy bandwidth every
// memory-bound kernel is measured against.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_check.h"

namespace lserve::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// GB/s of a 1 GiB device-to-device copy, counting bytes read and written.
inline double copy_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  LSERVE_CUDA_CHECK(cudaMalloc(&a, bytes));
  LSERVE_CUDA_CHECK(cudaMalloc(&b, bytes));
  LSERVE_CUDA_CHECK(cudaMemset(a, 0x3c, bytes));
  cudaEvent_t e0, e1;
  LSERVE_CUDA_CHECK(cudaEventCreate(&e0));
  LSERVE_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int i = 0; i < 12; ++i) {
    LSERVE_CUDA_CHECK(cudaEventRecord(e0));
    LSERVE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    LSERVE_CUDA_CHECK(cudaEventRecord(e1));
    LSERVE_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    LSERVE_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 2) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (median(ms) * 1e-3) / 1e9;
}

}  // namespace lserve::bench
