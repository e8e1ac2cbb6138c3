// Linear layers of a few rows of x: each warp owns two rows of weights (of one target; gated,
// two of gate and the same two of up) and streams them in 16-byte loads, two batches of four in
// flight per row and lane, against x held in shared memory; a warp reduction per output ends
// it. The reference it is tested against is cuBLASLt's path (and the CPU's linear). Weights are
// read with the streaming hint (.cs): they pass once per step and should not push the KV cache
// and the selector's key summaries out of L2.
// A linear whose product joins the residual stream (o_proj, down_proj) can end with the residual
// add and RMSNorm that follow it: the last block to finish runs them (norm_row.cuh), as the
// decode attention's last split merges, instead of a one-block kernel launched after it (64 a
// decode step of Llama-3-8B). Measured at 256K x1 on an H200 (one run each way): LServe's step
// 5.267 -> 5.230 ms, dense's 13.156 -> 13.126 ms; a launch in a CUDA graph costs far less than
// the 3.5 us ncu gives the separate kernel alone.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dependent_launch.cuh"
#include "backend/cuda/norm_row.cuh"
#include "backend/cuda/skinny_linear.h"
#include "backend/cuda/vec.cuh"

namespace lserve::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256, kWarps = kThreads / 32;
static_assert(kThreads == kNormRowThreads, "the fused norm reduces as add_rms_norm's blocks do");
constexpr int kRowsPerWarp = 2;  // weight rows of one target per warp (so every target's rows are even)
constexpr int kUnroll = 4;       // 16-byte weight loads in flight per row and lane
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr size_t kMaxSharedX = size_t{96} << 10;

// residual += product; normed = rms_norm(residual) * weight, after a single target's product,
// by the launch's last block to arrive (the counter wraps to zero then, ready for the next).
struct NormTail {
  bf16* residual = nullptr;  // [M, rows]
  const bf16* weight = nullptr;
  bf16* normed = nullptr;  // [M, rows]
  float eps = 0.0f;
  uint32_t* arrivals = nullptr;
};

struct Params {
  const bf16* x;  // [M, K], rows contiguous
  int32_t k8;     // K / 8: 16-byte chunks per row
  SkinnyTarget t[kSkinnyMaxTargets];
  int32_t first_row[kSkinnyMaxTargets + 1];  // each target's first row in the stacked rows, then the total
  int32_t num_targets;                       // gated: 1 (t[0] gate and the output, t[1] up)
  NormTail tail;                             // with the kernel's Tail: after t[0], the only target
};

// 8 bf16 (little-endian pairs) to f32: a bf16 is the top half of its f32.
__device__ inline void unpack(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ inline float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }  // as activation.cu

// After this block's outputs are written: the last block of the launch to arrive adds the whole
// product to the residual and normalizes it, one row at a time (every block's product is in L2
// or memory by then; the row reads it through L2).
template <int M>
__device__ void add_rms_norm_after(const Params& p) {
  __shared__ float scratch[32];
  __shared__ bool last;
  __threadfence();  // this block's outputs before its arrival
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(p.tail.arrivals, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int cols = static_cast<int>(p.t[0].rows);
  for (int m = 0; m < M; ++m)
    add_rms_norm_row8(p.tail.residual + int64_t{m} * cols, p.t[0].out + int64_t{m} * cols, p.tail.weight, p.tail.eps,
                      p.tail.normed + int64_t{m} * cols, cols, scratch);
}

template <int M, bool Gated, bool Tail>
__global__ void __launch_bounds__(kThreads) skinny_kernel(const Params p) {
  static_assert(!(Gated && Tail), "the fused norm follows a single linear");
  extern __shared__ uint4 xs[];  // x: [M][K / 8]
  const int k8 = p.k8;
  const int lane = threadIdx.x % 32;
  const int row = (blockIdx.x * kWarps + threadIdx.x / 32) * kRowsPerWarp;  // in the stacked rows
  const bool active = row < p.first_row[p.num_targets];
  int j = 0;
  while (j + 1 < p.num_targets && row >= p.first_row[j + 1]) ++j;
  const int64_t r0 = row - p.first_row[j];
  constexpr int W = Gated ? 2 * kRowsPerWarp : kRowsPerWarp;  // weight rows this warp streams
  const uint4* w[W];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    w[r] = reinterpret_cast<const uint4*>(p.t[j].weight) + (r0 + r) * k8;
    if constexpr (Gated) w[kRowsPerWarp + r] = reinterpret_cast<const uint4*>(p.t[1].weight) + (r0 + r) * k8;
  }
  // Two batches of weight loads in flight: the next is issued before the current is used; the
  // first goes out before x is staged, while the kernel that writes x may still be finishing
  // (dependent_launch.cuh).
  uint4 next[kUnroll][W];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < W; ++r) next[u][r] = c < k8 ? __ldcs(w[r] + c) : make_uint4(0, 0, 0, 0);
    }
  };
  allow_next_kernel();
  if (active) load(lane);  // weights: no kernel writes them, so before the wait
  wait_for_previous_kernels();
  const auto* x = reinterpret_cast<const uint4*>(p.x);
  for (int i = threadIdx.x; i < M * k8; i += kThreads) xs[i] = x[i];
  __syncthreads();
  if (active) {  // (an inactive warp of the last block still joins the fused norm)
    float acc[W][M];
#pragma unroll
    for (int r = 0; r < W; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
    for (int c0 = lane; c0 < k8; c0 += 32 * kUnroll) {
      uint4 wv[kUnroll][W];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int r = 0; r < W; ++r) wv[u][r] = next[u][r];
      if (c0 + 32 * kUnroll < k8) load(c0 + 32 * kUnroll);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + 32 * u;
        if (c >= k8) break;
        float wf[W][8];
#pragma unroll
        for (int r = 0; r < W; ++r) unpack(wv[u][r], wf[r]);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float xf[8];
          unpack(xs[m * k8 + c], xf);
#pragma unroll
          for (int r = 0; r < W; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < W; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]);

    // Every lane holds every sum; lane r * M + m writes output (m, r0 + r).
    const SkinnyTarget& t = p.t[j];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        if (lane != r * M + m) continue;
        float v;
        if constexpr (Gated) {
          const float g = __bfloat162float(__float2bfloat16_rn(acc[r][m]));
          const float u = __bfloat162float(__float2bfloat16_rn(acc[kRowsPerWarp + r][m]));
          v = silu_times(g, u);
        } else {
          v = acc[r][m];
          if (t.bias) v += __bfloat162float(t.bias[r0 + r]);
        }
        t.out[m * t.rows + r0 + r] = __float2bfloat16_rn(v);
      }
  }
  if constexpr (Tail) add_rms_norm_after<M>(p);
}

template <int M, bool Gated, bool Tail>
void launch(const Params& p, cudaStream_t stream) {
  static const bool configured = [] {  // once per instantiation: more than 48 KiB of x
    LSERVE_CUDA_CHECK(cudaFuncSetAttribute(skinny_kernel<M, Gated, Tail>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kMaxSharedX)));
    return true;
  }();
  (void)configured;
  const int rows = p.first_row[p.num_targets];
  const unsigned blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  launch_dependent(skinny_kernel<M, Gated, Tail>, dim3(blocks), dim3(kThreads), static_cast<size_t>(M) * p.k8 * 16, stream, p);
}

template <bool Gated, bool Tail = false>
void dispatch(const Params& p, int64_t tokens, cudaStream_t stream) {
  switch (tokens) {  // tokens was checked: 1..kSkinnyMaxTokens
    case 1: return launch<1, Gated, Tail>(p, stream);
    case 2: return launch<2, Gated, Tail>(p, stream);
    case 3: return launch<3, Gated, Tail>(p, stream);
    case 4: return launch<4, Gated, Tail>(p, stream);
    case 5: return launch<5, Gated, Tail>(p, stream);
    case 6: return launch<6, Gated, Tail>(p, stream);
    case 7: return launch<7, Gated, Tail>(p, stream);
    default: return launch<8, Gated, Tail>(p, stream);
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

static_assert(kSkinnyMaxTokens * kRowsPerWarp <= 32, "one lane per output of a warp");

}  // namespace

bool skinny_linear_supports(int64_t tokens, int64_t K, const bf16* x, const SkinnyTarget* targets, int num_targets) {
  if (tokens < 1 || tokens > kSkinnyMaxTokens || K <= 0 || K % 8 != 0 || !aligned16(x)) return false;
  if (static_cast<size_t>(tokens * K) * sizeof(bf16) > kMaxSharedX) return false;
  if (num_targets < 1 || num_targets > kSkinnyMaxTargets) return false;
  int64_t rows = 0;
  for (int i = 0; i < num_targets; ++i) {
    const SkinnyTarget& t = targets[i];
    if (!t.weight || !t.out || !aligned16(t.weight) || t.rows <= 0 || t.rows % kRowsPerWarp != 0) return false;
    rows += t.rows;
  }
  return rows <= (int64_t{1} << 30);
}

bool skinny_linear(const bf16* x, int64_t tokens, int64_t K, const SkinnyTarget* targets, int num_targets,
                   cudaStream_t stream) {
  if (!skinny_linear_supports(tokens, K, x, targets, num_targets)) return false;
  Params p{};
  p.x = x;
  p.k8 = static_cast<int32_t>(K / 8);
  p.num_targets = num_targets;
  for (int i = 0; i < num_targets; ++i) {
    p.t[i] = targets[i];
    p.first_row[i + 1] = p.first_row[i] + static_cast<int32_t>(targets[i].rows);
  }
  dispatch<false>(p, tokens, stream);
  return true;
}

bool skinny_gated_linear(const bf16* x, int64_t tokens, int64_t K, const bf16* gate, const bf16* up, int64_t rows,
                         bf16* out, cudaStream_t stream) {
  const SkinnyTarget pair[2] = {{gate, nullptr, out, rows}, {up, nullptr, out, rows}};
  if (!skinny_linear_supports(tokens, K, x, pair, 2)) return false;
  Params p{};
  p.x = x;
  p.k8 = static_cast<int32_t>(K / 8);
  p.num_targets = 1;
  p.t[0] = pair[0];
  p.t[1] = pair[1];
  p.first_row[1] = static_cast<int32_t>(rows);
  dispatch<true>(p, tokens, stream);
  return true;
}

bool skinny_linear_add_rms_norm(const bf16* x, int64_t tokens, int64_t K, const bf16* weight, int64_t rows, bf16* out,
                                bf16* residual, const bf16* norm_weight, float eps, bf16* normed, uint32_t* arrivals,
                                cudaStream_t stream) {
  const SkinnyTarget target{weight, nullptr, out, rows};
  if (!skinny_linear_supports(tokens, K, x, &target, 1) || !arrivals) return false;
  if (!vec8_ok(rows, out, residual, norm_weight, normed)) return false;  // the norm's vector path only
  Params p{};
  p.x = x;
  p.k8 = static_cast<int32_t>(K / 8);
  p.num_targets = 1;
  p.t[0] = target;
  p.first_row[1] = static_cast<int32_t>(rows);
  p.tail = NormTail{residual, norm_weight, normed, eps, arrivals};
  dispatch<false, true>(p, tokens, stream);
  return true;
}

}  // namespace lserve::cuda
