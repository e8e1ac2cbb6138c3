#include "backend/cuda/cuda_staging.h"

#include <cstring>

#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

PinnedUploader::PinnedUploader(cudaStream_t stream, size_t slots) : stream_(stream), slots_(slots) {
  for (Slot& s : slots_) LSERVE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
}

PinnedUploader::~PinnedUploader() {
  for (Slot& s : slots_) {
    if (s.done) {
      cudaEventSynchronize(s.done);
      cudaEventDestroy(s.done);
    }
    if (s.host) cudaFreeHost(s.host);
  }
}

void PinnedUploader::upload(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  Slot& s = slots_[next_++ % slots_.size()];
  LSERVE_CUDA_CHECK(cudaEventSynchronize(s.done));  // its last copy has left the slot
  if (s.capacity < bytes) {
    if (s.host) LSERVE_CUDA_CHECK(cudaFreeHost(s.host));
    s.host = nullptr;
    size_t cap = 64 * 1024;
    while (cap < bytes) cap *= 2;
    LSERVE_CUDA_CHECK(cudaMallocHost(&s.host, cap));
    s.capacity = cap;
  }
  std::memcpy(s.host, host_src, bytes);
  LSERVE_CUDA_CHECK(cudaMemcpyAsync(device_dst, s.host, bytes, cudaMemcpyHostToDevice, stream_));
  LSERVE_CUDA_CHECK(cudaEventRecord(s.done, stream_));
}

}  // namespace lserve::cuda
