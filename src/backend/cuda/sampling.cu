// Sampling kernel (see sampling.h): one block of 1024 threads per row of logits.
//
// Passes over the row (each reads the vocabulary once, from L2 after the first):
//   1. argmax (greedy rows and top-k = 1 stop here);
//   2. top-k: radix selection of the k-th largest probability, 8 bits of its float at a time;
//   3. the fixed-point mass Z of the top-k survivors;
//   4. top-p: radix selection again, weighted by mass, of the value where the most-probable
//      survivors first reach top_p * Z (min-p is a plain threshold: p >= min_p * p_max is
//      e >= min_p, e being the probability relative to the best token);
//   5. the draw: each thread sums the kept mass of a contiguous slice, a block scan places the
//      uniform in one slice, and that thread walks its slice in id order.
// Probabilities relative to the best token, e = exp((l - max) / t), are recomputed in each pass
// rather than stored: a 128K vocabulary is 512 KB, more than shared memory, and recomputing is
// cheaper than a round trip through global memory.
#include <curand_kernel.h>

#include <cfloat>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling.h"

namespace lserve::cuda {

namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32, kBins = 256;

__device__ inline float clean(float l) { return l != l ? -INFINITY : l; }  // NaN counts as -inf

struct Row {
  const float* logits;
  int64_t vocab;
  float max, inv_t;
  __device__ float rel(int64_t i) const { return expf((clean(logits[i]) - max) * inv_t); }
};

__device__ inline uint64_t fixed_mass(float e) { return static_cast<uint64_t>(ldexpf(e, kSamplingMassBits)); }

struct Shared {
  unsigned long long hist[kBins];
  unsigned long long u64[kWarps];
  float f32[kWarps];
  int64_t i64[kWarps];
  uint32_t chosen;
  unsigned long long left;
};

__device__ inline uint64_t block_sum(uint64_t v, Shared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) sh.u64[warp] = v;
  __syncthreads();
  uint64_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += sh.u64[w];
  __syncthreads();
  return total;
}

// Mass of the entries whose e has float bits >= floor_bits.
__device__ inline uint64_t mass_above(const Row& r, uint32_t floor_bits, Shared& sh) {
  uint64_t m = 0;
  for (int64_t i = threadIdx.x; i < r.vocab; i += kThreads) {
    const float e = r.rel(i);
    if (__float_as_uint(e) >= floor_bits) m += fixed_mass(e);
  }
  return block_sum(m, sh);
}

// The float bits of the largest value v such that the entries with e >= v (among those with e
// >= floor_bits) weigh at least `target`: by count (kMass false) or by fixed-point mass. e >= 0,
// so its float bits order as unsigned integers; 8 bits are settled per pass, most significant
// first, by a histogram of the entries that match the bits settled so far.
template <bool kMass>
__device__ uint32_t radix_select(const Row& r, uint32_t floor_bits, uint64_t target, Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  uint64_t remaining = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kBins; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < r.vocab; i += kThreads) {
      const float e = r.rel(i);
      const uint32_t x = __float_as_uint(e);
      if (x < floor_bits || (x & mask) != prefix) continue;
      atomicAdd(&sh.hist[(x >> shift) & (kBins - 1)], kMass ? static_cast<unsigned long long>(fixed_mass(e)) : 1ull);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t above = 0;
      int b = kBins - 1;
      for (; b > 0; --b) {
        if (above + sh.hist[b] >= remaining) break;
        above += sh.hist[b];
      }
      sh.chosen = static_cast<uint32_t>(b);
      sh.left = remaining - above;
    }
    __syncthreads();
    prefix |= sh.chosen << shift;
    mask |= static_cast<uint32_t>(kBins - 1) << shift;
    remaining = sh.left;
    __syncthreads();
  }
  return prefix;
}

__device__ inline double uniform_of(const SamplingRow& p) {
  curandStatePhilox4_32_10_t state;
  curand_init(p.seed, p.counter, 0, &state);
  return curand_uniform_double(&state);  // (0, 1]
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits, int64_t vocab,
                                                          const SamplingRow* __restrict__ params,
                                                          int32_t* __restrict__ tokens) {
  __shared__ Shared sh;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const SamplingRow p = params[blockIdx.x];
  const float* row_logits = logits + static_cast<int64_t>(blockIdx.x) * vocab;

  // 1. argmax, lowest id on ties.
  float best = -INFINITY;
  int64_t best_i = vocab;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float l = clean(row_logits[i]);
    if (l > best) best = l, best_i = i;  // ids rise within a thread: > keeps the lowest
  }
  for (int o = 16; o > 0; o /= 2) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  if (lane == 0) sh.f32[warp] = best, sh.i64[warp] = best_i;
  __syncthreads();
  best = sh.f32[0], best_i = sh.i64[0];
  for (int w = 1; w < kWarps; ++w)
    if (sh.f32[w] > best || (sh.f32[w] == best && sh.i64[w] < best_i)) best = sh.f32[w], best_i = sh.i64[w];
  __syncthreads();
  if (best == -INFINITY) {  // nothing to choose from
    if (threadIdx.x == 0) tokens[blockIdx.x] = 0;
    return;
  }
  // Greedy rows, and rows a draw cannot weigh: an infinite best logit or a temperature so small
  // that 1 / t overflows make every relative probability 0 or NaN; the best token it is.
  const float inv_t = 1.0f / p.temperature;
  if (!(p.temperature > 0.0f) || p.top_k == 1 || best == INFINITY || !isfinite(inv_t)) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = static_cast<int32_t>(best_i);
    return;
  }
  const Row r{row_logits, vocab, best, inv_t};

  // 2-4. The threshold on e: top-k, then min-p and top-p over the top-k survivors' mass.
  uint32_t floor_bits = 0;
  if (p.top_k > 0 && p.top_k < vocab) floor_bits = radix_select<false>(r, 0, static_cast<uint64_t>(p.top_k), sh);
  const uint64_t z = mass_above(r, floor_bits, sh);
  if (p.min_p > 0.0f) floor_bits = max(floor_bits, __float_as_uint(fminf(p.min_p, 1.0f)));
  if (p.top_p < 1.0f) {
    uint64_t target = static_cast<uint64_t>(static_cast<double>(p.top_p) * static_cast<double>(z));
    if (target == 0) target = 1;
    const uint64_t survivors = p.min_p > 0.0f ? mass_above(r, floor_bits, sh) : z;
    if (survivors >= target) floor_bits = max(floor_bits, radix_select<true>(r, floor_bits, target, sh));
  }

  // 5. The draw over the kept entries, in id order.
  const int64_t slice = (vocab + kThreads - 1) / kThreads;
  const int64_t begin = min(vocab, threadIdx.x * slice), end = min(vocab, begin + slice);
  uint64_t mine = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float e = r.rel(i);
    if (__float_as_uint(e) >= floor_bits) mine += fixed_mass(e);
  }
  // Exclusive scan of the slices' masses: within the warp, then over the warps' totals.
  uint64_t incl = mine;
  for (int o = 1; o < 32; o *= 2) {
    const uint64_t v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) sh.u64[warp] = incl;
  __syncthreads();
  uint64_t before = 0, total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += sh.u64[w];
    total += sh.u64[w];
  }
  const uint64_t start = before + incl - mine;
  if (total == 0) {  // cannot happen (the best entry weighs 2^40), but never leave the row unwritten
    if (threadIdx.x == 0) tokens[blockIdx.x] = static_cast<int32_t>(best_i);
    return;
  }
  uint64_t u = static_cast<uint64_t>(uniform_of(p) * static_cast<double>(total));
  if (u >= total) u = total - 1;  // the best entry (e = 1) is always kept
  if (mine > 0 && u >= start && u < start + mine) {
    uint64_t acc = start;
    int64_t pick = end - 1;
    for (int64_t i = begin; i < end; ++i) {
      const float e = r.rel(i);
      if (__float_as_uint(e) < floor_bits) continue;
      acc += fixed_mass(e);
      if (acc > u) {
        pick = i;
        break;
      }
    }
    tokens[blockIdx.x] = static_cast<int32_t>(pick);
  }
}

__global__ void uniforms_kernel(const SamplingRow* __restrict__ params, int64_t rows, double* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) out[r] = uniform_of(params[r]);
}

}  // namespace

void sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingRow* params, int32_t* tokens,
                 cudaStream_t stream) {
  if (rows == 0) return;
  sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, params, tokens);
  LSERVE_CUDA_CHECK_LAUNCH();
}

void sampling_uniforms(const SamplingRow* params, int64_t rows, double* out, cudaStream_t stream) {
  if (rows == 0) return;
  uniforms_kernel<<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(params, rows, out);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
