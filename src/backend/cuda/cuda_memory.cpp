#include "backend/cuda/cuda_memory.h"

#include <spdlog/spdlog.h>

#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

CudaMemory::CudaMemory(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  const cudaError_t err = cudaMalloc(&data_, bytes);
  if (err != cudaSuccess) {
    size_t free_bytes = 0, total = 0;
    cudaGetLastError();  // clear the sticky allocation error before asking
    cudaMemGetInfo(&free_bytes, &total);
    fail("cudaMalloc of {:.1f} MiB failed: {} ({:.1f} of {:.1f} MiB free)", bytes / 1048576.0,
         cudaGetErrorString(err), free_bytes / 1048576.0, total / 1048576.0);
  }
}

CudaMemory::~CudaMemory() {
  if (!data_) return;
  // A destructor must not throw; a failure here means the context is already broken, which the
  // next checked call reports.
  if (const cudaError_t err = cudaFree(data_); err != cudaSuccess)
    spdlog::error("cudaFree failed: {}", cudaGetErrorString(err));
}

}  // namespace lserve::cuda

namespace lserve::cuda {

void* GrowableBuffer::ensure(size_t bytes, cudaStream_t stream) {
  if (mem_ && mem_->size() >= bytes) return mem_->data();
  if (mem_) LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream));
  mem_.reset();  // free before allocating: the old block may be large
  size_t cap = 4096;
  while (cap < bytes) cap *= 2;
  mem_ = std::make_unique<CudaMemory>(cap);
  return mem_->data();
}

uint32_t* ArrivalCounters::ensure(size_t count, cudaStream_t stream) {
  auto* d = static_cast<uint32_t*>(buffer_.ensure(count * sizeof(uint32_t), stream));
  if (count > zeroed_) {  // a new block, or one grown past what was zeroed: all of it again
    LSERVE_CUDA_CHECK(cudaMemsetAsync(d, 0, count * sizeof(uint32_t), stream));
    zeroed_ = count;
  }
  return d;
}

}  // namespace lserve::cuda
