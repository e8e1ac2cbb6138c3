#include "backend/cuda/reused_lists.h"

#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kUnitsPerBlock = kThreads / 32;  // a warp a unit

__global__ void carry_kernel(int32_t* __restrict__ counts, int32_t* __restrict__ lists,
                             const int32_t* __restrict__ staged_counts, const int32_t* __restrict__ staged_lists,
                             const int32_t* __restrict__ keep, int64_t units, int32_t capacity) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kUnitsPerBlock + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (unit >= units) return;
  const int32_t k = keep[unit];
  int32_t* list = lists + unit * capacity;
  if (k == kListFromHost) {
    const int32_t n = staged_counts[unit];
    const int32_t* src = staged_lists + unit * capacity;
    for (int32_t i = lane; i < n; i += 32) list[i] = src[i];
    if (lane == 0) counts[unit] = n;
    return;
  }
  if (k < 0 || lane != 0) return;  // kept as it is
  // A list holds its selection (at most the budget) and a page a step since: the capacity, made
  // for the selector's interval, is never reached (the host's own append checks it).
  const int32_t n = counts[unit];
  if (n < capacity && (n == 0 || list[n - 1] < k)) {
    list[n] = k;
    counts[unit] = n + 1;
  }
}

}  // namespace

void carry_reused_lists(int32_t* counts, int32_t* lists, const int32_t* staged_counts, const int32_t* staged_lists,
                        const int32_t* keep, int64_t units, int32_t capacity, cudaStream_t stream) {
  if (units <= 0) return;
  const auto blocks = static_cast<unsigned>((units + kUnitsPerBlock - 1) / kUnitsPerBlock);
  carry_kernel<<<blocks, kThreads, 0, stream>>>(counts, lists, staged_counts, staged_lists, keep, units, capacity);
  LSERVE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lserve::cuda
