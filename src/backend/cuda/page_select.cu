// GPU page selection (see page_select.h): one block of 256 threads per job.
//   scores: each thread takes whole pages (a page's logical rows and every head of the unit), so
//           a head's score sums its channels in order, exactly as the host does;
//   mass:   block reductions for each head's max and softmax denominator (double);
//   pick:   a bitonic sort of the candidates by (mass descending, index ascending) in the job's
//           scratch, then one thread walks the sorted order with the host's loop.
// Selection runs once per sequence every selector_interval decode steps; it reads every page's
// key summaries (4 logical rows of 128 channels x 2 = 2 KB a page for a KV head at head_dim
// 128), which is what the decode steps it serves then save many times over.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/page_select.h"

namespace lserve::cuda {

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32, kMaxHeads = kSelectMaxHeads, kMaxDim = kSelectMaxHeadDim;

__host__ __device__ inline size_t align16(size_t b) { return (b + 15) / 16 * 16; }
__host__ __device__ inline int32_t pow2_at_least(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

template <class T, class Op>
__device__ T block_reduce(T v, Op op, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, shared[w]);
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kThreads) select_kernel(const SelectParams p, const SelectJob* __restrict__ jobs,
                                                          int32_t num_jobs) {
  __shared__ float qs[kMaxHeads * kMaxDim];
  __shared__ double red[kWarps];
  if (static_cast<int32_t>(blockIdx.x) >= num_jobs) return;
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active) return;  // reused this step: its list came from the host
  const int D = p.head_dim, G = j.num_heads, n = j.num_pages, P = p.page_size, LP = p.logical_page_size;
  int32_t* out = p.out_pages + j.out;
  const int32_t max_pages = max(j.max_pages, 2);
  if (n <= 2 || (j.mass_threshold == 0.0 && n <= max_pages)) {  // every page (dense)
    for (int i = threadIdx.x; i < n; i += kThreads) out[i] = i;
    if (threadIdx.x == 0) p.out_counts[j.count_index] = n;
    return;
  }
  unsigned char* base = p.scratch + static_cast<size_t>(j.scratch) * 16;
  float* scores = reinterpret_cast<float*>(base);  // [G][n]
  double* mass = reinterpret_cast<double*>(base + align16(sizeof(float) * G * n));
  const int32_t m = pow2_at_least(n - 2);  // sorted candidates: pages 1 .. n - 2
  double* sort_mass = mass + n;
  int32_t* sort_index = reinterpret_cast<int32_t*>(sort_mass + m);

  for (int e = threadIdx.x; e < G * D; e += kThreads)
    qs[e] = __bfloat162float(p.q[(static_cast<int64_t>(j.q_row) * p.num_heads + j.head0) * D + e]);
  __syncthreads();

  // 1. Scores, pooled by max over a page's logical rows that hold tokens.
  const int per_page = P / LP;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int tokens_here = min(P, j.num_tokens - i * P);
    const int logical = (tokens_here + LP - 1) / LP;
    const int64_t page = p.page_indices[j.pages_begin + i];
    const int64_t row0 = (page * p.pool_heads + j.pool_index) * per_page;
    float best[kMaxHeads];
    for (int h = 0; h < G; ++h) best[h] = -INFINITY;
    for (int lp = 0; lp < logical; ++lp) {
      const __nv_bfloat16* kmin = p.key_min + (row0 + lp) * D;
      const __nv_bfloat16* kmax = p.key_max + (row0 + lp) * D;
      for (int h = 0; h < G; ++h) {
        const float* q = qs + h * D;
        float s = 0.0f;
        for (int c = 0; c < D; ++c)
          s += fmaxf(q[c] * __bfloat162float(kmax[c]), q[c] * __bfloat162float(kmin[c]));
        best[h] = fmaxf(best[h], s);
      }
    }
    for (int h = 0; h < G; ++h) scores[h * n + i] = best[h];
  }
  __syncthreads();

  // 2. The unit's mass estimate: the mean over its heads of softmax(scale * score).
  for (int i = threadIdx.x; i < n; i += kThreads) mass[i] = 0.0;
  const double scale = p.scale;
  for (int h = 0; h < G; ++h) {
    double mx = -INFINITY;
    for (int i = threadIdx.x; i < n; i += kThreads) mx = fmax(mx, static_cast<double>(scores[h * n + i]) * scale);
    mx = block_reduce(mx, [](double a, double b) { return fmax(a, b); }, red);
    double total = 0.0;
    for (int i = threadIdx.x; i < n; i += kThreads) total += exp(static_cast<double>(scores[h * n + i]) * scale - mx);
    total = block_reduce(total, [](double a, double b) { return a + b; }, red);
    for (int i = threadIdx.x; i < n; i += kThreads)
      mass[i] += exp(static_cast<double>(scores[h * n + i]) * scale - mx) / total / static_cast<double>(G);
    __syncthreads();
  }

  // 3. Candidates by descending mass, ties to the lower index: a bitonic sort (padding last).
  for (int i = threadIdx.x; i < m; i += kThreads) {
    const bool real = i < n - 2;
    sort_mass[i] = real ? mass[i + 1] : -1.0;
    sort_index[i] = real ? i + 1 : INT_MAX;
  }
  __syncthreads();
  auto before = [&](int a, int b) {  // whether entry a belongs before entry b
    return sort_mass[a] > sort_mass[b] || (sort_mass[a] == sort_mass[b] && sort_index[a] < sort_index[b]);
  };
  for (int k = 2; k <= m; k *= 2) {
    for (int stride = k / 2; stride > 0; stride /= 2) {
      for (int i = threadIdx.x; i < m; i += kThreads) {
        const int l = i ^ stride;
        if (l <= i) continue;
        const bool ascending = (i & k) == 0;  // ascending: "before" order
        if (ascending ? before(l, i) : before(i, l)) {
          const double tm = sort_mass[i];
          sort_mass[i] = sort_mass[l];
          sort_mass[l] = tm;
          const int32_t ti = sort_index[i];
          sort_index[i] = sort_index[l];
          sort_index[l] = ti;
        }
      }
      __syncthreads();
    }
  }

  // 4. The host's loop over the sorted candidates, then the kept pages in ascending order.
  if (threadIdx.x == 0) {
    int32_t count = 2;
    out[0] = 0;
    out[1] = n - 1;
    double kept = mass[0] + mass[n - 1];
    for (int t = 0; t < n - 2; ++t) {
      if (count >= max_pages) break;
      if (j.mass_threshold > 0.0 && kept >= j.mass_threshold && count >= j.min_pages) break;
      out[count++] = sort_index[t];
      kept += sort_mass[t];
    }
    for (int a = 1; a < count; ++a) {  // insertion sort: count is the budget in pages
      const int32_t v = out[a];
      int b = a - 1;
      while (b >= 0 && out[b] > v) {
        out[b + 1] = out[b];
        --b;
      }
      out[b + 1] = v;
    }
    p.out_counts[j.count_index] = count;
  }
}

}  // namespace

size_t select_scratch_bytes(int32_t num_heads, int32_t num_pages) {
  const int32_t m = pow2_at_least(std::max(num_pages - 2, 1));
  return align16(align16(sizeof(float) * static_cast<size_t>(num_heads) * num_pages) + sizeof(double) * num_pages +
                 (sizeof(double) + sizeof(int32_t)) * static_cast<size_t>(m));
}

void select_pages(const SelectParams& p, const SelectJob* jobs, int32_t num_jobs, cudaStream_t stream) {
  if (num_jobs == 0) return;
  select_kernel<<<static_cast<unsigned>(num_jobs), kThreads, 0, stream>>>(p, jobs, num_jobs);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
