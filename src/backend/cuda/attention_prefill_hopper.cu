// Prefill attention on Hopper tensor cores (wgmma, sm_90a), for head_dim 64 and 128.
//
// A block takes one plan item (kPrefillItemRows = 128 query rows of one KV head; rows are (new
// token, query head of the KV head's group) pairs, so a GQA group shares every K/V tile) and is
// three warpgroups, specialized:
//   producer (warpgroup 0, few registers): loads the Q tile once and then K and V tiles of 128
//     keys into a ring of shared-memory stages. Loads are cp.async, 16 bytes per thread, each
//     key's page looked up once per tile, so any page size works and a tile may span pages;
//     keys at or past the tile's end are zero-filled (unwritten slots never bring NaN into P.V).
//     A stage is handed over through mbarriers: the copy hardware arrives on the stage's "full"
//     barrier as each thread's copies land (the producer never waits on its own loads), and
//     consumers arrive on its "empty" barrier once their wgmma reading it is done.
//   two consumers (warpgroups 1, 2, most registers): 64 query rows each. S = Q K^T by wgmma with
//     both operands in shared memory (128-byte swizzle, K-major), the online softmax in registers
//     (log2 domain, scale folded into one FMA before exp2), then O += P V by wgmma with P straight
//     from the score registers re-packed as bf16 A fragments and V from shared memory read
//     MN-major (the same tile layout as K, no transpose pass). S of tile i is issued with P.V of
//     tile i - 1, so a consumer's softmax overlaps its own P.V as well as the other's products.
// The block walks the KV tiles a `Tiles` iterator gives (count(), begin(i), end(i)); dense causal
// here, the sparse policies pass others. Masking is token-exact: keys after each row's position
// and keys at or past end(i) get -inf, applied only on tiles that need it.
//
// Versions measured (H200, 132 SMs, CUDA 13.0; Llama-3-8B heads 32/8, d 128; page 64 unless
// noted; torch 2.11 SDPA with cuDNN 9.19 on the same GPU: 32K causal 13.2 ms = 665 TFLOP/s,
// 128K causal 250 ms = 562 TFLOP/s):
//   v1 (128 x 128 tiles, 1 producer + 2 consumers; the producer waited for its own copies and
//      fenced before arriving; S, softmax, P.V in order in each consumer): 32K causal 17.6 ms =
//      500 TFLOP/s, 128K 277 ms = 509. Page size 16 the same.
//   v2 (S of tile i with P.V of tile i - 1 in each consumer): 32K 17.3 ms = 510, 128K 274 ms =
//      514, 2K chunk after 30K 2.03 ms = 524. Taking turns between the consumers (ping-pong on
//      named barriers) gave nothing more (508); three stages at d 128 (230 KB of shared memory)
//      lost 13% (442), likely the L1 left beside that much shared memory (page-table reads).
//   v3 (this one; the copy hardware arrives on the full barriers, consumers fence into the async
//      proxy; a warp's 32 keys of one page copied without per-row lookups): 32K 15.6 ms = 563
//      TFLOP/s (0.85x cuDNN), 128K 244 ms = 578 (1.03x), 2K chunk after 30K 1.81 ms = 588; at
//      page 16 (two pages per warp, per-row lookups) 32K 16.9 ms = 520, 128K 269 ms = 524.
//      The previous kernel (mma.sync, attention_prefill.cu) measured 148 TFLOP/s at 32K on H100.
//      Next: the same shortcut for runs of 16 keys (page 16), then TMA page boxes for K/V.
#include <atomic>
#include <cfloat>

#include "backend/cuda/attention.h"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/wgmma.cuh"

namespace lserve::cuda {

namespace {

constexpr int kRows = kPrefillItemRows, kKeys = 128, kConsumers = 2, kThreads = 128 * (1 + kConsumers);
static_assert(kRows == 64 * kConsumers, "one 64-row wgmma tile per consumer warpgroup");
// Register split of the 64K-register file over 384 threads (setmaxnreg): the producer only
// computes addresses.
constexpr int kProducerRegs = 72, kConsumerRegs = 216;
static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= 65536, "register file");

template <int D, int kStages_>
struct Layout {
  static constexpr int kStages = kStages_;                // K/V stages in flight
  static constexpr uint32_t kRowBlock = 128;              // bytes of one row of a 64-wide block
  static constexpr uint32_t kQBlock = kRows * kRowBlock;  // one 64-wide column block of Q
  static constexpr uint32_t kKvBlock = kKeys * kRowBlock;
  static constexpr uint32_t kQBytes = kQBlock * (D / 64);
  static constexpr uint32_t kKvBytes = kKvBlock * (D / 64);  // one K or V tile
  static constexpr uint32_t kK = kQBytes, kV = kK + kStages * kKvBytes, kBars = kV + kStages * kKvBytes;
  static constexpr int kNumBars = 1 + 4 * kStages;  // Q full; K full, K empty, V full, V empty per stage
  static constexpr size_t kSmem = kBars + 8 * kNumBars + 1024;  // + slack to align the base to 1024
};

// The device code exists only in the sm_90a pass (wgmma, setmaxnreg); the compute_90 PTX the
// build also embeds, for newer GPUs to JIT, gets an empty kernel that dispatch never launches.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// 2^x on the MUFU unit (-inf gives 0).
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// One 128-row tile (Q rows or keys) into the swizzled layout of wgmma.cuh. Warp w stores rows
// 32w..32w+31; `src` is this lane's row (32w + lane) as a row index into `base` (rows of D), or
// ~0u for a row to zero-fill. Adjacent lanes copy one row, so a row is one contiguous read.
// When the warp's 32 rows are consecutive rows of `base` (keys of one page of 32 or more), a
// row's address is the first row's plus a constant; otherwise each row's index is shuffled to
// the lanes copying it.
template <int D>
__device__ inline void load_rows(uint32_t dst, uint32_t block_bytes, const bf16* base, uint32_t src, int warp,
                                 int lane) {
  constexpr int kChunks = D / 8, kRowsPerPass = 32 / kChunks;
  const uint32_t src0 = __shfl_sync(0xffffffffu, src, 0);
  if (__all_sync(0xffffffffu, src != ~0u && src == src0 + lane)) {
    const bf16* g = base + static_cast<size_t>(src0) * D;
#pragma unroll
    for (int pass = 0; pass < 32 / kRowsPerPass; ++pass) {
      const int r = pass * kRowsPerPass + lane / kChunks, ch = lane % kChunks, row = 32 * warp + r;
      wgmma::cp_async_16(dst + (ch / 8) * block_bytes + row * 128 + (((ch % 8) ^ (row & 7)) << 4), g + r * D + ch * 8,
                         true);
    }
    return;
  }
#pragma unroll
  for (int pass = 0; pass < 32 / kRowsPerPass; ++pass) {
    const int r = pass * kRowsPerPass + lane / kChunks, ch = lane % kChunks;
    const uint32_t row_src = __shfl_sync(0xffffffffu, src, r);
    const int row = 32 * warp + r;
    const bool valid = row_src != ~0u;
    const bf16* g = base + (valid ? static_cast<size_t>(row_src) * D + ch * 8 : 0);
    wgmma::cp_async_16(dst + (ch / 8) * block_bytes + row * 128 + (((ch % 8) ^ (row & 7)) << 4), g, valid);
  }
}

template <int D, int kStages, class Tiles>
__device__ void prefill_tile_hopper(const AttentionParams& p, const PrefillItem item, const Tiles tiles, int32_t q0,
                                    int32_t ctx, int32_t row_end, unsigned char* smem) {
  using L = Layout<D, kStages>;
  constexpr int S = L::kStages;
  const uint32_t sq = wgmma::smem_u32(smem), sk = sq + L::kK, sv = sq + L::kV;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* full_q = bars;
  uint64_t* full_k = bars + 1;
  uint64_t* empty_k = full_k + S;
  uint64_t* full_v = empty_k + S;
  uint64_t* empty_v = full_v + S;
  if (threadIdx.x == 0) {
    wgmma::mbar_init(full_q, 128);
    for (int s = 0; s < S; ++s) {
      wgmma::mbar_init(full_k + s, 128);
      wgmma::mbar_init(full_v + s, 128);
      wgmma::mbar_init(empty_k + s, 4 * kConsumers);  // one arrival per consumer warp
      wgmma::mbar_init(empty_v + s, 4 * kConsumers);
    }
  }
  __syncthreads();

  const int kvh = blockIdx.y, G = p.num_heads / p.num_kv_heads;
  const int32_t n = tiles.count();
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;

  if (warpgroup == 0) {
    // ---- producer ----
    wgmma::setmaxnreg_dec<kProducerRegs>();
    const HeadKv hv = head_kv(p, kvh, item.seq);
    const uint32_t ps = static_cast<uint32_t>(p.page_size), hk = static_cast<uint32_t>(hv.pool_heads);
    const uint32_t pool_index = static_cast<uint32_t>(hv.index);
    {
      const int row = item.row_begin + 32 * warp + lane;
      uint32_t src = ~0u;
      if (row < row_end) src = static_cast<uint32_t>((q0 + row / G) * p.num_heads + kvh * G + row % G);
      load_rows<D>(sq, L::kQBlock, p.q, src, warp, lane);
    }
    // Each stage's barrier is arrived on by the copy hardware as this thread's copies land, so
    // loads run ahead as far as the free stages allow; consumers fence into the async proxy
    // after their wait.
    wgmma::cp_async_arrive(full_q);
    for (int32_t i = 0; i < n; ++i) {
      const int s = i % S;
      const uint32_t parity = ((i / S) & 1) ^ 1;  // the slot's previous use released
      const int32_t key = tiles.begin(i) + 32 * warp + lane;
      uint32_t src = ~0u;
      if (key < tiles.end(i)) {
        const uint32_t k = static_cast<uint32_t>(key);
        src = (static_cast<uint32_t>(hv.pages[k / ps]) * hk + pool_index) * ps + k % ps;
      }
      wgmma::mbar_wait(empty_k + s, parity);
      load_rows<D>(sk + s * L::kKvBytes, L::kKvBlock, hv.k, src, warp, lane);
      wgmma::cp_async_arrive(full_k + s);
      wgmma::mbar_wait(empty_v + s, parity);
      load_rows<D>(sv + s * L::kKvBytes, L::kKvBlock, hv.v, src, warp, lane);
      wgmma::cp_async_arrive(full_v + s);
    }
    wgmma::cp_async_wait_all();  // nothing in flight when the warp exits
    return;
  }

  // ---- consumers ----
  wgmma::setmaxnreg_inc<kConsumerRegs>();
  constexpr int NT = kKeys / 8, DT = D / 8, KT = kKeys / 16;
  const int wg = warpgroup - 1;
  const int wg_row = item.row_begin + 64 * wg;  // first plan row of this warpgroup
  int32_t qpos[2];  // positions of this thread's two rows (rows past the end: harmless, unwritten)
  for (int hr = 0; hr < 2; ++hr) qpos[hr] = ctx + (wg_row + warp * 16 + lane / 4 + 8 * hr) / G;
  const int32_t first_qpos = ctx + wg_row / G, last_qpos = ctx + (min(wg_row + 63, row_end - 1)) / G;
  const float scale_log2 = p.scale * tile::kLog2e;
  const uint32_t q_addr = sq + 64 * wg * L::kRowBlock;

  float o[DT][4], s[NT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2];
  uint32_t pf[KT][4];  // P of the tile whose P.V is next, as bf16 A fragments
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;

  // Issues S = Q K^T of the K tile in stage st (one commit group).
  auto issue_qk = [&](int st) {
    const uint32_t k_addr = sk + st * L::kKvBytes;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t qoff = (ks / 4) * L::kQBlock + (ks % 4) * 32, koff = (ks / 4) * L::kKvBlock + (ks % 4) * 32;
      wgmma::mma_ss_n128(s, wgmma::desc(q_addr + qoff, 16, 1024), wgmma::desc(k_addr + koff, 16, 1024), ks > 0);
    }
    wgmma::commit();
  };
  // Issues O += P V of the V tile in stage st (one commit group).
  auto issue_pv = [&](int st) {
    const uint32_t v_addr = sv + st * L::kKvBytes;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      const uint64_t dv = wgmma::desc(v_addr + kk * 16 * L::kRowBlock, L::kKvBlock, 1024);
      if constexpr (D == 128)
        wgmma::mma_rs_n128(o, pf[kk], dv);
      else
        wgmma::mma_rs_n64(o, pf[kk], dv);
    }
    wgmma::commit();
  };
  // Scores of tile i masked (keys after a row's position or at or past end(i): -inf, only on the
  // tiles that have such keys), then the online softmax in the log2 domain with the scale folded
  // into one FMA: new row maxima, the factor `corr` the running output must take, s = exp2(s *
  // scale - max), and the running sums. The maximum is taken on the raw scores: scale > 0.
  auto softmax = [&](int32_t i) {
    const int32_t kb = tiles.begin(i), ke = tiles.end(i);
    if (tiles.needs_mask(i, first_qpos, last_qpos)) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int32_t key = kb + nt * 8 + (lane % 4) * 2 + (e & 1);
          if (key >= ke || !tiles.visible(key, qpos[e >> 1])) s[nt][e] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(m[hr], mx * scale_log2);
      const float base = mx == -INFINITY ? 0.0f : mx;  // a row with no key yet stays empty
      corr[hr] = fast_exp2(m[hr] - base);
      m[hr] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * hr] = fast_exp2(fmaf(s[nt][2 * hr], scale_log2, -base));
        s[nt][2 * hr + 1] = fast_exp2(fmaf(s[nt][2 * hr + 1], scale_log2, -base));
        sum += s[nt][2 * hr] + s[nt][2 * hr + 1];
      }
      l[hr] = l[hr] * corr[hr] + sum;  // this thread's columns only; the quad is summed at the end
    }
  };
  auto rescale_and_pack = [&] {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= corr[0];
      o[dt][1] *= corr[0];
      o[dt][2] *= corr[1];
      o[dt][3] *= corr[1];
    }
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      pf[kk][0] = tile::pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pf[kk][1] = tile::pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pf[kk][2] = tile::pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[kk][3] = tile::pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  };
  // Registers written by ordinary code must be final before wgmma.fence (pin orders them), and
  // accumulators of a running wgmma are left alone until its wait (pin after it).
  auto pin_all = [&] {
    wgmma::pin(s);
    wgmma::pin(o);
    wgmma::pin(pf);
  };

  // The full barriers were arrived on by the copy hardware: this thread makes the stage's writes
  // visible to its wgmma reads.
  wgmma::mbar_wait(full_q, 0);
  wgmma::fence_proxy_async();
  // S of tile i is issued together with P.V of tile i - 1, and the softmax of tile i runs while
  // that P.V does; the two consumers overlap each other besides.
  wgmma::mbar_wait(full_k, 0);
  wgmma::fence_proxy_async();
  pin_all();
  wgmma::fence();
  issue_qk(0);
  wgmma::wait<0>();
  wgmma::pin(s);
  if (lane == 0) wgmma::mbar_arrive(empty_k);
  softmax(0);
  rescale_and_pack();
  for (int32_t i = 1; i < n; ++i) {
    const int st = i % S, prev = (i - 1) % S;
    wgmma::mbar_wait(full_k + st, (i / S) & 1);
    wgmma::mbar_wait(full_v + prev, ((i - 1) / S) & 1);
    wgmma::fence_proxy_async();
    pin_all();
    wgmma::fence();
    issue_qk(st);
    issue_pv(prev);
    wgmma::wait<1>();  // S done; P.V may still run
    wgmma::pin(s);
    if (lane == 0) wgmma::mbar_arrive(empty_k + st);
    softmax(i);
    wgmma::wait<0>();
    wgmma::pin(o);
    wgmma::pin(pf);
    if (lane == 0) wgmma::mbar_arrive(empty_v + prev);
    rescale_and_pack();
  }
  const int last = (n - 1) % S;
  wgmma::mbar_wait(full_v + last, ((n - 1) / S) & 1);
  wgmma::fence_proxy_async();
  pin_all();
  wgmma::fence();
  issue_pv(last);
  wgmma::wait<0>();
  wgmma::pin(o);
  if (lane == 0) wgmma::mbar_arrive(empty_v + last);

  for (int hr = 0; hr < 2; ++hr) {
    const int row = wg_row + warp * 16 + lane / 4 + 8 * hr;
    const float lsum = tile::quad_sum(l[hr]);  // every lane joins the shuffle
    if (row >= row_end) continue;
    const float inv = 1.0f / lsum;  // > 0: every query sees at least key 0
    bf16* dst = p.out + (int64_t{q0 + row / G} * p.num_heads + kvh * G + row % G) * D + (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
      *reinterpret_cast<uint32_t*>(dst + dt * 8) = tile::pack_bf16(o[dt][2 * hr] * inv, o[dt][2 * hr + 1] * inv);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <int D, int kStages>
__global__ void __launch_bounds__(kThreads, 1) prefill_hopper_kernel(const AttentionParams p,
                                                                     const PrefillItem* __restrict__ items) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (wgmma::smem_u32(smem_raw) & 1023)) & 1023);
  const PrefillItem item = items[blockIdx.x];
  const int G = p.num_heads / p.num_kv_heads;
  const int32_t q0 = p.query_start[item.seq], qlen = p.query_start[item.seq + 1] - q0;
  const int32_t ctx = p.seq_lens[item.seq] - qlen;  // position of the first new token
  const int32_t row_end = min(item.row_begin + kRows, qlen * G);
  const int32_t first_q = ctx + item.row_begin / G, last_q = ctx + (row_end - 1) / G;
  // One launch for both kinds of head: a streaming head walks its sink and local tiles only.
  if (p.heads.slot[blockIdx.y] < 0) {
    const bool decoding = p.decoding && p.decoding[item.seq];
    const auto tiles = tile::StreamingTiles<kKeys>::make(decoding ? p.windows.decode_sink : p.windows.prefill_sink,
                                                         decoding ? p.windows.decode_local : p.windows.prefill_local,
                                                         first_q, last_q);
    prefill_tile_hopper<D, kStages>(p, item, tiles, q0, ctx, row_end, smem);
  } else {
    prefill_tile_hopper<D, kStages>(p, item, tile::DenseCausalTiles<kKeys>{last_q + 1}, q0, ctx, row_end, smem);
  }
#else
  (void)p;
  (void)items;
#endif
}

template <int D, int kStages>
void launch(const AttentionParams& p, const PrefillItem* items, int32_t num_items, cudaStream_t stream) {
  constexpr size_t smem = Layout<D, kStages>::kSmem;
  static const bool attribute_set = [] {
    LSERVE_CUDA_CHECK(cudaFuncSetAttribute(prefill_hopper_kernel<D, kStages>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return true;
  }();
  (void)attribute_set;
  prefill_hopper_kernel<D, kStages>
      <<<dim3(static_cast<unsigned>(num_items), static_cast<unsigned>(p.num_kv_heads)), kThreads, smem, stream>>>(
          p, items);
  LSERVE_CUDA_CHECK_LAUNCH();
}

// Compute capability 9.0 (H100, H200) of the current device, looked up once per device.
bool device_is_sm90() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  LSERVE_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return false;
  int v = cached[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0, minor = 0;
    LSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    LSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    v = major == 9 && minor == 0 ? 2 : 1;
    cached[dev].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

}  // namespace

bool prefill_hopper_supports(int head_dim) { return (head_dim == 64 || head_dim == 128) && device_is_sm90(); }

void attention_prefill_hopper(const AttentionParams& p, const PrefillItem* items, int32_t num_items,
                              cudaStream_t stream) {
  if (num_items == 0) return;
  switch (p.head_dim) {
    // K/V stages: at d 128 a third stage fits (224 KB in all) but measured slower.
    case 64: return launch<64, 3>(p, items, num_items, stream);
    case 128: return launch<128, 2>(p, items, num_items, stream);
    default: cuda_fail(cudaErrorInvalidValue, "attention_prefill_hopper: unsupported head_dim", __FILE__, __LINE__);
  }
}

}  // namespace lserve::cuda
