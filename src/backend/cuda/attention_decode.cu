// Decode attention (one new token per sequence) on tensor cores, split along the context
// (flash-decoding), then a merge of the splits.
//
// A block (4 warps) takes one split (decode_splits in attention.h) of one sequence for one KV
// head. The group's G <= 16 query heads are the rows of a single 16-row MMA tile that every warp
// holds; the block streams 64-key tiles through cp.async double buffering and each warp takes 16
// keys of every tile, keeping its own online-softmax state. At the end the four warp states are
// merged through shared memory; a sequence of one split writes its output directly, otherwise
// the split writes its normalized output and log-sum-exp, and the last of the sequence's splits
// to finish (a counter per sequence and KV head) merges them: no second launch, whose start and
// 32-block grid cost a reusing LServe step at 256K more than the merge itself (ncu).
// Decode is bound by reading K and V; the MMAs (16 rows, G of them real) are not the limit.
// With one page selection per query head (LServe's granularity), a selecting retrieval head has
// a block per query head, each reading its own pages as a one-row tile: up to G times the bytes
// of the shared selection, which is why the shared one is our default.
//
// Versions measured (H100 80GB HBM3, bench/cuda/attention_timing, Llama-3-8B heads 32/8, d 128;
// copy bandwidth measured at 2980 GB/s read + write):
//   v1 (this one; 512-key splits, 64-key tiles, 2-stage cp.async): one 128K sequence 0.259 ms =
//      2.08 TB/s of K/V (70% of copy; the floor is 0.180 ms); 8 x 128K 1.57 ms = 2.73 TB/s
//      (92%); 64 x 8K 0.79 ms = 2.73 TB/s (92%). The single sequence loses to the wave tail
//      (2048 blocks of ~3 per SM) and the separate merge launch.
//   Same kernel on an H200 (copy 4202 GB/s; torch SDPA decode 0.130 ms at 128K = 4.14 TB/s):
//      128K x1 0.214 ms = 2.51 TB/s (60% of copy), 256K x1 0.396 ms, 128K x8 1.20 ms = 3.58 TB/s.
//   v2: splits sized by the sequence's length so that one sequence fills the GPU once
//      (decode_max_splits: resident blocks / KV heads, e.g. 48 splits of 2752 keys at 128K
//      instead of 256 of 512), and a merge that reads each split's weight once per block.
//   v3: the merge in the block of the last split to finish (no merge launch: at 256K, batch 1
//      the separate merge took 13.5 us in ncu, 32 blocks walking 69 splits one load at a time),
//      and splits that see no key write only their log-sum-exp. Dense decode on an H200:
//      256K x1 0.281 ms (91% of copy), 256K x8 2.12 ms (97%).
#include <algorithm>
#include <cfloat>

#include "backend/cuda/attention.h"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"

namespace lserve::cuda {

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kKeys = 16 * kWarps;
static_assert(kKeys == kDecodeTileKeys, "splits are whole tiles");
constexpr int kMaxSplits = kDecodeMaxMergeSplits;

template <int D>
constexpr size_t decode_smem_bytes() {
  return static_cast<size_t>(16 + 4 * kKeys) * (D + 8) * sizeof(bf16);  // Q, 2 x (K, V)
}

// One split of one sequence for query heads head0 .. head0 + rows - 1 of one KV head (its whole
// group, or one head that selected its own pages), over the keys `tiles` gives.
// The splits of `m` for query heads head0 .. head0 + rows - 1 into the output, by the last
// block of the sequence's splits (every split's state is in L2 or memory by then). Each row is
// a group of D / 4 threads, each summing four dimensions over the splits in order, so the
// result does not depend on which block came last. Splits that saw no key have weight 0 and
// are not read (their partial output is never written).
template <int D>
__device__ void merge_splits(const AttentionParams& p, const MergeItem m, const int head0, const int rows,
                             const float* __restrict__ partial_o, const float* __restrict__ partial_lse) {
  constexpr int kLanes = D / 4, kRowsPerPass = kThreads / kLanes;
  static_assert(kThreads % kLanes == 0 && kLanes <= 32, "a row's threads are within one warp");
  const int H = p.num_heads, lane = threadIdx.x % kLanes;
  const int32_t t = p.query_start[m.seq];
  for (int r0 = 0; r0 < rows; r0 += kRowsPerPass) {
    const int r = r0 + static_cast<int>(threadIdx.x) / kLanes;
    const bool active = r < rows;
    const int head = head0 + (active ? r : 0);
    const float* lse = partial_lse + int64_t{m.first_partial} * H + head;
    float mx = -INFINITY;
    if (active)
      for (int32_t s = lane; s < m.num_splits; s += kLanes) mx = fmaxf(mx, __ldcg(lse + int64_t{s} * H));
    for (int o = kLanes / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o, kLanes));
    if (!active) continue;
    bf16* out = p.out + (int64_t{t} * H + head) * D + lane * 4;
    if (mx == -INFINITY) {  // no split saw a key (no case today: a window holds the last key)
      out[0] = out[1] = out[2] = out[3] = __float2bfloat16_rn(0.0f);
      continue;
    }
    // In batches of kBatch splits whose loads are all issued before any is used: a loop that
    // loaded a split's output only once its weight was known waited on L2 twice per split.
    // An unused split's output is loaded too (it is allocated, just stale) and then ignored.
    constexpr int kBatch = 8;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float wsum = 0.0f;
    const float* po = partial_o + (int64_t{m.first_partial} * H + head) * D + lane * 4;
    for (int32_t s0 = 0; s0 < m.num_splits; s0 += kBatch) {
      float ls[kBatch];
      float4 v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int32_t s = min(s0 + b, m.num_splits - 1);
        ls[b] = s0 + b < m.num_splits ? __ldcg(lse + int64_t{s} * H) : -INFINITY;
        v[b] = __ldcg(reinterpret_cast<const float4*>(po + int64_t{s} * H * D));
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {  // in split order, as one split at a time would sum
        const float w = exp2f(ls[b] - mx);
        if (w == 0.0f) continue;
        acc.x += w * v[b].x, acc.y += w * v[b].y, acc.z += w * v[b].z, acc.w += w * v[b].w;
        wsum += w;
      }
    }
    out[0] = __float2bfloat16_rn(acc.x / wsum);
    out[1] = __float2bfloat16_rn(acc.y / wsum);
    out[2] = __float2bfloat16_rn(acc.z / wsum);
    out[3] = __float2bfloat16_rn(acc.w / wsum);
  }
}

// After a split's state is written: the last split of the sequence (for this KV head, or this
// query head with its own pages) to arrive merges them all. The counter wraps to zero on the
// last arrival, ready for the next launch.
template <int D>
__device__ void arrive_and_merge(const AttentionParams& p, const int head0, const int rows,
                                 const float* __restrict__ partial_o, const float* __restrict__ partial_lse,
                                 const MergeItem m, uint32_t* arrival) {
  __shared__ int last;
  __threadfence();  // this block's state before its arrival
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(arrival, static_cast<unsigned>(m.num_splits - 1)) == static_cast<unsigned>(m.num_splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_splits<D>(p, m, head0, rows, partial_o, partial_lse);
}

template <int D, class Tiles>
__device__ void decode_split(const AttentionParams& p, const DecodeItem item, const Tiles tiles, const HeadKv hv,
                             const int head0, const int rows, float* __restrict__ partial_o,
                             float* __restrict__ partial_lse, unsigned char* smem) {
  constexpr int kStride = D + 8, DT = D / 8;
  static_assert(static_cast<size_t>(kWarps) * 16 * (D + 2) * sizeof(float) <= 4 * kKeys * kStride * sizeof(bf16),
                "the warp states must fit in the K/V tiles' shared memory");
  bf16* sq = reinterpret_cast<bf16*>(smem);
  bf16* sk = sq + 16 * kStride;
  bf16* sv = sk + 2 * kKeys * kStride;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t t = p.query_start[item.seq];  // the sequence's one new token
  const int32_t n = tiles.count();
  if (n == 0 && item.partial >= 0) {  // no key of this split is visible (a streaming head's window
    for (int r = threadIdx.x; r < rows; r += kThreads)  // elsewhere, a list's unused entries)
      partial_lse[int64_t{item.partial} * p.num_heads + head0 + r] = -INFINITY;
    return;
  }

  for (int c = threadIdx.x; c < 16 * (D / 8); c += kThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    const bool valid = r < rows;
    const bf16* src = valid ? p.q + (int64_t{t} * p.num_heads + head0 + r) * D + ch * 8 : p.q;
    tile::cp_async_16(sq + r * kStride + ch * 8, src, valid);
  }
  // (With no tile, nothing to load: a page list's entries past its count may be stale.)
  if (n > 0) tile::load_kv_tile<D, kKeys, kThreads>(sk, sv, p, hv, tiles.begin(0), tiles.end(0));
  tile::cp_async_commit();
  const float scale_log2 = p.scale * tile::kLog2e;

  uint32_t qf[D / 16][4];
  float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

  for (int32_t i = 0; i < n; ++i) {
    if (i + 1 < n)
      tile::load_kv_tile<D, kKeys, kThreads>(sk + ((i + 1) & 1) * kKeys * kStride, sv + ((i + 1) & 1) * kKeys * kStride,
                                             p, hv, tiles.begin(i + 1), tiles.end(i + 1));
    tile::cp_async_commit();
    tile::cp_async_wait<1>();
    __syncthreads();
    if (i == 0) tile::load_q_fragments<D>(qf, sq, lane);
    const bf16* kt = sk + (i & 1) * kKeys * kStride + warp * 16 * kStride;
    const bf16* vt = sv + (i & 1) * kKeys * kStride + warp * 16 * kStride;

    float s[2][4];
    tile::qk_scores<D, 2>(s, qf, kt, lane);
    const int32_t kb = tiles.begin(i) + warp * 16, ke = tiles.end(i);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int32_t key = kb + nt * 8 + (lane % 4) * 2 + (e & 1);
        s[nt][e] = key < ke ? s[nt][e] * scale_log2 : -INFINITY;
      }
    }
    tile::softmax_step<2, DT>(s, m, l, o);
    tile::pv_accumulate<D, 2>(o, s, vt, lane);
    __syncthreads();
  }

  // Merge the four warps' states through shared memory (the K/V tiles are free now). The copies
  // of a split with no tiles (its prologue load is never waited for in the loop) must land first.
  tile::cp_async_wait<0>();
  __syncthreads();
  float* wm = reinterpret_cast<float*>(sk);  // [kWarps][16] running max
  float* wl = wm + kWarps * 16;              // [kWarps][16] running sum
  float* wo = wl + kWarps * 16;              // [kWarps][16][D] unnormalized output
  for (int hr = 0; hr < 2; ++hr) {
    const int row = lane / 4 + 8 * hr;
    const float lsum = tile::quad_sum(l[hr]);
    if (lane % 4 == 0) {
      wm[warp * 16 + row] = m[hr];
      wl[warp * 16 + row] = lsum;
    }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      float* dst = wo + (warp * 16 + row) * D + dt * 8 + (lane % 4) * 2;
      dst[0] = o[dt][2 * hr];
      dst[1] = o[dt][2 * hr + 1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w * 16 + r]);
    float lsum = 0.0f, acc = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(wm[w * 16 + r] - mx);  // 0 for a warp that saw no key
      lsum += wl[w * 16 + r] * f;
      acc += wo[(w * 16 + r) * D + d] * f;
    }
    const int head = head0 + r;
    if (mx == -INFINITY && item.partial >= 0) {  // every key of the split masked: weight 0, unread
      if (d == 0) partial_lse[int64_t{item.partial} * p.num_heads + head] = -INFINITY;
      continue;
    }
    if (item.partial < 0) {
      p.out[(int64_t{t} * p.num_heads + head) * D + d] = __float2bfloat16_rn(acc / lsum);
    } else {
      partial_o[(int64_t{item.partial} * p.num_heads + head) * D + d] = acc / lsum;
      if (d == 0) partial_lse[int64_t{item.partial} * p.num_heads + head] = mx + log2f(lsum);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) decode_kernel(const AttentionParams p, const DecodeItem* __restrict__ items,
                                                          float* __restrict__ partial_o,
                                                          float* __restrict__ partial_lse,
                                                          const int32_t* __restrict__ num_items,
                                                          const MergeItem* __restrict__ merges,
                                                          uint32_t* __restrict__ arrivals) {
  extern __shared__ __align__(16) unsigned char smem[];
  allow_next_kernel();
  wait_for_previous_kernels();
  // The item is read beside the count, not after it: the plan's buffer holds the whole grid's
  // items (zeros past this step's), and one dependent load fewer starts every block sooner.
  const int32_t step_items = *num_items;
  const DecodeItem item = items[blockIdx.x];
  if (static_cast<int32_t>(blockIdx.x) >= step_items) return;  // past this step's items (a recorded grid)
  // The split's merge, read now and needed only at the end (its load off the block's tail).
  const MergeItem merge = item.merge >= 0 ? merges[item.merge] : MergeItem{};
  const int per_kv = decode_blocks_per_kv_head(p), G = p.num_heads / p.num_kv_heads;
  const int kvh = static_cast<int>(blockIdx.y) / per_kv, sub = static_cast<int>(blockIdx.y) % per_kv;
  const bool own_list = per_kv > 1 && item.selected && p.heads.slot[kvh] >= 0;  // one query head, its own pages
  if (sub > 0 && !own_list) return;  // the group's first block serves all its heads
  const HeadKv hv = head_kv(p, kvh, item.seq);
  const int32_t len = p.seq_lens[item.seq];
  const int head0 = own_list ? kvh * G + sub : kvh * G, rows = own_list ? 1 : G;
  if (p.heads.slot[kvh] < 0) {  // a streaming head reads the split's keys in its window only
    const bool decoding = p.decoding && p.decoding[item.seq];
    const int32_t sink = decoding ? p.windows.decode_sink : p.windows.prefill_sink;
    const int32_t local = decoding ? p.windows.decode_local : p.windows.prefill_local;
    if (item.selected) {  // page-list splits (of equal length): this one's share of the window's tiles
      const auto window = tile::WindowedRangeTiles<kKeys>::make(0, len, sink, local, len - 1);
      const int32_t split = item.key_begin / max(1, item.key_end - item.key_begin);
      decode_split<D>(p, item, tile::TileSlice<tile::WindowedRangeTiles<kKeys>>::make(window, split, item.selected), hv,
                      head0, rows, partial_o, partial_lse, smem);
    } else {
      const auto tiles = tile::WindowedRangeTiles<kKeys>::make(item.key_begin, item.key_end, sink, local, len - 1);
      decode_split<D>(p, item, tiles, hv, head0, rows, partial_o, partial_lse, smem);
    }
  } else if (item.selected) {  // a retrieval head's split of its page list (or one query head's)
    const int32_t units = own_list ? p.num_heads : p.num_kv_heads;
    const int32_t unit = item.slot * units + (own_list ? kvh * G + sub : kvh);
    const int32_t* list = p.select_pages + static_cast<int64_t>(unit) * p.select_capacity;
    // The split's entries are in the list's buffer whatever its count (key_begin < capacity):
    // fetch them into L1 while the count is read, rather than after.
    asm volatile("prefetch.global.L1 [%0];" ::"l"(list + item.key_begin));
    const int32_t count = p.select_counts[unit];
    const tile::PageListTiles<kKeys> tiles{list, min(item.key_begin, count), min(item.key_end, count), p.page_size, len};
    decode_split<D>(p, item, tiles, hv, head0, rows, partial_o, partial_lse, smem);
  } else {
    decode_split<D>(p, item, tile::KeyRangeTiles<kKeys>{item.key_begin, item.key_end}, hv, head0, rows, partial_o,
                    partial_lse, smem);
  }
  if (item.merge >= 0)
    arrive_and_merge<D>(p, head0, rows, partial_o, partial_lse, merge,
                        arrivals + (int64_t{item.merge} * p.num_kv_heads + kvh) * per_kv + sub);
}

template <int D>
void launch(const AttentionParams& p, const DecodeItem* items, const int32_t* num_items, int32_t grid_items,
            float* partial_o, float* partial_lse, const MergeItem* merges, uint32_t* arrivals, cudaStream_t stream) {
  constexpr size_t smem = decode_smem_bytes<D>();
  static const bool attribute_set = [] {
    LSERVE_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    return true;
  }();
  (void)attribute_set;
  const auto blocks_y = static_cast<unsigned>(p.num_kv_heads * decode_blocks_per_kv_head(p));
  launch_dependent(decode_kernel<D>, dim3(static_cast<unsigned>(grid_items), blocks_y), dim3(kThreads), smem, stream,
                   p, items, partial_o, partial_lse, num_items, merges, arrivals);
}

}  // namespace

int32_t decode_max_splits(int head_dim, int num_kv_heads) {
  int device = 0, sms = 0, blocks = 0;
  LSERVE_CUDA_CHECK(cudaGetDevice(&device));
  LSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  auto occupancy = [&](auto kernel, size_t smem) {
    LSERVE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    LSERVE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem));
  };
  switch (head_dim) {
    case 16: occupancy(decode_kernel<16>, decode_smem_bytes<16>()); break;
    case 32: occupancy(decode_kernel<32>, decode_smem_bytes<32>()); break;
    case 64: occupancy(decode_kernel<64>, decode_smem_bytes<64>()); break;
    case 128: occupancy(decode_kernel<128>, decode_smem_bytes<128>()); break;
    default: return 1;  // the reference kernel takes these
  }
  const int splits = std::max(1, sms * std::max(blocks, 1) / std::max(num_kv_heads, 1));
  return std::min(splits, kMaxSplits);
}

void attention_decode(const AttentionParams& p, const DecodeItem* items, const int32_t* num_items, int32_t grid_items,
                      float* partial_o, float* partial_lse, const MergeItem* merges, uint32_t* arrivals,
                      cudaStream_t stream) {
  if (grid_items == 0) return;
  switch (p.head_dim) {
    case 16: return launch<16>(p, items, num_items, grid_items, partial_o, partial_lse, merges, arrivals, stream);
    case 32: return launch<32>(p, items, num_items, grid_items, partial_o, partial_lse, merges, arrivals, stream);
    case 64: return launch<64>(p, items, num_items, grid_items, partial_o, partial_lse, merges, arrivals, stream);
    case 128: return launch<128>(p, items, num_items, grid_items, partial_o, partial_lse, merges, arrivals, stream);
    default: cuda_fail(cudaErrorInvalidValue, "attention_decode: unsupported head_dim", __FILE__, __LINE__);
  }
}

}  // namespace lserve::cuda
