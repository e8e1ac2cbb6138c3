// GPU page selection (see page_select.h) in two launches, each spread over many blocks per job
// (a single sequence's selection must use the whole GPU, not a few SMs):
//   score:  a block stages a chunk of logical pages' key min/max rows in shared memory; each
//           thread sums one (logical page, head) over the channels in order, exactly as the host
//           does; the chunk pools its rows onto physical pages and records, per head, its max
//           and its softmax sum relative to that max (double);
//   mass:   the heads' softmax denominators from those chunk statistics, then per page the
//           unit's estimate, the mean over its heads of exp(scale * s - max) / total; each block
//           sorts its chunk of pages by (mass descending, index ascending) and keeps the first k
//           (k: the budget's candidates). The job's last block to finish (a counter per job)
//           merges those sorted lists by rank, each candidate's place being the count of the
//           candidates before it in every list, and runs the host's loop over the first k.
// Where the lists would not fit that block's shared memory (budgets of more than half a chunk,
// or very long contexts) the last block instead takes the k-th largest mass by a radix select
// over all the pages, compacts the candidates above it and bitonic-sorts them.
// Grids are fixed for a number of jobs and, for the mass kernel, the grid's pages
// (select_grid_pages): a recorded step replays them while contexts grow, and blocks stride over
// the chunks a job has at this length. Inactive jobs (selections reused this step) return at
// once.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <map>
#include <mutex>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/page_select.h"

namespace lserve::cuda {

namespace {

constexpr int kMaxHeads = kSelectMaxHeads, kMaxDim = kSelectMaxHeadDim;
constexpr int kScoreThreads = 256, kChunkRows = 64;  // logical pages a score block stages at once
constexpr int kScoreStages = 2;                      // chunks a score block has in shared memory
constexpr int kMassThreads = 512;                    // pages per chunk of the mass (one a thread)
constexpr int kMergeMaxCandidates = kMassThreads / 2;  // k of the merge path, at most
constexpr int kMaxMassBlocks = 64;                   // mass blocks per job, at most
constexpr int kMergeShared = 2048;  // lists the last block merges in shared memory (chunks x k)
constexpr int kSortShared = 2048;   // candidates the radix path sorts in shared memory; more: scratch
static_assert(kMaxHeads <= kMassThreads / 32, "head_stats gives every head a warp of the mass block at least");
static_assert(kMergeShared <= kSortShared, "the merge's lists live in the radix path's sort arrays");

__host__ __device__ inline size_t align16(size_t b) { return (b + 15) / 16 * 16; }
__host__ __device__ inline int32_t pow2_at_least(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// Where a job's arrays live in its scratch (byte offsets), for n pages, G heads.
struct Layout {
  int32_t pages_per_chunk, score_chunks, mass_chunks, candidates, sort_size;
  bool merge;  // the sorted-lists merge picks (else the radix select)
  size_t scores, chunk_max, chunk_sum, mass, lists_mass, lists_index, sort_mass, sort_index, bytes;
};
__host__ __device__ inline Layout layout(int32_t G, int32_t n, int32_t per_page, int32_t max_pages) {
  Layout l{};
  l.pages_per_chunk = kChunkRows / per_page;
  l.score_chunks = (n + l.pages_per_chunk - 1) / l.pages_per_chunk;
  l.mass_chunks = (n + kMassThreads - 1) / kMassThreads;
  const int32_t k = (max_pages > 2 ? max_pages : 2) - 2;
  l.candidates = k < n - 2 ? k : (n > 2 ? n - 2 : 0);
  l.merge = l.candidates <= kMergeMaxCandidates &&
            static_cast<int64_t>(l.mass_chunks) * l.candidates <= kMergeShared;
  l.sort_size = pow2_at_least(l.candidates > 0 ? l.candidates : 1);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at = align16(at + bytes);
    return here;
  };
  l.scores = take(sizeof(float) * static_cast<size_t>(G) * n);
  l.chunk_max = take(sizeof(float) * static_cast<size_t>(G) * l.score_chunks);
  l.chunk_sum = take(sizeof(double) * static_cast<size_t>(G) * l.score_chunks);
  l.mass = take(sizeof(double) * static_cast<size_t>(n));
  const size_t listed = l.merge ? static_cast<size_t>(l.mass_chunks) * l.candidates : 0;
  l.lists_mass = take(sizeof(double) * listed);
  l.lists_index = take(sizeof(int32_t) * listed);
  const bool in_scratch = !l.merge && l.sort_size > kSortShared;
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

// Masses are >= 0, so their bit patterns order as they do.
__device__ inline unsigned long long key_of(double m) { return static_cast<unsigned long long>(__double_as_longlong(m)); }

// The host's order of candidates: larger mass first, then lower index. Compared by bit pattern,
// which for masses (>= 0) is their numeric order, and which stays a total order if a mass is
// NaN (an overflowing score): the sorts and the merge then still place every candidate once.
__device__ inline bool before(double ma, int32_t ia, double mb, int32_t ib) {
  const unsigned long long a = key_of(ma), b = key_of(mb);
  return a > b || (a == b && ia < ib);
}
// What pads a sort or a chunk list: after every page (key 0 is the mass +0, index the largest).
constexpr double kPadMass = 0.0;
constexpr int32_t kPadIndex = INT_MAX;

// ---- 1. scores ----

// Shared memory of a score block for units of up to `heads` query heads of head_dim D: q's
// positive and negative parts, the chunk's row scores, and two stages of key min and max rows
// (stride D + 8: 16-byte aligned rows, each starting one 16-byte bank group after the previous):
// a block stages its next chunk while it scores this one.
__host__ __device__ constexpr size_t score_smem_bytes(int heads, int D) {
  return sizeof(float) * (2 * static_cast<size_t>(heads) * D + static_cast<size_t>(kChunkRows) * heads) +
         2 * kScoreStages * sizeof(__nv_bfloat16) * kChunkRows * static_cast<size_t>(D + 8);
}

// The two bf16 of a 32-bit word as floats (a bf16 is a float's upper half).
__device__ inline float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ inline float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// Stages chunk c's key min and max rows into one stage (asynchronous copies, one commit
// group): where each row starts in the pools, published to the block by the barrier, then its
// 16-byte pieces (a row of D channels is contiguous; D is a multiple of 8). The offsets are
// rewritten by the next call, so a barrier must separate this call's copy loop (which reads
// them) from the next call: the loop's barriers do, and the prologue has its own.
__device__ inline void stage_chunk(const SelectParams& p, const SelectJob& j, int32_t c, int32_t ppc, int per_page,
                                   int64_t* row_base, __nv_bfloat16* kmin, __nv_bfloat16* kmax) {
  const int D = p.head_dim, stride = D + 8, vecs = D / 8;
  const int32_t page0 = c * ppc, rows = min(ppc, j.num_pages - page0) * per_page;
  for (int r = threadIdx.x; r < rows; r += kScoreThreads)
    row_base[r] = ((int64_t{p.page_indices[j.pages_begin + page0 + r / per_page]} * p.pool_heads + j.pool_index) *
                       per_page + r % per_page) * D;
  __syncthreads();
  for (int e = threadIdx.x; e < rows * vecs; e += kScoreThreads) {
    const int r = e / vecs, v = e % vecs;
    tile::cp_async_16(kmin + r * stride + v * 8, p.key_min + row_base[r] + v * 8, true);
    tile::cp_async_16(kmax + r * stride + v * 8, p.key_max + row_base[r] + v * 8, true);
  }
  tile::cp_async_commit();
}

// No __launch_bounds__: with it ptxas holds the kernel to 64 registers and spills (28 bytes);
// without, 70 registers, no spill, and the two stages' shared memory allows 3 blocks an SM anyway.
__global__ void score_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t row_base[kChunkRows];  // where each staged row starts in the pools (elements)
  allow_next_kernel();
  wait_for_previous_kernels();
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active || keeps_every_page(j)) return;
  const int D = p.head_dim, G = j.num_heads, per_page = per_page_of(p), stride = D + 8;
  const Layout lay = layout(G, j.num_pages, per_page, j.max_pages);
  float* q_pos = reinterpret_cast<float*>(smem);               // [G][D]: max(q, 0)
  float* q_neg = q_pos + p.max_job_heads * D;                  // [G][D]: min(q, 0)
  float* row_score = q_neg + p.max_job_heads * D;              // [kChunkRows][G]
  // [stage][rows][stride] each
  __nv_bfloat16* kmin_stages = reinterpret_cast<__nv_bfloat16*>(row_score + kChunkRows * p.max_job_heads);
  __nv_bfloat16* kmax_stages = kmin_stages + kScoreStages * kChunkRows * stride;
  unsigned char* base = scratch_of(p, j);
  float* scores = reinterpret_cast<float*>(base + lay.scores);        // [G][n]
  float* chunk_max = reinterpret_cast<float*>(base + lay.chunk_max);  // [G][score_chunks]
  double* chunk_sum = reinterpret_cast<double*>(base + lay.chunk_sum);  // [G][score_chunks]

  for (int e = threadIdx.x; e < G * D; e += kScoreThreads) {
    const float q = __bfloat162float(p.q[(static_cast<int64_t>(j.q_row) * p.num_heads + j.head0) * D + e]);
    q_pos[e] = fmaxf(q, 0.0f);
    q_neg[e] = fminf(q, 0.0f);
  }

  const int32_t n = j.num_pages, ppc = lay.pages_per_chunk;
  auto stage_of = [&](int k) { return k * kChunkRows * stride; };
  if (static_cast<int32_t>(blockIdx.y) < lay.score_chunks)
    stage_chunk(p, j, blockIdx.y, ppc, per_page, row_base, kmin_stages, kmax_stages);
  __syncthreads();  // the first chunk's copies have read row_base before the loop stages the next
  int k = 0;  // the stage of chunk c
  for (int32_t c = blockIdx.y; c < lay.score_chunks; c += gridDim.y, k ^= 1) {
    const int32_t page0 = c * ppc, pages = min(ppc, n - page0), rows = pages * per_page;
    // The next chunk into the other stage (its last reader finished at the previous iteration's
    // final barrier), then wait for this one's copies only.
    if (c + static_cast<int32_t>(gridDim.y) < lay.score_chunks)
      stage_chunk(p, j, c + gridDim.y, ppc, per_page, row_base, kmin_stages + stage_of(k ^ 1),
                  kmax_stages + stage_of(k ^ 1));
    else
      tile::cp_async_commit();  // an empty group: the wait below counts one group per chunk
    tile::cp_async_wait<1>();
    __syncthreads();
    const __nv_bfloat16* kmin = kmin_stages + stage_of(k);
    const __nv_bfloat16* kmax = kmax_stages + stage_of(k);
    const int vecs = D / 8;
    // Each (row, head): the Quest bound over the channels in order, as the host sums it, s +=
    // max(q kmax, q kmin). Here s = fma(q_neg, kmin, fma(q_pos, kmax, s)): the same sum bit for
    // bit, since one of the two terms is zero and the other is the larger product (exact in
    // f32: a product of two bf16), and a fused add of an exact product rounds as the host's
    // add does. (For finite keys and products above f32's subnormals, which model keys are;
    // an infinite key summary would make 0 * inf a NaN where the host takes the other product.)
    // Rows past the sequence's last token (in its last page) hold nothing and do not count.
    for (int e = threadIdx.x; e < rows * G; e += kScoreThreads) {
      const int r = e % rows, h = e / rows;
      const int32_t i = page0 + r / per_page, lp = r % per_page;
      const int32_t tokens_here = min(p.page_size, j.num_tokens - i * p.page_size);
      float s = -INFINITY;
      if (lp * p.logical_page_size < tokens_here) {
        const float4* qp = reinterpret_cast<const float4*>(q_pos + h * D);
        const float4* qn = reinterpret_cast<const float4*>(q_neg + h * D);
        const uint4* lo = reinterpret_cast<const uint4*>(kmin + r * stride);
        const uint4* hi = reinterpret_cast<const uint4*>(kmax + r * stride);
        s = 0.0f;
        for (int v = 0; v < vecs; ++v) {
          const uint4 l = lo[v], u = hi[v];
          const float4 p0 = qp[2 * v], p1 = qp[2 * v + 1], n0 = qn[2 * v], n1 = qn[2 * v + 1];
          s = fmaf(n0.x, bf16_lo(l.x), fmaf(p0.x, bf16_lo(u.x), s));
          s = fmaf(n0.y, bf16_hi(l.x), fmaf(p0.y, bf16_hi(u.x), s));
          s = fmaf(n0.z, bf16_lo(l.y), fmaf(p0.z, bf16_lo(u.y), s));
          s = fmaf(n0.w, bf16_hi(l.y), fmaf(p0.w, bf16_hi(u.y), s));
          s = fmaf(n1.x, bf16_lo(l.z), fmaf(p1.x, bf16_lo(u.z), s));
          s = fmaf(n1.y, bf16_hi(l.z), fmaf(p1.y, bf16_hi(u.z), s));
          s = fmaf(n1.z, bf16_lo(l.w), fmaf(p1.z, bf16_lo(u.w), s));
          s = fmaf(n1.w, bf16_hi(l.w), fmaf(p1.w, bf16_hi(u.w), s));
        }
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
    // Per head, a warp: the chunk's max and its softmax sum relative to it (the mass kernel
    // rescales each chunk's sum to the head's max), the lanes taking the pages in turn and
    // summing by a fixed tree. (One thread per head walking the pages serialized a double exp
    // per page.) A page's first row scores >= its first token.
    for (int h = threadIdx.x / 32; h < G; h += kScoreThreads / 32) {
      const int lane = threadIdx.x % 32;
      float best = -INFINITY;
      for (int pi = lane; pi < pages; pi += 32) best = fmaxf(best, row_score[(pi * per_page) * G + h]);
      for (int o = 16; o > 0; o /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
      const double top = static_cast<double>(best) * p.scale;
      double sum = 0.0;
      for (int pi = lane; pi < pages; pi += 32)
        sum += exp(static_cast<double>(row_score[(pi * per_page) * G + h]) * p.scale - top);
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        chunk_max[h * lay.score_chunks + c] = best;
        chunk_sum[h * lay.score_chunks + c] = sum;
      }
    }
    __syncthreads();
  }
}

// ---- 2. masses and the pick ----

// Shared memory of a mass block: its chunk's sort, the merge's lists (or the radix path's
// candidates), and the radix select's histogram and scan.
struct MassShared {
  double mx[kMaxHeads], total[kMaxHeads];
  float warp_max[kMassThreads / 32];  // head_stats' partial maxima and sums, a warp each
  double warp_sum[kMassThreads / 32];
  double chunk_mass[kMassThreads];  // exchange for the sort's long strides; then the merged top k
  int32_t chunk_index[kMassThreads];
  double list_mass[kSortShared];
  int32_t list_index[kSortShared];
  int32_t hist[256];
  int32_t scan[kMassThreads];
  unsigned long long prefix_key;
  int32_t remaining, above, done, taken, last;
};

// Each head's max of scale * score into mx[h], as the host takes it (scale > 0: the max score,
// scaled), and its softmax denominator: every chunk's sum rescaled from its own max (in chunk
// order within each lane, then a fixed tree over the lanes and the head's warps). The block's
// warps are shared out among the heads (one warp per head left most of the block waiting on a
// chain of double exps, a quarter of the kernel's time in ncu).
__device__ inline void head_stats(const SelectParams& p, const Layout& lay, const unsigned char* base, int G,
                                  double* mx, double* total, float* warp_max, double* warp_sum) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int per_head = max(1, warps / G), h = warp / per_head, part = warp % per_head;
  const bool working = h < G;
  const float* cm = reinterpret_cast<const float*>(base + lay.chunk_max) + (working ? h : 0) * lay.score_chunks;
  const double* cs = reinterpret_cast<const double*>(base + lay.chunk_sum) + (working ? h : 0) * lay.score_chunks;
  const int32_t first = part * 32 + lane, stride = per_head * 32;
  float best = -INFINITY;
  if (working)
    for (int32_t c = first; c < lay.score_chunks; c += stride) best = fmaxf(best, cm[c]);
  for (int o = 16; o > 0; o /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (lane == 0) warp_max[warp] = best;
  __syncthreads();
  if (working) {
    best = -INFINITY;
    for (int w = 0; w < per_head; ++w) best = fmaxf(best, warp_max[h * per_head + w]);
  }
  const double top = static_cast<double>(best) * p.scale;
  double t = 0.0;
  if (working)
    for (int32_t c = first; c < lay.score_chunks; c += stride) t += cs[c] * exp(static_cast<double>(cm[c]) * p.scale - top);
  for (int o = 16; o > 0; o /= 2) t += __shfl_xor_sync(0xffffffffu, t, o);
  if (lane == 0) warp_sum[warp] = t;
  __syncthreads();
  if (working && part == 0 && lane == 0) {
    double sum = 0.0;
    for (int w = 0; w < per_head; ++w) sum += warp_sum[h * per_head + w];
    mx[h] = top, total[h] = sum;
  }
  __syncthreads();
}

// Sorts the block's kMassThreads (mass, index) pairs, one a thread, by the host's order (a
// bitonic network: strides under a warp by shuffles, longer ones through shared memory).
__device__ inline void sort_block(double& m, int32_t& idx, double* xm, int32_t* xi) {
  const int tid = threadIdx.x;
  for (int size = 2; size <= kMassThreads; size *= 2) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      double pm;
      int32_t pi;
      if (stride >= 32) {
        xm[tid] = m, xi[tid] = idx;
        __syncthreads();
        pm = xm[tid ^ stride], pi = xi[tid ^ stride];
        __syncthreads();
      } else {
        pm = __shfl_xor_sync(0xffffffffu, m, stride);
        pi = __shfl_xor_sync(0xffffffffu, idx, stride);
      }
      // In an ascending run the lower position keeps whichever comes first; descending, last.
      const bool lower = (tid & stride) == 0, ascending = (tid & size) == 0;
      const bool partner_first = before(pm, pi, m, idx);
      if (lower == ascending ? partner_first : !partner_first) m = pm, idx = pi;
    }
  }
}

// The merge path's last step: the job's chunk lists (each sorted, k long, padded with
// sentinels) into the first k candidates in order, in sh.chunk_mass / chunk_index.
__device__ inline void merge_lists(const Layout& lay, const unsigned char* base, MassShared& sh) {
  const int32_t k = lay.candidates, C = lay.mass_chunks, total = C * k;
  const double* lists_mass = reinterpret_cast<const double*>(base + lay.lists_mass);
  const int32_t* lists_index = reinterpret_cast<const int32_t*>(base + lay.lists_index);
  for (int32_t e = threadIdx.x; e < total; e += blockDim.x) {  // other blocks wrote these: from L2
    sh.list_mass[e] = __ldcg(lists_mass + e);
    sh.list_index[e] = __ldcg(lists_index + e);
  }
  __syncthreads();
  for (int32_t e = threadIdx.x; e < total; e += blockDim.x) {
    const int32_t own = e / k, idx = sh.list_index[e];
    if (idx == kPadIndex) continue;  // padding
    const double m = sh.list_mass[e];
    int32_t rank = e % k;  // the candidates before it in its own list
    for (int32_t c = 0; c < C && rank < k; ++c) {
      if (c == own) continue;
      const double* lm = sh.list_mass + c * k;
      const int32_t* li = sh.list_index + c * k;
      int32_t lo = 0, hi = k;  // how many of list c come first
      while (lo < hi) {
        const int32_t mid = (lo + hi) / 2;
        if (before(lm[mid], li[mid], m, idx)) lo = mid + 1;
        else hi = mid;
      }
      rank += lo;
    }
    if (rank < k) sh.chunk_mass[rank] = m, sh.chunk_index[rank] = idx;
  }
  __syncthreads();
}


// The radix path: the k-th largest mass among the candidates (pages 1 .. n - 2), the ones above
// it and the lowest-index ties compacted, then bitonic-sorted by the host's order into
// sort_mass / sort_index (shared memory, or the job's scratch for large budgets).
__device__ void radix_pick(const Layout& lay, int32_t n, const double* mass, double* sort_mass, int32_t* sort_index,
                           MassShared& sh) {
  constexpr int kThreads = kMassThreads;
  const int32_t k = lay.candidates, first = 1, last = n - 1;
  // By the digits of the key (8 bits at a time, most significant first), until the candidates
  // that share the digits so far are exactly the ones still wanted. Then "above" means a larger
  // key prefix, "tie" the same prefix.
  if (threadIdx.x == 0) {
    sh.prefix_key = 0;
    sh.remaining = k;
    sh.done = 0;
  }
  __syncthreads();  // with k == 0 the loop below has no barrier before these are read
  unsigned long long mask = 0;
  for (int shift = 56; k > 0 && shift >= 0; shift -= 8) {  // k == 0 (a budget of two pages): none
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    const unsigned long long prefix = sh.prefix_key;
    for (int32_t i = first + threadIdx.x; i < last; i += kThreads) {
      const unsigned long long key = key_of(__ldcg(mass + i));
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the digit where the count from the top reaches `remaining`: a warp scan
      const int lane = threadIdx.x;
      // Read before the shuffles (a warp-wide barrier): one lane rewrites `remaining` below.
      const int32_t want = sh.remaining;
      int32_t mine = 0;  // bins 255 - 8 lane .. 248 - 8 lane
      for (int e = 0; e < 8; ++e) mine += sh.hist[255 - 8 * lane - e];
      int32_t incl = mine;
      for (int o = 1; o < 32; o *= 2) {
        const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const int32_t excl = incl - mine;
      __syncwarp();  // every lane has read `remaining` (racecheck does not count the shuffles)
      if (excl < want && want <= incl) {  // exactly one lane
        int32_t cum = excl, b = 255 - 8 * lane;
        while (cum + sh.hist[b] < want) cum += sh.hist[b--];
        sh.remaining = want - cum;
        sh.prefix_key = prefix | (static_cast<unsigned long long>(b) << shift);
        sh.done = sh.hist[b] == want - cum;  // every candidate of this digit is wanted
      }
    }
    mask |= 255ull << shift;
    __syncthreads();
    if (sh.done) break;
  }
  const unsigned long long threshold = sh.prefix_key;
  const int32_t ties = sh.remaining;  // of the candidates with the threshold's prefix, the lowest-index ones

  // Compact: every candidate above the threshold, and the first `ties` equal to it (each thread
  // scans a contiguous range, so the ties' order by index comes from a scan over the threads).
  if (threadIdx.x == 0) sh.above = 0;
  const int32_t span = (last - first + kThreads - 1) / kThreads;
  const int32_t lo = first + threadIdx.x * span, hi = min(last, lo + span);
  int32_t my_ties = 0;
  for (int32_t i = lo; i < hi; ++i) my_ties += (key_of(__ldcg(mass + i)) & mask) == threshold;
  sh.scan[threadIdx.x] = my_ties;
  __syncthreads();
  for (int off = 1; off < kThreads; off *= 2) {  // inclusive scan (Hillis-Steele)
    const int32_t v = threadIdx.x >= off ? sh.scan[threadIdx.x - off] : 0;
    __syncthreads();
    sh.scan[threadIdx.x] += v;
    __syncthreads();
  }
  int32_t tie_rank = sh.scan[threadIdx.x] - my_ties;
  const int32_t above_count = k - ties;
  for (int32_t i = lo; i < hi; ++i) {
    const double m = __ldcg(mass + i);
    const unsigned long long key = key_of(m) & mask;
    int32_t slot = -1;
    if (k > 0 && key > threshold) slot = atomicAdd(&sh.above, 1);
    else if (key == threshold && tie_rank < ties) slot = above_count + tie_rank++;
    if (slot >= 0) {
      sort_mass[slot] = m;
      sort_index[slot] = i;
    }
  }
  for (int32_t s = k + threadIdx.x; s < lay.sort_size; s += kThreads) {  // padding sorts last
    sort_mass[s] = kPadMass;
    sort_index[s] = kPadIndex;
  }
  __syncthreads();

  const int32_t m = lay.sort_size;
  for (int32_t size = 2; size <= m; size *= 2) {
    for (int32_t stride = size / 2; stride > 0; stride /= 2) {
      for (int32_t i = threadIdx.x; i < m; i += kThreads) {
        const int32_t l = i ^ stride;
        if (l <= i) continue;
        const bool l_first = before(sort_mass[l], sort_index[l], sort_mass[i], sort_index[i]);
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
}

// One block an SM at least, so up to 128 registers: with __launch_bounds__(kMassThreads) alone
// ptxas held the kernel to 64 and spilled 104 bytes; it takes 88 with none. (That is one block
// of 512 threads an SM rather than two: batch 8's 16 blocks a job then take more waves.)
__global__ void __launch_bounds__(kMassThreads, 1) mass_kernel(const SelectParams p, const SelectJob* __restrict__ jobs) {
  __shared__ MassShared sh;
  allow_next_kernel();
  wait_for_previous_kernels();
  const SelectJob j = jobs[blockIdx.x];
  if (!j.active) return;
  const int32_t n = j.num_pages;
  int32_t* out = p.out_pages + j.out;
  if (keeps_every_page(j)) {
    if (blockIdx.y != 0) return;
    for (int32_t i = threadIdx.x; i < n; i += kMassThreads) out[i] = i;
    if (threadIdx.x == 0) p.out_counts[j.count_index] = n;
    return;
  }
  const int G = j.num_heads;
  const Layout lay = layout(G, n, per_page_of(p), j.max_pages);
  unsigned char* base = scratch_of(p, j);
  const float* scores = reinterpret_cast<const float*>(base + lay.scores);
  double* mass = reinterpret_cast<double*>(base + lay.mass);
  double* lists_mass = reinterpret_cast<double*>(base + lay.lists_mass);
  int32_t* lists_index = reinterpret_cast<int32_t*>(base + lay.lists_index);
  const int32_t k = lay.candidates;
  head_stats(p, lay, base, G, sh.mx, sh.total, sh.warp_max, sh.warp_sum);

  for (int32_t c = blockIdx.y; c < lay.mass_chunks; c += gridDim.y) {
    const int32_t i = c * kMassThreads + threadIdx.x;
    double estimate = kPadMass;  // past the last page (not a candidate: padded below)
    if (i < n) {
      estimate = 0.0;  // exp(scale * s - max) / total per head, as the host computes it
      for (int h = 0; h < G; ++h)
        estimate += exp(static_cast<double>(scores[static_cast<int64_t>(h) * n + i]) * p.scale - sh.mx[h]) /
                    sh.total[h] / static_cast<double>(G);
      mass[i] = estimate;
    }
    if (lay.merge) {  // the chunk's first k candidates (the first and last page are no candidates)
      const bool candidate = i >= 1 && i < n - 1;
      double m = candidate ? estimate : kPadMass;
      int32_t idx = candidate ? i : kPadIndex;
      sort_block(m, idx, sh.chunk_mass, sh.chunk_index);
      if (threadIdx.x < k) {
        lists_mass[static_cast<int64_t>(c) * k + threadIdx.x] = m;
        lists_index[static_cast<int64_t>(c) * k + threadIdx.x] = idx;
      }
    }
  }

  // The job's last block picks: every block's writes are fenced before it counts in.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) sh.last = atomicInc(p.arrivals + blockIdx.x, gridDim.y - 1) == gridDim.y - 1;
  __syncthreads();
  if (!sh.last) return;
  __threadfence();

  const double* sorted_mass;
  const int32_t* sorted_index;
  if (lay.merge) {
    merge_lists(lay, base, sh);
    sorted_mass = sh.chunk_mass;
    sorted_index = sh.chunk_index;
  } else {
    const bool in_scratch = lay.sort_size > kSortShared;
    double* sort_mass = in_scratch ? reinterpret_cast<double*>(base + lay.sort_mass) : sh.list_mass;
    int32_t* sort_index = in_scratch ? reinterpret_cast<int32_t*>(base + lay.sort_index) : sh.list_index;
    radix_pick(lay, n, mass, sort_mass, sort_index, sh);
    sorted_mass = sort_mass;
    sorted_index = sort_index;
  }

  // The host's loop over the sorted candidates: how many it keeps (a fixed budget: all k).
  if (threadIdx.x == 0) {
    const int32_t max_pages = max(j.max_pages, 2);
    int32_t count = min(max_pages, 2 + k);
    if (j.mass_threshold > 0.0) {
      count = 2;
      double kept = __ldcg(mass) + __ldcg(mass + n - 1);
      for (int32_t t = 0; t < k; ++t) {
        if (count >= max_pages) break;
        if (kept >= j.mass_threshold && count >= j.min_pages) break;
        ++count;
        kept += sorted_mass[t];
      }
    }
    sh.taken = count - 2;
    out[0] = 0;
    out[count - 1] = n - 1;
    p.out_counts[j.count_index] = count;
  }
  __syncthreads();
  // The kept candidates in ascending order: each goes after the kept ones with lower indices.
  const int32_t taken = sh.taken;
  for (int32_t t = threadIdx.x; t < taken; t += kMassThreads) {
    const int32_t idx = sorted_index[t];
    int32_t rank = 0;
    for (int32_t u = 0; u < taken; ++u) rank += sorted_index[u] < idx;
    out[1 + rank] = idx;
  }
}

// Score blocks per job along the chunks: the blocks that fit on the GPU at once (each walks its
// chunks with the next one staging), shared among the jobs, whatever the batch.
unsigned blocks_per_job(int32_t num_jobs, size_t smem) {
  static const int sms = [] {
    int device = 0, n = 0;
    LSERVE_CUDA_CHECK(cudaGetDevice(&device));
    LSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  }();
  // Blocks an SM for this shared memory, asked once per size (launches happen every layer).
  static std::mutex mutex;
  static std::map<size_t, int> resident_for;
  int resident = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto [it, fresh] = resident_for.try_emplace(smem, 0);
    if (fresh)
      LSERVE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&it->second, score_kernel, kScoreThreads, smem));
    resident = it->second;
  }
  const int blocks = std::max(resident, 1) * sms;
  // Rounded down: a block more per job than fits would run in a second, nearly empty wave (the
  // chunk loop strides, so fewer blocks only take more chunks each).
  return static_cast<unsigned>(std::clamp(blocks / std::max(num_jobs, 1), 1, 1024));
}

}  // namespace

int32_t select_grid_pages(int32_t max_pages) {
  const int32_t chunks = (std::max(max_pages, 1) + kMassThreads - 1) / kMassThreads;
  return std::min(pow2_at_least(chunks), kMaxMassBlocks) * kMassThreads;
}

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
  // Sized for this launch's units, not the largest: more blocks fit on an SM. (Unset: the largest.)
  SelectParams sized = p;
  if (sized.max_job_heads <= 0 || sized.max_job_heads > kMaxHeads) sized.max_job_heads = kMaxHeads;
  const size_t score_smem = score_smem_bytes(sized.max_job_heads, sized.head_dim);
  const dim3 score_grid(static_cast<unsigned>(num_jobs), blocks_per_job(num_jobs, score_smem));
  launch_dependent(score_kernel, score_grid, dim3(kScoreThreads), score_smem, stream, sized, jobs);
  // A mass block per chunk of kMassThreads pages of the longest job, up to kMaxMassBlocks (a 1M
  // context at 64-token pages is 32 chunks): each block sorts one chunk, and the job's last
  // block waits for few idle ones.
  const int32_t grid_pages = p.grid_pages > 0 ? p.grid_pages : select_grid_pages(8192);
  const dim3 mass_grid(static_cast<unsigned>(num_jobs), static_cast<unsigned>(std::clamp(grid_pages / kMassThreads, 1, kMaxMassBlocks)));
  launch_dependent(mass_kernel, mass_grid, dim3(kMassThreads), 0, stream, p, jobs);
}

}  // namespace lserve::cuda
