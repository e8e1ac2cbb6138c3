// The batch-invariant CPU linear (fixed_order_linear.h): register tiles over fixed_order_dot.h.
//
// A tile computes R rows x C columns of the output, one 8-lane accumulator per element, walking
// all of K: per group of 8 k it loads C weight vectors (bf16 widened by a shift into the high
// half) and R x vectors and does R * C FMAs. The shape of a tile changes the loads, never an
// element's arithmetic, so the driver picks shapes freely: wide tiles when the whole call is a
// few rows (decode: one pass over the weights), 4 x 3 (AVX2's 16 registers: 12 accumulators,
// 3 weights, 1 x) or 6 x 4 (32 registers with AVX-512VL) otherwise.
//
// Blocking: a block of rows whose x fits in L2 (kRowBlockBytes) is run against every column
// tile of the thread's columns; a column tile's weights (C rows of K) stay in L1/L2 while the
// block's row tiles reuse them. Threads own contiguous column ranges (a split never cuts K).
//
// Without AVX2 + FMA a tile is the scalar reference per element: slow but the same order.
#include "backend/cpu/fixed_order_linear.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "backend/cpu/fixed_order_dot.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LSERVE_FIXED_ORDER_AVX2 1
#endif

namespace lserve {

namespace {

#if defined(__AVX512VL__)
constexpr int kRows = 6, kCols = 4;  // 24 accumulators + 4 weights + 1 x of 32 registers
#else
constexpr int kRows = 4, kCols = 3;  // 12 accumulators + 3 weights + 1 x of 16 registers
#endif
constexpr int kMaxCols = 8;
constexpr int64_t kRowBlockBytes = 1 << 20;  // x rows of a row block: the L2 of one core
constexpr int64_t kBlockK = 1024;
// Decode tiles at most this large fetch the next tile ahead; longer rows stream well on their own
// (and a tile ahead would no longer fit in L1 next to the current one).
constexpr int64_t kSweepMaxBytes = 16 << 10;  // a column tile's weights for one K block stay in L1

// Columns per tile when the whole call has `rows` < kRows rows: as many as the registers hold,
// so that the weights are read once at the bandwidth of the memory.
constexpr int cols_for_few_rows(int rows) { return rows == 1 ? 8 : rows == 2 ? 6 : 4; }

#ifdef LSERVE_FIXED_ORDER_AVX2

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Keeps a loaded vector in a register. Without this GCC (znver tuning) folds the x load into
// each of the tile's FMAs as a memory operand, loading it C times, and the tile runs out of
// load slots (measured: 58 vs 83 GFLOP/s per core for 4 x 3).
inline void pin(__m256& v) {
#if defined(__AVX512VL__)
  asm("" : "+v"(v));
#else
  asm("" : "+x"(v));
#endif
}

inline float reduce(__m256 v) {  // fixed_order_dot.h's tree
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l + (l + 4)
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                          // (0 + 2), (1 + 3)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// One group of 8 k for the tile: x rows at stride ldx, weight rows at stride ldw. Whichever
// operand is fewer stays in registers while the other streams through one register.
template <int R, int C, typename W>
[[gnu::always_inline]] inline void tile_step(__m256 (&acc)[R][C], const float* x, int64_t ldx, const W* w,
                                             int64_t ldw) {
  if constexpr (R <= C) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) {
      xv[r] = _mm256_loadu_ps(x + r * ldx);
      pin(xv[r]);
    }
    for (int c = 0; c < C; ++c) {
      const __m256 wv = load8(w + c * ldw);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  } else {
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load8(w + c * ldw);
    for (int r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * ldx);
      pin(xv);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
}

// Walks k in [k0, k1) (multiples of 8, or k1 = K) of out[r * ldo + c] = dot(x row r, w row c)
// for r < R, c < C; x and w rows are K long, contiguous. The accumulators start at zero when
// k0 = 0 and are otherwise reloaded from `saved` ([R * C][8]), where a block that does not reach
// K leaves them: the same accumulators carry on, bit for bit. The block reaching K writes out.
// `ahead` (may be null): the next tile's weights (contiguous after this tile's), fetched in
// address order at the pace this tile reads its own. A decode pass reads C rows side by side;
// when rows are only a few KiB the hardware prefetcher does not keep up with those short
// streams (331 vs 139 us for the row-at-a-time GEMV at 768 x 2048, one core, without this).
template <int R, int C, typename W>
void tile(const float* x, const W* w, int64_t K, int64_t k0, int64_t k1, float* saved, float* out, int64_t ldo,
          const char* ahead) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      acc[r][c] = k0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(saved + (r * C + c) * kDotLanes);
  const int64_t K8 = K / kDotLanes * kDotLanes, end = std::min(k1, K8);
  constexpr int64_t kStepBytes = C * kDotLanes * static_cast<int64_t>(sizeof(W));  // read per step
  for (int64_t k = k0; k < end; k += kDotLanes) {
    if (ahead)
      for (int64_t b = 0; b < kStepBytes; b += 64) _mm_prefetch(ahead + k / kDotLanes * kStepBytes + b, _MM_HINT_T1);
    tile_step(acc, x + k, K, w + k, K);
  }
  if (k1 < K) {
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(saved + (r * C + c) * kDotLanes, acc[r][c]);
    return;
  }
  if (K8 < K) {  // the last group, zero-padded
    const auto n = static_cast<size_t>(K - K8);
    float xt[R][kDotLanes] = {};
    W wt[C][kDotLanes] = {};
    for (int r = 0; r < R; ++r) std::memcpy(xt[r], x + r * K + K8, n * sizeof(float));
    for (int c = 0; c < C; ++c) std::memcpy(wt[c], w + c * K + K8, n * sizeof(W));
    tile_step(acc, xt[0], kDotLanes, wt[0], kDotLanes);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * ldo + c] = reduce(acc[r][c]);
}

#else  // portable: the reference per element

template <int R, int C, typename W>
void tile(const float* x, const W* w, int64_t K, int64_t k0, int64_t k1, float* saved, float* out, int64_t ldo,
          const char* ahead) {
  (void)k0;
  (void)saved;
  (void)ahead;
  if (k1 < K) return;  // the whole dot at the last block
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * ldo + c] = fixed_order_dot(x + r * K, w + c * K, K);
}

#endif

// Tiles by shape: kTiles<W>[R - 1][C - 1] for R <= kRows, C <= kMaxCols.
template <typename W>
using TileFn = void (*)(const float*, const W*, int64_t, int64_t, int64_t, float*, float*, int64_t, const char*);

template <typename W, int R, int... Cs>
constexpr std::array<TileFn<W>, kMaxCols> tile_row(std::integer_sequence<int, Cs...>) {
  return {&tile<R, Cs + 1, W>...};
}
template <typename W, int... Rs>
constexpr std::array<std::array<TileFn<W>, kMaxCols>, kRows> tile_table(std::integer_sequence<int, Rs...>) {
  return {tile_row<W, Rs + 1>(std::make_integer_sequence<int, kMaxCols>{})...};
}
template <typename W>
constexpr auto kTiles = tile_table<W>(std::make_integer_sequence<int, kRows>{});

// Columns [n0, n1) of the output, all rows.
template <typename W>
void run_columns(const float* x, int64_t T, int64_t K, const W* w, int64_t N, float* out, int64_t n0, int64_t n1) {
  if (T < kRows) {  // one row tile: one pass over the weights, as wide as the registers allow
    const int rows = static_cast<int>(T), cols = cols_for_few_rows(rows);
    const bool sweep = cols * K * static_cast<int64_t>(sizeof(W)) <= kSweepMaxBytes;
    for (int64_t n = n0; n < n1; n += cols) {
      const int c = static_cast<int>(std::min<int64_t>(cols, n1 - n));
      const char* ahead = sweep && n + cols < n1 ? reinterpret_cast<const char*>(w + (n + cols) * K) : nullptr;
      kTiles<W>[rows - 1][c - 1](x, w + n * K, K, 0, K, nullptr, out + n, N, ahead);
    }
    return;
  }
  const int64_t block = std::max<int64_t>(kRows, kRowBlockBytes / (K * 4) / kRows * kRows);
  std::vector<float> saved(static_cast<size_t>((block + kRows) * kCols * kDotLanes));  // per row tile of a block
  for (int64_t t0 = 0; t0 < T; t0 += block) {
    const int64_t t1 = std::min(T, t0 + block);
    for (int64_t n = n0; n < n1; n += kCols) {
      const int c = static_cast<int>(std::min<int64_t>(kCols, n1 - n));
      for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
        const int64_t k1 = std::min(K, k0 + kBlockK);
        for (int64_t t = t0; t < t1; t += kRows) {
          const int r = static_cast<int>(std::min<int64_t>(kRows, t1 - t));
          kTiles<W>[r - 1][c - 1](x + t * K, w + n * K, K, k0, k1, saved.data() + (t - t0) * kCols * kDotLanes,
                                  out + t * N + n, N, nullptr);
        }
      }
    }
  }
}

template <typename W>
void run(const float* x, int64_t T, int64_t K, const W* w, int64_t N, float* out) {
  if (T == 0 || N == 0) return;
  // Column ranges in multiples of 24 (every tile width divides it), so only the last range has
  // a narrow edge tile.
  constexpr int64_t kAlign = 24;
  const int64_t units = (N + kAlign - 1) / kAlign;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t n0 = std::min(N, units * id / threads * kAlign), n1 = std::min(N, units * (id + 1) / threads * kAlign);
    if (n0 < n1) run_columns(x, T, K, w, N, out, n0, n1);
  }
}

}  // namespace

void fixed_order_linear(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* out) {
  run(x, T, K, w, N, out);
}

void fixed_order_linear(const float* x, int64_t T, int64_t K, const uint16_t* w, int64_t N, float* out) {
  run(x, T, K, w, N, out);
}

}  // namespace lserve
