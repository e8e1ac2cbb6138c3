// Row copies: the token embedding lookup and gather_rows (the rows that go on to lm_head).
// One block per output row, 16-byte copies when rows and pointers allow, 2-byte otherwise.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace lserve::cuda {

namespace {

// Copies `bytes` (even) from src to dst with the block's threads; src == nullptr writes zeros.
__device__ inline void copy_row(const char* src, char* dst, int64_t bytes, bool wide) {
  if (wide) {
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = src ? reinterpret_cast<const uint4*>(src)[i] : make_uint4(0, 0, 0, 0);
  } else {
    for (int64_t i = threadIdx.x; i < bytes / 2; i += blockDim.x)
      reinterpret_cast<uint16_t*>(dst)[i] = src ? reinterpret_cast<const uint16_t*>(src)[i] : uint16_t{0};
  }
}

__global__ void embedding_kernel(const int32_t* __restrict__ ids, const bf16* __restrict__ table, int64_t vocab,
                                 int64_t hidden, bf16* __restrict__ out, bool wide) {
  const int32_t id = ids[blockIdx.x];
  const bool ok = id >= 0 && id < vocab;
  copy_row(ok ? reinterpret_cast<const char*>(table + id * hidden) : nullptr,
           reinterpret_cast<char*>(out + blockIdx.x * hidden), hidden * 2, wide);
}

__global__ void gather_rows_kernel(const char* __restrict__ src, const int32_t* __restrict__ rows, int64_t row_bytes,
                                   char* __restrict__ dst, bool wide) {
  copy_row(src + rows[blockIdx.x] * row_bytes, dst + blockIdx.x * row_bytes, row_bytes, wide);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void embedding(const int32_t* ids, const bf16* table, int64_t vocab, int64_t hidden, bf16* out, int64_t tokens,
               cudaStream_t stream) {
  if (tokens == 0) return;
  const bool wide = (hidden * 2) % 16 == 0 && aligned16(table) && aligned16(out);
  embedding_kernel<<<static_cast<unsigned>(tokens), 128, 0, stream>>>(ids, table, vocab, hidden, out, wide);
  LSERVE_CUDA_CHECK_LAUNCH();
}

void gather_rows(const void* src, const int32_t* rows, int64_t num_rows, int64_t row_bytes, void* dst,
                 cudaStream_t stream) {
  if (num_rows == 0) return;
  const bool wide = row_bytes % 16 == 0 && aligned16(src) && aligned16(dst);
  gather_rows_kernel<<<static_cast<unsigned>(num_rows), 128, 0, stream>>>(
      static_cast<const char*>(src), rows, row_bytes, static_cast<char*>(dst), wide);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
