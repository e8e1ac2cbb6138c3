// GPU page selection (see page_select.h) in four launches, each spread over many blocks per job
// where the work is (a single sequence's selection must use the whole GPU, not a few SMs):
//   score:  a block stages a chunk of logical pages' key min/max rows in shared memory; each
//           thread sums one (logical page, head) over the channels in order, exactly as the host
//           does, then the chunk pools its rows onto physical pages and records each head's max;
//   sums:   each head's softmax denominator, in double, as partial sums per chunk of pages;
//   mass:   the unit's estimate, the mean over its heads of exp(scale * s - max) / total;
//   pick:   one block per job: a radix select of the k-th largest mass (k: the budget's
//           candidates), the candidates above it and the lowest-index ties compacted, a bitonic
//           sort of those by (mass descending, index ascending), then the host's loop.
// Grids are fixed for a number of jobs (a recorded step replays them while contexts grow):
// blocks stride over the chunks a job has at this length. Inactive jobs (selections reused
// this step) return at once.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/page_select.h"

namespace lserve::cuda {

namespace {

constexpr int kMaxHeads = kSelectMaxHeads, kMaxDim = kSelectMaxHeadDim;
constexpr int kScoreThreads = 256, kChunkRows = 64;  // logical pages a score block stages at once
constexpr int kMassThreads = 256;                    // pages per chunk of the sums and the mass
constexpr int kPickThreads = 1024;
constexpr int kSortShared = 2048;  // candidates sorted in shared memory; more sort in the scratch

__host__ __device__ inline size_t align16(size_t b) { return (b + 15) / 16 * 16; }
__host__ __device__ inline int32_t pow2_at_least(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// Where a job's arrays live in its scratch (byte offsets), for n pages, G heads.
struct Layout {
  int32_t pages_per_chunk, score_chunks, mass_chunks, candidates, sort_size;
  size_t scores, chunk_max, sums, mass, sort_mass, sort_index, bytes;
};
__host__ __device__ inline Layout layout(int32_t G, int32_t n, int32_t per_page, int32_t max_pages) {
  Layout l{};
  l.pages_per_chunk = kChunkRows / per_page;
  l.score_chunks = (n + l.pages_per_chunk - 1) / l.pages_per_chunk;
  l.mass_chunks = (n + kMassThreads - 1) / kMassThreads;
  const int32_t k = (max_pages > 2 ? max_pages : 2) - 2;
  l.candidates = k < n - 2 ? k : (n > 2 ? n - 2 : 0);
  l.sort_size = pow2_at_least(l.candidates > 0 ? l.candidates : 1);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at = align16(at + bytes);
    return here;
  };
  l.scores = take(sizeof(float) * static_cast<size_t>(G) * n);
  l.chunk_max = take(sizeof(float) * static_cast<size_t>(G) * l.score_chunks);
  l.sums = take(sizeof(double) * static_cast<size_t>(G) * l.mass_chunks);
  l.mass = take(sizeof(double) * static_cast<size_t>(n));
  const bool in_scratch = l.sort_size > kSortShared;
  l.sort_mass = take(in_scratch ? sizeof(double) * l.sort_size : 0);
  l.sort_index = take(in_scratch ? sizeof(int32_t) * l.sort_size : 0);
  l.bytes = at;
  return l;
}

__device__ inline int32_t per_page_of(const SelectParams& p) { return p.page_size / p.logical_page_size; }

// A job that keeps every page (a short context under a fixed budget) skips the pipeline.
__device__ inline bool keeps_every_page(const SelectJob& j) {
  return j.num_pages <= 2 || (j.mass_threshold == 0.0 && j.num_pages <= max(j.max_pages, 2));
}

__device__ inline unsigned char* scratch_of(const SelectParams& p, const SelectJob& j) {
  return p.scratch + static_cast<size_t>(j.scratch) * 16;
}

template <int Warps, class T, class Op>
__device__ T block_reduce(T v, Op op, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int w = 1; w < Warps; ++w) r = op(r, shared[w]);
  __syncthreads();
  return r;
}

// ---- 1. scores ----

// Shared memory of a score block for units of up to `heads` query heads of head_dim D: q, the
// chunk's row scores, and its key min and max rows (stride D + 2: rows start on different banks).
__host__ __device__ constexpr size_t score_smem_bytes(int heads, int D) {
  return sizeof(float) * (static_cast<size_t>(heads) * D + static_cast<size_t>(kChunkRows) * heads) +
         2 * sizeof(__nv_bfloat16) * kChunkRows * static_cast<size_t>(D + 2);
}

__global__ void __launch_bounds__(kScoreThreads) score_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t row_base[kChunkRows];  // where each staged row starts in the pools (elements)
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active || keeps_every_page(j)) return;
  const int D = p.head_dim, G = j.num_heads, per_page = per_page_of(p), stride = D + 2;
  const Layout lay = layout(G, j.num_pages, per_page, j.max_pages);
  float* qs = reinterpret_cast<float*>(smem);                  // [G][D]
  float* row_score = qs + p.max_job_heads * D;                 // [kChunkRows][G]
  __nv_bfloat16* kmin = reinterpret_cast<__nv_bfloat16*>(row_score + kChunkRows * p.max_job_heads);  // [rows][stride]
  __nv_bfloat16* kmax = kmin + kChunkRows * stride;
  unsigned char* base = scratch_of(p, j);
  float* scores = reinterpret_cast<float*>(base + lay.scores);      // [G][n]
  float* chunk_max = reinterpret_cast<float*>(base + lay.chunk_max);  // [G][score_chunks]

  for (int e = threadIdx.x; e < G * D; e += kScoreThreads)
    qs[e] = __bfloat162float(p.q[(static_cast<int64_t>(j.q_row) * p.num_heads + j.head0) * D + e]);

  const int32_t n = j.num_pages, ppc = lay.pages_per_chunk;
  for (int32_t c = blockIdx.y; c < lay.score_chunks; c += gridDim.y) {
    const int32_t page0 = c * ppc, pages = min(ppc, n - page0), rows = pages * per_page;
    for (int r = threadIdx.x; r < rows; r += kScoreThreads)
      row_base[r] = ((int64_t{p.page_indices[j.pages_begin + page0 + r / per_page]} * p.pool_heads + j.pool_index) *
                         per_page + r % per_page) * D;
    __syncthreads();
    // Stage the chunk's rows in 16-byte loads (a row of D channels is contiguous in the pool;
    // D is a multiple of 8), stored as 4-byte words at the padded stride.
    const int vecs = D / 8;
    for (int e = threadIdx.x; e < rows * vecs; e += kScoreThreads) {
      const int r = e / vecs, v = e % vecs;
      const uint4 lo = *reinterpret_cast<const uint4*>(p.key_min + row_base[r] + v * 8);
      const uint4 hi = *reinterpret_cast<const uint4*>(p.key_max + row_base[r] + v * 8);
      uint32_t* dlo = reinterpret_cast<uint32_t*>(kmin + r * stride + v * 8);
      uint32_t* dhi = reinterpret_cast<uint32_t*>(kmax + r * stride + v * 8);
      dlo[0] = lo.x, dlo[1] = lo.y, dlo[2] = lo.z, dlo[3] = lo.w;
      dhi[0] = hi.x, dhi[1] = hi.y, dhi[2] = hi.z, dhi[3] = hi.w;
    }
    __syncthreads();
    // Each (row, head): the Quest bound over the channels in order, as the host sums it. Rows
    // past the sequence's last token (in its last page) hold nothing and do not count.
    for (int e = threadIdx.x; e < rows * G; e += kScoreThreads) {
      const int r = e % rows, h = e / rows;
      const int32_t i = page0 + r / per_page, lp = r % per_page;
      const int32_t tokens_here = min(p.page_size, j.num_tokens - i * p.page_size);
      float s = -INFINITY;
      if (lp * p.logical_page_size < tokens_here) {
        const float* q = qs + h * D;
        const __nv_bfloat16* lo = kmin + r * stride;
        const __nv_bfloat16* hi = kmax + r * stride;
        s = 0.0f;
        for (int ch = 0; ch < D; ++ch)
          s += fmaxf(q[ch] * __bfloat162float(hi[ch]), q[ch] * __bfloat162float(lo[ch]));
      }
      row_score[r * G + h] = s;
    }
    __syncthreads();
    // Pool onto physical pages (max), and each head's max over the chunk.
    for (int e = threadIdx.x; e < pages * G; e += kScoreThreads) {
      const int pi = e % pages, h = e / pages;
      float best = -INFINITY;
      for (int lp = 0; lp < per_page; ++lp) best = fmaxf(best, row_score[(pi * per_page + lp) * G + h]);
      scores[static_cast<int64_t>(h) * n + page0 + pi] = best;
      row_score[(pi * per_page) * G + h] = best;  // the page's first row now holds the pooled score
    }
    __syncthreads();
    if (threadIdx.x < G) {
      const int h = threadIdx.x;
      float best = -INFINITY;
      for (int pi = 0; pi < pages; ++pi) best = fmaxf(best, row_score[(pi * per_page) * G + h]);
      chunk_max[h * lay.score_chunks + c] = best;
    }
    __syncthreads();
  }
}

// Each head's max of scale * score into mx[h], as the host takes it (scale > 0: the max score,
// scaled), and with `sums` its softmax denominator (the chunks' partial sums, in chunk order
// within each lane, then a fixed tree): a warp per head.
__device__ inline void head_stats(const SelectParams& p, const Layout& lay, const unsigned char* base, int G,
                                  double* mx, double* total) {
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const float* chunk_max = reinterpret_cast<const float*>(base + lay.chunk_max);
  const double* sums = reinterpret_cast<const double*>(base + lay.sums);
  for (int h = threadIdx.x / 32; h < G; h += warps) {
    float best = -INFINITY;
    for (int32_t c = lane; c < lay.score_chunks; c += 32) best = fmaxf(best, chunk_max[h * lay.score_chunks + c]);
    for (int o = 16; o > 0; o /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0) mx[h] = static_cast<double>(best) * p.scale;
    if (total) {
      double t = 0.0;
      for (int32_t c = lane; c < lay.mass_chunks; c += 32) t += sums[h * lay.mass_chunks + c];
      for (int o = 16; o > 0; o /= 2) t += __shfl_xor_sync(0xffffffffu, t, o);
      if (lane == 0) total[h] = t;
    }
  }
  __syncthreads();
}

// The block's job as the sums and mass kernels read it, with each head's max (and, given
// `total`, its softmax denominator) in shared memory: false when the job has nothing to do.
struct MassJob {
  int G;
  int32_t n;
  Layout lay;
  unsigned char* base;
  const float* scores;  // [G][n]
  const double* mx;     // [G]
  // exp(scale * s - max) of head h at page i, as the host computes it.
  __device__ double weight(const SelectParams& p, int h, int32_t i) const {
    return exp(static_cast<double>(scores[static_cast<int64_t>(h) * n + i]) * p.scale - mx[h]);
  }
};
__device__ inline bool mass_job(const SelectParams& p, const SelectJob* jobs, double* mx, double* total, MassJob& m) {
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active || keeps_every_page(j)) return false;
  m.G = j.num_heads;
  m.n = j.num_pages;
  m.lay = layout(m.G, m.n, per_page_of(p), j.max_pages);
  m.base = scratch_of(p, j);
  m.scores = reinterpret_cast<const float*>(m.base + m.lay.scores);
  m.mx = mx;
  head_stats(p, m.lay, m.base, m.G, mx, total);
  return true;
}

// ---- 2. softmax denominators, per chunk of pages ----

__global__ void __launch_bounds__(kMassThreads) sums_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  __shared__ double red[kMassThreads / 32];
  __shared__ double mx[kMaxHeads];
  MassJob m;
  if (!mass_job(p, jobs, mx, nullptr, m)) return;
  double* sums = reinterpret_cast<double*>(m.base + m.lay.sums);
  for (int32_t c = blockIdx.y; c < m.lay.mass_chunks; c += gridDim.y) {
    const int32_t i = c * kMassThreads + threadIdx.x;
    for (int h = 0; h < m.G; ++h) {
      const double e = i < m.n ? m.weight(p, h, i) : 0.0;
      const double sum = block_reduce<kMassThreads / 32>(e, [](double a, double b) { return a + b; }, red);
      if (threadIdx.x == 0) sums[h * m.lay.mass_chunks + c] = sum;
    }
  }
}

// ---- 3. the unit's mass estimate per page ----

__global__ void __launch_bounds__(kMassThreads) mass_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  __shared__ double mx[kMaxHeads], total[kMaxHeads];
  MassJob m;
  if (!mass_job(p, jobs, mx, total, m)) return;
  double* mass = reinterpret_cast<double*>(m.base + m.lay.mass);
  for (int32_t c = blockIdx.y; c < m.lay.mass_chunks; c += gridDim.y) {
    const int32_t i = c * kMassThreads + threadIdx.x;
    if (i >= m.n) continue;
    double estimate = 0.0;
    for (int h = 0; h < m.G; ++h) estimate += m.weight(p, h, i) / total[h] / static_cast<double>(m.G);
    mass[i] = estimate;
  }
}

// ---- 4. the pick ----

// Masses are >= 0, so their bit patterns order as they do.
__device__ inline unsigned long long key_of(double m) { return static_cast<unsigned long long>(__double_as_longlong(m)); }

__global__ void __launch_bounds__(kPickThreads) pick_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  __shared__ double sh_mass[kSortShared];
  __shared__ int32_t sh_index[kSortShared];
  __shared__ int32_t hist[256];
  __shared__ int32_t scan[kPickThreads];
  __shared__ unsigned long long prefix_key;
  __shared__ int32_t remaining, above, done;
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active) return;
  const int32_t n = j.num_pages;
  int32_t* out = p.out_pages + j.out;
  if (keeps_every_page(j)) {
    for (int32_t i = threadIdx.x; i < n; i += kPickThreads) out[i] = i;
    if (threadIdx.x == 0) p.out_counts[j.count_index] = n;
    return;
  }
  const Layout lay = layout(j.num_heads, n, per_page_of(p), j.max_pages);
  unsigned char* base = scratch_of(p, j);
  const double* mass = reinterpret_cast<const double*>(base + lay.mass);
  const bool in_scratch = lay.sort_size > kSortShared;
  double* sort_mass = in_scratch ? reinterpret_cast<double*>(base + lay.sort_mass) : sh_mass;
  int32_t* sort_index = in_scratch ? reinterpret_cast<int32_t*>(base + lay.sort_index) : sh_index;
  const int32_t k = lay.candidates, first = 1, last = n - 1;  // candidates: pages 1 .. n - 2

  // The k-th largest mass among the candidates, by the digits of its key (8 bits at a time,
  // most significant first), until the candidates that share the digits so far are exactly the
  // ones still wanted. Then "above" means a larger key prefix, "tie" the same prefix.
  if (threadIdx.x == 0) {
    prefix_key = 0;
    remaining = k;
    done = 0;
  }
  __syncthreads();  // with k == 0 the loop below has no barrier before these are read
  unsigned long long mask = 0;
  for (int shift = 56; k > 0 && shift >= 0; shift -= 8) {  // k == 0 (a budget of two pages): none
    for (int b = threadIdx.x; b < 256; b += kPickThreads) hist[b] = 0;
    __syncthreads();
    const unsigned long long prefix = prefix_key;
    for (int32_t i = first + threadIdx.x; i < last; i += kPickThreads) {
      const unsigned long long key = key_of(mass[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the digit where the count from the top reaches `remaining`: a warp scan
      const int lane = threadIdx.x;
      // Read before the shuffles (a warp-wide barrier): one lane rewrites `remaining` below.
      const int32_t want = remaining;
      int32_t mine = 0;  // bins 255 - 8 lane .. 248 - 8 lane
      for (int e = 0; e < 8; ++e) mine += hist[255 - 8 * lane - e];
      int32_t incl = mine;
      for (int o = 1; o < 32; o *= 2) {
        const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const int32_t excl = incl - mine;
      __syncwarp();  // every lane has read `remaining` (racecheck does not count the shuffles)
      if (excl < want && want <= incl) {  // exactly one lane
        int32_t cum = excl, b = 255 - 8 * lane;
        while (cum + hist[b] < want) cum += hist[b--];
        remaining = want - cum;
        prefix_key = prefix | (static_cast<unsigned long long>(b) << shift);
        done = hist[b] == want - cum;  // every candidate of this digit is wanted
      }
    }
    mask |= 255ull << shift;
    __syncthreads();
    if (done) break;
  }
  const unsigned long long threshold = prefix_key;
  const int32_t ties = remaining;  // of the candidates with the threshold's prefix, the lowest-index ones

  // Compact: every candidate above the threshold, and the first `ties` equal to it (each thread
  // scans a contiguous range, so the ties' order by index comes from a scan over the threads).
  if (threadIdx.x == 0) above = 0;
  const int32_t span = (last - first + kPickThreads - 1) / kPickThreads;
  const int32_t lo = first + threadIdx.x * span, hi = min(last, lo + span);
  int32_t my_ties = 0;
  for (int32_t i = lo; i < hi; ++i) my_ties += (key_of(mass[i]) & mask) == threshold;
  scan[threadIdx.x] = my_ties;
  __syncthreads();
  for (int off = 1; off < kPickThreads; off *= 2) {  // inclusive scan (Hillis-Steele)
    const int32_t v = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
    __syncthreads();
    scan[threadIdx.x] += v;
    __syncthreads();
  }
  int32_t tie_rank = scan[threadIdx.x] - my_ties;
  const int32_t above_count = k - ties;
  for (int32_t i = lo; i < hi; ++i) {
    const unsigned long long key = key_of(mass[i]) & mask;
    int32_t slot = -1;
    if (k > 0 && key > threshold) slot = atomicAdd(&above, 1);
    else if (key == threshold && tie_rank < ties) slot = above_count + tie_rank++;
    if (slot >= 0) {
      sort_mass[slot] = mass[i];
      sort_index[slot] = i;
    }
  }
  for (int32_t s = k + threadIdx.x; s < lay.sort_size; s += kPickThreads) {  // padding sorts last
    sort_mass[s] = -1.0;
    sort_index[s] = INT_MAX;
  }
  __syncthreads();

  // Bitonic sort by (mass descending, index ascending).
  const int32_t m = lay.sort_size;
  for (int32_t size = 2; size <= m; size *= 2) {
    for (int32_t stride = size / 2; stride > 0; stride /= 2) {
      for (int32_t i = threadIdx.x; i < m; i += kPickThreads) {
        const int32_t l = i ^ stride;
        if (l <= i) continue;
        const bool l_first = sort_mass[l] > sort_mass[i] || (sort_mass[l] == sort_mass[i] && sort_index[l] < sort_index[i]);
        const bool ascending = (i & size) == 0;  // ascending: "belongs before" order
        if (ascending ? l_first : !l_first) {
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

  // The host's loop over the sorted candidates: how many it keeps.
  __shared__ int32_t taken;
  if (threadIdx.x == 0) {
    const int32_t max_pages = max(j.max_pages, 2);
    int32_t count = 2;
    double kept = mass[0] + mass[n - 1];
    for (int32_t t = 0; t < k; ++t) {
      if (count >= max_pages) break;
      if (j.mass_threshold > 0.0 && kept >= j.mass_threshold && count >= j.min_pages) break;
      ++count;
      kept += sort_mass[t];
    }
    taken = count - 2;
    out[0] = 0;
    out[count - 1] = n - 1;
    p.out_counts[j.count_index] = count;
  }
  __syncthreads();
  // The kept candidates in ascending order: each goes after the kept ones with lower indices.
  for (int32_t t = threadIdx.x; t < taken; t += kPickThreads) {
    const int32_t idx = sort_index[t];
    int32_t rank = 0;
    for (int32_t u = 0; u < taken; ++u) rank += sort_index[u] < idx;
    out[1 + rank] = idx;
  }
}

// Blocks per job along the chunks: enough for a few waves over the GPU, whatever the batch.
unsigned blocks_per_job(int32_t num_jobs) {
  static const int sms = [] {
    int device = 0, n = 0;
    LSERVE_CUDA_CHECK(cudaGetDevice(&device));
    LSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  }();
  return static_cast<unsigned>(std::clamp((4 * sms + num_jobs - 1) / std::max(num_jobs, 1), 1, 1024));
}

}  // namespace

size_t select_scratch_bytes(int32_t num_heads, int32_t num_pages, int32_t pages_per_logical, int32_t max_pages) {
  return layout(num_heads, num_pages, pages_per_logical, max_pages).bytes;
}

void select_pages(const SelectParams& p, const SelectJob* jobs, int32_t num_jobs, cudaStream_t stream) {
  if (num_jobs == 0) return;
  static const bool attribute_set = [] {  // room for the largest units and head dims
    LSERVE_CUDA_CHECK(cudaFuncSetAttribute(score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(score_smem_bytes(kMaxHeads, kMaxDim))));
    return true;
  }();
  (void)attribute_set;
  const dim3 grid(static_cast<unsigned>(num_jobs), blocks_per_job(num_jobs));
  // Sized for this launch's units, not the largest: more blocks fit on an SM. (Unset: the largest.)
  SelectParams sized = p;
  if (sized.max_job_heads <= 0 || sized.max_job_heads > kMaxHeads) sized.max_job_heads = kMaxHeads;
  score_kernel<<<grid, kScoreThreads, score_smem_bytes(sized.max_job_heads, sized.head_dim), stream>>>(sized, jobs);
  LSERVE_CUDA_CHECK_LAUNCH();
  sums_kernel<<<grid, kMassThreads, 0, stream>>>(p, jobs);
  LSERVE_CUDA_CHECK_LAUNCH();
  mass_kernel<<<grid, kMassThreads, 0, stream>>>(p, jobs);
  LSERVE_CUDA_CHECK_LAUNCH();
  pick_kernel<<<static_cast<unsigned>(num_jobs), kPickThreads, 0, stream>>>(p, jobs);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
