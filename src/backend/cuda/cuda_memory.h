// CudaMemory: a cudaMalloc'd block owned as a DeviceMemory (freed when the last handle goes).
// Plain device memory on purpose, never managed memory: managed pages fault in on first touch and
// can oversubscribe the card.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace lserve::cuda {

class CudaMemory final : public DeviceMemory {
 public:
  explicit CudaMemory(size_t bytes);
  ~CudaMemory() override;
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;

  void* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace lserve::cuda

namespace lserve::cuda {

// A device buffer that only grows, for per-step arrays whose size follows the batch. Growing
// waits for `stream` first: work already queued may still read the old block.
class GrowableBuffer {
 public:
  void* ensure(size_t bytes, cudaStream_t stream);
  void* data() const { return mem_ ? mem_->data() : nullptr; }

 private:
  std::unique_ptr<CudaMemory> mem_;
};

// Counters for kernels that count their blocks in and leave the counts at zero when they end
// (the last block to arrive resets it): zero once, when first made or grown, never per launch.
class ArrivalCounters {
 public:
  uint32_t* ensure(size_t count, cudaStream_t stream);
  uint32_t* data() const { return static_cast<uint32_t*>(buffer_.data()); }

 private:
  GrowableBuffer buffer_;
  size_t zeroed_ = 0;  // counters zeroed so far
};

}  // namespace lserve::cuda
