// PinnedUploader: the small per-step uploads (token ids, positions, the batch's page tables, the
// attention plan) go through pinned host memory. A copy from pinned memory is truly asynchronous;
// one from pageable memory may wait for the stream to drain first, which would stall the host at
// every step. Slots form a ring; a slot is reused only once its previous copy has completed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

namespace lserve::cuda {

class PinnedUploader {
 public:
  explicit PinnedUploader(cudaStream_t stream, size_t slots = 16);  // two overlapped steps' uploads, and room
  ~PinnedUploader();
  PinnedUploader(const PinnedUploader&) = delete;
  PinnedUploader& operator=(const PinnedUploader&) = delete;

  // Queues device_dst <- host_src on the stream; host_src may be reused as soon as this returns.
  void upload(void* device_dst, const void* host_src, size_t bytes);

 private:
  struct Slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  cudaStream_t stream_;
  std::vector<Slot> slots_;
  size_t next_ = 0;
};

}  // namespace lserve::cuda
