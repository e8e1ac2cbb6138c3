// Decode attention (one new token per sequence) on tensor cores, split along the context
// (flash-decoding), then a merge of the splits.
//
// A block (4 warps) takes one split (decode_splits in attention.h) of one sequence for one KV
// head. The group's G <= 16 query heads are the rows of a single 16-row MMA tile that every warp
// holds; the block streams 64-key tiles through cp.async double buffering and each warp takes 16
// keys of every tile, keeping its own online-softmax state. At the end the four warp states are
// merged through shared memory; a sequence of one split writes its output directly, otherwise
// the split writes its normalized output and log-sum-exp for attention_decode_merge.
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
#include <algorithm>
#include <cfloat>

#include "backend/cuda/attention.h"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.h"

namespace lserve::cuda {

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kKeys = 16 * kWarps;
static_assert(kKeys == kDecodeTileKeys, "splits are whole tiles");
constexpr int kMaxSplits = kDecodeMaxMergeSplits;  // the merge keeps the splits' weights in shared memory

template <int D>
constexpr size_t decode_smem_bytes() {
  return static_cast<size_t>(16 + 4 * kKeys) * (D + 8) * sizeof(bf16);  // Q, 2 x (K, V)
}

// One split of one sequence for query heads head0 .. head0 + rows - 1 of one KV head (its whole
// group, or one head that selected its own pages), over the keys `tiles` gives.
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

  for (int c = threadIdx.x; c < 16 * (D / 8); c += kThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    const bool valid = r < rows;
    const bf16* src = valid ? p.q + (int64_t{t} * p.num_heads + head0 + r) * D + ch * 8 : p.q;
    tile::cp_async_16(sq + r * kStride + ch * 8, src, valid);
  }
  const int32_t n = tiles.count();
  tile::load_kv_tile<D, kKeys, kThreads>(sk, sv, p, hv, tiles.begin(0), tiles.end(0));
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
    if (mx == -INFINITY && item.partial >= 0) {  // a streaming head's split outside its window: empty
      partial_o[(int64_t{item.partial} * p.num_heads + head) * D + d] = 0.0f;
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
                                                          const int32_t* __restrict__ num_items) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (static_cast<int32_t>(blockIdx.x) >= *num_items) return;  // past this step's items (a recorded grid)
  const DecodeItem item = items[blockIdx.x];
  const int per_kv = decode_blocks_per_kv_head(p), G = p.num_heads / p.num_kv_heads;
  const int kvh = static_cast<int>(blockIdx.y) / per_kv, sub = static_cast<int>(blockIdx.y) % per_kv;
  const bool own_list = per_kv > 1 && item.selected && p.heads.slot[kvh] >= 0;  // one query head, its own pages
  if (sub > 0 && !own_list) return;  // the group's first block serves all its heads
  const HeadKv hv = head_kv(p, kvh, item.seq);
  const int32_t len = p.seq_lens[item.seq];
  if (p.heads.slot[kvh] < 0) {  // a streaming head reads the split's keys in its window only
    const bool decoding = p.decoding && p.decoding[item.seq];
    const int32_t sink = decoding ? p.windows.decode_sink : p.windows.prefill_sink;
    const int32_t local = decoding ? p.windows.decode_local : p.windows.prefill_local;
    if (item.selected) {  // page-list splits (of equal length): this one's share of the window's tiles
      const auto window = tile::WindowedRangeTiles<kKeys>::make(0, len, sink, local, len - 1);
      const int32_t split = item.key_begin / max(1, item.key_end - item.key_begin);
      decode_split<D>(p, item, tile::TileSlice<tile::WindowedRangeTiles<kKeys>>::make(window, split, item.selected), hv,
                      kvh * G, G, partial_o, partial_lse, smem);
    } else {
      const auto tiles = tile::WindowedRangeTiles<kKeys>::make(item.key_begin, item.key_end, sink, local, len - 1);
      decode_split<D>(p, item, tiles, hv, kvh * G, G, partial_o, partial_lse, smem);
    }
  } else if (item.selected) {  // a retrieval head's split of its page list (or one query head's)
    const int32_t units = own_list ? p.num_heads : p.num_kv_heads;
    const int32_t unit = p.select_slot[item.seq] * units + (own_list ? kvh * G + sub : kvh);
    const int32_t count = p.select_counts[unit];
    const tile::PageListTiles<kKeys> tiles{p.select_pages + static_cast<int64_t>(unit) * p.select_capacity,
                                           min(item.key_begin, count), min(item.key_end, count), p.page_size, len};
    decode_split<D>(p, item, tiles, hv, own_list ? kvh * G + sub : kvh * G, own_list ? 1 : G, partial_o, partial_lse,
                    smem);
  } else {
    decode_split<D>(p, item, tile::KeyRangeTiles<kKeys>{item.key_begin, item.key_end}, hv, kvh * G, G, partial_o,
                    partial_lse, smem);
  }
}

// One block per (sequence, head): the splits' weights exp2(lse - max) once into shared memory,
// then one thread per output dimension sums the weighted partial outputs (coalesced over d).
__global__ void decode_merge_kernel(const AttentionParams p, const MergeItem* __restrict__ items,
                                    const float* __restrict__ partial_o, const float* __restrict__ partial_lse,
                                    const int32_t* __restrict__ num_merges) {
  __shared__ float weight[kMaxSplits];
  __shared__ float reduce[32];
  if (static_cast<int32_t>(blockIdx.x) >= *num_merges) return;
  const MergeItem item = items[blockIdx.x];
  const int h = blockIdx.y, H = p.num_heads, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < item.num_splits; s += blockDim.x) {
    weight[s] = partial_lse[int64_t{item.first_partial + s} * H + h];
    mx = fmaxf(mx, weight[s]);
  }
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) reduce[warp] = mx;
  __syncthreads();
  mx = reduce[0];
  for (int w = 1; w < warps; ++w) mx = fmaxf(mx, reduce[w]);
  for (int s = threadIdx.x; s < item.num_splits; s += blockDim.x) weight[s] = exp2f(weight[s] - mx);
  __syncthreads();
  const int32_t t = p.query_start[item.seq];
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float acc = 0.0f, wsum = 0.0f;
    const float* po = partial_o + (int64_t{item.first_partial} * H + h) * p.head_dim + d;
    for (int s = 0; s < item.num_splits; ++s) {
      acc += weight[s] * po[int64_t{s} * H * p.head_dim];
      wsum += weight[s];
    }
    p.out[(int64_t{t} * H + h) * p.head_dim + d] = __float2bfloat16_rn(acc / wsum);
  }
}

template <int D>
void launch(const AttentionParams& p, const DecodeItem* items, const int32_t* num_items, int32_t grid_items,
            float* partial_o, float* partial_lse, cudaStream_t stream) {
  constexpr size_t smem = decode_smem_bytes<D>();
  static const bool attribute_set = [] {
    LSERVE_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    return true;
  }();
  (void)attribute_set;
  const auto blocks_y = static_cast<unsigned>(p.num_kv_heads * decode_blocks_per_kv_head(p));
  decode_kernel<D><<<dim3(static_cast<unsigned>(grid_items), blocks_y), kThreads, smem, stream>>>(
      p, items, partial_o, partial_lse, num_items);
  LSERVE_CUDA_CHECK_LAUNCH();
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
                      float* partial_o, float* partial_lse, cudaStream_t stream) {
  if (grid_items == 0) return;
  switch (p.head_dim) {
    case 16: return launch<16>(p, items, num_items, grid_items, partial_o, partial_lse, stream);
    case 32: return launch<32>(p, items, num_items, grid_items, partial_o, partial_lse, stream);
    case 64: return launch<64>(p, items, num_items, grid_items, partial_o, partial_lse, stream);
    case 128: return launch<128>(p, items, num_items, grid_items, partial_o, partial_lse, stream);
    default: cuda_fail(cudaErrorInvalidValue, "attention_decode: unsupported head_dim", __FILE__, __LINE__);
  }
}

void attention_decode_merge(const AttentionParams& p, const MergeItem* items, const int32_t* num_merges,
                            int32_t grid_merges, const float* partial_o, const float* partial_lse,
                            cudaStream_t stream) {
  if (grid_merges == 0) return;
  const int threads = p.head_dim < 32 ? 32 : (p.head_dim > 256 ? 256 : p.head_dim);
  decode_merge_kernel<<<dim3(static_cast<unsigned>(grid_merges), static_cast<unsigned>(p.num_heads)), threads, 0,
                        stream>>>(p, items, partial_o, partial_lse, num_merges);
  LSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace lserve::cuda
