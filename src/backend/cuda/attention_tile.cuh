// Building blocks of the tensor-core attention kernels (attention_prefill.cu, attention_decode.cu):
// PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16 bf16 -> f32), the paged KV tile loader, the
// KV tile iterators, and the per-warp steps of flash attention on register fragments.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, lane = 4 * group + quad):
//   A 16x16 (row): a0 (group, 2quad..+1) a1 (group+8, ..) a2 (group, 8+2quad..) a3 (group+8, 8+..)
//   B 16x8  (col): b0 (k = 2quad..+1, n = group)  b1 (k = 8+2quad..+1, n = group)
//   C 16x8       : c0,c1 (group, 2quad..+1)  c2,c3 (group+8, 2quad..+1)
// so a thread owns two rows of every score tile (group and group+8) and the score accumulators
// of two adjacent n8 tiles are exactly the A fragment of P for the P.V product (no shuffles).
//
// Shared-memory tiles are row-major with rows padded by 16 bytes (stride head_dim + 8): the 8
// row addresses of each ldmatrix phase then fall in distinct bank groups for every head_dim.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/attention.h"

namespace lserve::cuda::tile {

constexpr float kLog2e = 1.4426950408889634f;

__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, asynchronously; !valid writes zeros (src-size 0 reads nothing).
__device__ inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// c += a * b, 16x8x16, bf16 inputs, f32 accumulators.
__device__ inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16x2, the first in the low half (the lower column of a fragment pair).
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- KV tile iterators: which keys a query tile visits, tile by tile ----
// Interface: count(); begin(i), end(i): the keys [begin, end) of the i-th tile, end - begin at
// most the tile size; visible(key, q): whether a query at position q sees the key (the kernel
// also masks keys at or past end(i)); needs_mask(i, first_q, last_q): whether tile i holds a key
// some query in [first_q, last_q] must not see, so the kernel masks only those tiles. The
// sparse policies add iterators of this shape and reuse the kernels.

// Dense causal: every tile from key 0 to the last key the tile's queries may see.
template <int kKeys>
struct DenseCausalTiles {
  int32_t key_end;  // one past the last visible key
  __device__ int32_t count() const { return (key_end + kKeys - 1) / kKeys; }
  __device__ int32_t begin(int32_t i) const { return i * kKeys; }
  __device__ int32_t end(int32_t i) const { return min(key_end, (i + 1) * kKeys); }
  __device__ bool visible(int32_t key, int32_t q) const { return key <= q; }
  __device__ bool needs_mask(int32_t i, int32_t first_q, int32_t last_q) const {
    (void)last_q;
    return begin(i) + kKeys - 1 > first_q || end(i) < begin(i) + kKeys;
  }
};

// A streaming head (the Lambda mask): the sink tiles, keys [0, sink_end), then the band tiles
// from the oldest key the first query's local window reaches to the last query. Keys between
// are never visited; the band's lower edge and the causal edge are masked token-exactly.
template <int kKeys>
struct StreamingTiles {
  int32_t sink, local;        // the window
  int32_t sink_end;           // the sink tiles cover [0, sink_end)
  int32_t band_begin, key_end;  // the band tiles cover [band_begin, key_end)
  int32_t sink_tiles;

  __device__ static StreamingTiles make(int32_t sink, int32_t local, int32_t first_q, int32_t last_q) {
    StreamingTiles t;
    t.sink = sink;
    t.local = local;
    t.key_end = last_q + 1;
    t.band_begin = max(0, first_q - local + 1);
    t.sink_end = min(sink, t.band_begin);  // a sink the band reaches is walked as band
    t.sink_tiles = (t.sink_end + kKeys - 1) / kKeys;
    return t;
  }
  __device__ int32_t count() const { return sink_tiles + (key_end - band_begin + kKeys - 1) / kKeys; }
  __device__ int32_t begin(int32_t i) const {
    return i < sink_tiles ? i * kKeys : band_begin + (i - sink_tiles) * kKeys;
  }
  __device__ int32_t end(int32_t i) const {
    return i < sink_tiles ? min(sink_end, (i + 1) * kKeys) : min(key_end, band_begin + (i - sink_tiles + 1) * kKeys);
  }
  __device__ bool visible(int32_t key, int32_t q) const { return key <= q && (key < sink || key > q - local); }
  __device__ bool needs_mask(int32_t i, int32_t first_q, int32_t last_q) const {
    const int32_t b = begin(i), e = end(i);
    const bool causal = b + kKeys - 1 > first_q || e < b + kKeys;
    const bool band = b <= last_q - local && e > sink;  // keys the last query's window has left
    return causal || band;
  }
};

// A contiguous key range [first, last) in tiles (one split of a decode).
template <int kKeys>
struct KeyRangeTiles {
  int32_t first, last;
  __device__ int32_t count() const { return (last - first + kKeys - 1) / kKeys; }
  __device__ int32_t begin(int32_t i) const { return first + i * kKeys; }
  __device__ int32_t end(int32_t i) const { return min(last, first + (i + 1) * kKeys); }
};

// The keys of [first, last) a streaming head's query at position q sees: the part in the sink,
// then the part in the local window, each walked as a range (empty parts give no tiles). Every
// key of every tile is visible, so no mask is needed beyond end(i).
template <int kKeys>
struct WindowedRangeTiles {
  KeyRangeTiles<kKeys> sink_part, band_part;
  __device__ static WindowedRangeTiles make(int32_t first, int32_t last, int32_t sink, int32_t local, int32_t q) {
    const int32_t sink_last = max(first, min(last, sink));
    const int32_t band_first = min(last, max(sink_last, max(first, q - local + 1)));
    return {{first, sink_last}, {band_first, last}};
  }
  __device__ int32_t count() const { return sink_part.count() + band_part.count(); }
  __device__ int32_t begin(int32_t i) const {
    const int32_t n = sink_part.count();
    return i < n ? sink_part.begin(i) : band_part.begin(i - n);
  }
  __device__ int32_t end(int32_t i) const {
    const int32_t n = sink_part.count();
    return i < n ? sink_part.end(i) : band_part.end(i - n);
  }
};

// Split `split` of `splits` of another walk's tiles (contiguous shares, the last ones possibly
// empty): a streaming head's window spread over the splits of a page list.
template <class Tiles>
struct TileSlice {
  Tiles all;
  int32_t first, n;
  __device__ static TileSlice make(const Tiles& all, int32_t split, int32_t splits) {
    const int32_t total = all.count(), per = (total + splits - 1) / max(splits, 1);
    const int32_t first = min(total, split * per);
    return {all, first, min(per, total - first)};
  }
  __device__ int32_t count() const { return n; }
  __device__ int32_t begin(int32_t i) const { return all.begin(first + i); }
  __device__ int32_t end(int32_t i) const { return all.end(first + i); }
};

// Entries [first, last) of a page list (page indices within the sequence, ascending): each page
// in tiles of kKeys keys (one tile when the page is no larger), keys past the sequence's end cut.
template <int kKeys>
struct PageListTiles {
  const int32_t* list;
  int32_t first, last, page_size, seq_len;
  __device__ int32_t per_page() const { return (page_size + kKeys - 1) / kKeys; }
  __device__ int32_t count() const { return max(0, last - first) * per_page(); }
  __device__ int32_t begin(int32_t i) const {
    return list[first + i / per_page()] * page_size + (i % per_page()) * kKeys;
  }
  __device__ int32_t end(int32_t i) const {
    const int32_t page_end = (list[first + i / per_page()] + 1) * page_size;
    return min(seq_len, min(page_end, begin(i) + kKeys));
  }
};

// Loads keys [key_begin, key_end) of one KV head into K and V tiles of kKeys rows (rows past the
// end are zero-filled, so masked keys never bring NaN from unwritten slots into P.V). Each key's
// page comes from the head's page table; one 16-byte cp.async per thread and step, threads of a
// row adjacent so a row is one coalesced 2*head_dim-byte read.
// A row's pool offset (a page-table load and a division by the page size) is computed once, by
// one of the row's threads, and shuffled to the others: computed by every thread for every
// chunk, the address arithmetic was a third of a decode block's instructions (ncu), on the path
// before its loads start.
template <int D, int kKeys, int kThreads>
__device__ inline void load_kv_tile(bf16* sk, bf16* sv, const AttentionParams& p, const HeadKv& hv, int32_t key_begin,
                                    int32_t key_end) {
  constexpr int kChunks = D / 8, kStride = D + 8;
  constexpr int kRowsPerPass = kThreads / kChunks, kPasses = kKeys / kRowsPerPass;
  static_assert(kThreads % 32 == 0 && 32 % kChunks == 0, "a row's threads are lanes of one warp");
  static_assert(kKeys % kRowsPerPass == 0 && kPasses <= kChunks, "each of a row's threads computes one pass's row");
  const int ch = threadIdx.x % kChunks, row0 = threadIdx.x / kChunks, first_lane = threadIdx.x % 32 - ch;
  int64_t mine = -1;  // the offset of row row0 + ch * kRowsPerPass, or -1 past the end
  if (ch < kPasses) {
    const int32_t key = key_begin + row0 + ch * kRowsPerPass;
    if (key < key_end) mine = hv.row(key, p.page_size) * D;
  }
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int row = row0 + pass * kRowsPerPass;
    const long long off = __shfl_sync(0xffffffffu, static_cast<long long>(mine), first_lane + pass);
    const bool valid = off >= 0;
    const int64_t at = valid ? off + ch * 8 : 0;
    cp_async_16(sk + row * kStride + ch * 8, hv.k + at, valid);
    cp_async_16(sv + row * kStride + ch * 8, hv.v + at, valid);
  }
}

// ---- per-warp flash-attention steps on fragments ----

// A fragments of a warp's 16 query rows (sq: the warp's first row).
template <int D>
__device__ inline void load_q_fragments(uint32_t (&qf)[D / 16][4], const bf16* sq, int lane) {
  constexpr int kStride = D + 8;
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) ldmatrix_x4(qf[kc], sq + (lane % 16) * kStride + kc * 16 + (lane / 16) * 8);
}

// s = Q K^T for the warp's 16 rows and NT * 8 keys starting at sk's first row.
template <int D, int NT>
__device__ inline void qk_scores(float (&s)[NT][4], const uint32_t (&qf)[D / 16][4], const bf16* sk, int lane) {
  constexpr int kStride = D + 8;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];  // b0, b1 of keys np*16..+7, then of keys np*16+8..+15
      ldmatrix_x4(b, sk + (np * 16 + lane % 8 + (lane / 16) * 8) * kStride + kc * 16 + ((lane / 8) % 2) * 8);
      mma_bf16(s[2 * np], qf[kc], b[0], b[1]);
      mma_bf16(s[2 * np + 1], qf[kc], b[2], b[3]);
    }
  }
}

// Online softmax step (log2 domain: s already times scale * log2 e). Per row: new max over the
// quad, rescale of the running sum and output, s replaced by exp2(s - max). m = -inf marks a row
// that has seen no key yet; exp2 of -inf gives the zeros that keep such rows empty.
template <int NT, int DT>
__device__ inline void softmax_step(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&o)[DT][4]) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float mx = m[hr];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float base = mx == -INFINITY ? 0.0f : mx;
    const float corr = exp2f(m[hr] - base);
    m[hr] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][2 * hr] = exp2f(s[nt][2 * hr] - base);
      s[nt][2 * hr + 1] = exp2f(s[nt][2 * hr + 1] - base);
      sum += s[nt][2 * hr] + s[nt][2 * hr + 1];
    }
    l[hr] = l[hr] * corr + sum;  // this thread's columns only; the quad is summed at the end
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][2 * hr] *= corr;
      o[dt][2 * hr + 1] *= corr;
    }
  }
}

// o += P V for NT * 8 keys starting at sv's first row (P = s as bf16).
template <int D, int NT>
__device__ inline void pv_accumulate(float (&o)[D / 8][4], const float (&s)[NT][4], const bf16* sv, int lane) {
  constexpr int kStride = D + 8;
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    const uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                           pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];  // b0, b1 of dims dp*16..+7, then of dims dp*16+8..+15
      ldmatrix_x4_trans(b, sv + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kStride + dp * 16 + (lane / 16) * 8);
      mma_bf16(o[2 * dp], a, b[0], b[1]);
      mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Sum of the row statistics over the quad that shares each row.
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace lserve::cuda::tile
