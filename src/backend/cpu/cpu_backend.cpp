// The CPU backend: f32 activations and KV, OpenMP across rows/heads, OpenBLAS for the matrix
// products. Weight matrices stay bf16 when stored so (cpu_linear.h says why); everything else
// is f32.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "backend/attention_batch.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_attention.h"
#include "backend/cpu/cpu_linear.h"
#include "kv/kv_cache.h"
#include "sparse/sparsity_config.h"

namespace lserve {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads) {
    if (num_threads > 0) omp_set_num_threads(num_threads);
    // BLAS runs from the main thread between our parallel regions: give it every core.
    openblas_set_num_threads(omp_get_max_threads());
  }

  Device device() const override { return Device::Cpu; }
  std::string name() const override { return fmt::format("cpu ({} threads)", omp_get_max_threads()); }
  DType compute_dtype() const override { return DType::F32; }

  std::shared_ptr<DeviceMemory> allocate(size_t bytes) override { return std::make_shared<HostMemory>(bytes); }
  void upload(Tensor dst, const void* src) override { std::memcpy(dst.data, src, dst.nbytes()); }
  void download(const Tensor& src, void* dst) override { std::memcpy(dst, src.data, src.nbytes()); }

  // f32 weights, and bf16 weight matrices, are used in place from the mapped file (bf16 is
  // widened inside the matrix kernels: cpu_linear.h has the measurements). f16 matrices and all
  // vectors (norms, biases) are converted to f32 once: f16 widening has no cheap bit trick, and
  // vectors are tiny.
  Tensor prepare_weight(const Tensor& host, std::shared_ptr<DeviceMemory>* keep) override {
    if (host.dtype == DType::F32) return host;
    if (host.dtype == DType::BF16 && host.shape.ndim == 2) return host;
    auto mem = allocate(static_cast<size_t>(host.numel()) * sizeof(float));
    Tensor out = mem->view(DType::F32, host.shape, Device::Cpu);
    const int64_t n = host.numel();
    constexpr int64_t kChunk = 1 << 16;
    const size_t esize = dtype_size(host.dtype);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c) {
      const int64_t begin = c * kChunk, count = std::min(kChunk, n - begin);
      convert_to_f32(static_cast<const char*>(host.data) + begin * static_cast<int64_t>(esize), host.dtype,
                     out.as<float>() + begin, static_cast<size_t>(count));
    }
    *keep = std::move(mem);
    return out;
  }

  void gather_rows(const Tensor& src, std::span<const int32_t> rows, Tensor dst) override {
    const size_t row_bytes = src.nbytes() / static_cast<size_t>(src.dim(0));
    for (size_t i = 0; i < rows.size(); ++i) {
      LSERVE_CHECK(rows[i] >= 0 && rows[i] < src.dim(0), "row {} outside [0, {})", rows[i], src.dim(0));
      std::memcpy(static_cast<char*>(dst.data) + i * row_bytes, static_cast<const char*>(src.data) + static_cast<size_t>(rows[i]) * row_bytes, row_bytes);
    }
  }

  void embedding(const Tensor& ids, const Tensor& table, Tensor out) override {
    const int64_t T = ids.numel(), H = table.dim(1), V = table.dim(0);
    const int32_t* id = ids.as<int32_t>();
    for (int64_t t = 0; t < T; ++t)
      if (id[t] < 0 || id[t] >= V) fail("token id {} is outside the vocabulary of {}", id[t], V);
    const size_t row_bytes = static_cast<size_t>(H) * dtype_size(table.dtype);
    for (int64_t t = 0; t < T; ++t)
      convert_to_f32(static_cast<const char*>(table.data) + static_cast<size_t>(id[t]) * row_bytes, table.dtype,
                     out.as<float>() + t * H, static_cast<size_t>(H));
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    const int64_t T = x.dim(0), H = x.dim(1);
    const float* w = weight.as<float>();
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; ++t) normalize_row(x.as<float>() + t * H, w, H, eps, out.as<float>() + t * H);
  }

  void add_rms_norm(Tensor residual, const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    const int64_t T = x.dim(0), H = x.dim(1);
    const float* w = weight.as<float>();
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; ++t) {
      float* r = residual.as<float>() + t * H;
      const float* xi = x.as<float>() + t * H;
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) r[i] += xi[i];
      normalize_row(r, w, H, eps, out.as<float>() + t * H);
    }
  }

  void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) override {
    cpu_linear(x, weight, out);
    if (bias.empty()) return;
    const int64_t T = out.dim(0), N = out.dim(1);
    const float* b = bias.as<float>();
#pragma omp parallel for schedule(static) if (T > 16)
    for (int64_t t = 0; t < T; ++t) {
      float* o = out.as<float>() + t * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) o[n] += b[n];
    }
  }

  void head_rms_norm(Tensor x, int64_t head_dim, const Tensor& weight, float eps) override {
    const int64_t rows = x.numel() / head_dim;
    const float* w = weight.as<float>();
#pragma omp parallel for schedule(static) if (rows > 64)
    for (int64_t r = 0; r < rows; ++r) {
      float* p = x.as<float>() + r * head_dim;
      normalize_row(p, w, head_dim, eps, p);
    }
  }

  void rope(Tensor q, Tensor k, const Tensor& positions, const Tensor& cos_sin, int64_t head_dim) override {
    const int64_t T = q.dim(0);
    const int64_t hq = q.dim(1) / head_dim, hk = k.dim(1) / head_dim, half = head_dim / 2;
    const int32_t* pos = positions.as<int32_t>();
    const int64_t max_pos = cos_sin.dim(0);
    for (int64_t t = 0; t < T; ++t)  // checked here: an exception must not leave a parallel region
      LSERVE_CHECK(pos[t] >= 0 && pos[t] < max_pos, "position {} outside the RoPE table of {}", pos[t], max_pos);
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; ++t) {
      const float* cs = cos_sin.as<float>() + pos[t] * head_dim;
      auto rotate = [&](float* x) {
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half], c = cs[i], s = cs[half + i];
          x[i] = x1 * c - x2 * s;
          x[i + half] = x2 * c + x1 * s;
        }
      };
      for (int64_t h = 0; h < hq; ++h) rotate(q.as<float>() + (t * hq + h) * head_dim);
      for (int64_t h = 0; h < hk; ++h) rotate(k.as<float>() + (t * hk + h) * head_dim);
    }
  }

  void silu_mul(const Tensor& gate, const Tensor& up, Tensor out) override {
    const int64_t T = out.dim(0), F = out.dim(1);
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; ++t) {
      const float* g = gate.as<float>() + t * F;
      const float* u = up.as<float>() + t * F;
      float* o = out.as<float>() + t * F;
      for (int64_t i = 0; i < F; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  }

  // Writes each new token's k and v into the pool of its head's kind; for retrieval heads, also
  // folds the key into its logical page's per-channel min/max (the first token of a logical
  // page resets them, so a reused page never mixes in stale keys). Parallel over heads, tokens
  // in order within a head: a logical page's reset and updates never race.
  void kv_append(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                 const AttentionBatch& batch) override {
    const int64_t Hk = cache.num_kv_heads(), D = cache.head_dim(), P = cache.page_size();
    const int64_t LP = cache.logical_page_size();
    const bool summaries = LP > 0 && cache.heads_in_pool(HeadKind::Retrieval, layer) > 0;
    const Tensor kp[2] = {cache.k_pages(layer, HeadKind::Retrieval), cache.k_pages(layer, HeadKind::Streaming)};
    const Tensor vp[2] = {cache.v_pages(layer, HeadKind::Retrieval), cache.v_pages(layer, HeadKind::Streaming)};
    float* kmin = summaries ? cache.key_min(layer).as<float>() : nullptr;
    float* kmax = summaries ? cache.key_max(layer).as<float>() : nullptr;
    const int64_t T = k.dim(0);
#pragma omp parallel for schedule(static) if (T > 16)
    for (int64_t h = 0; h < Hk; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        const HeadSlot slot = cache.slot(layer, h);
        const int kind = static_cast<int>(slot.kind);
        const int64_t slot_id = slot.kind == HeadKind::Retrieval ? batch.slot_mapping[static_cast<size_t>(t)]
                                                                 : batch.streaming_slot_mapping[static_cast<size_t>(t)];
        const int64_t page = slot_id / P, off = slot_id % P, heads = kp[kind].dim(1);
        const size_t dst = static_cast<size_t>(((page * heads + slot.index) * P + off) * D);
        const float* ksrc = k.as<float>() + (t * Hk + h) * D;
        std::memcpy(kp[kind].as<float>() + dst, ksrc, static_cast<size_t>(D) * sizeof(float));
        std::memcpy(vp[kind].as<float>() + dst, v.as<float>() + (t * Hk + h) * D, static_cast<size_t>(D) * sizeof(float));
        if (slot.kind == HeadKind::Retrieval && summaries) {
          const size_t s = static_cast<size_t>(((page * heads + slot.index) * (P / LP) + off / LP) * D);
          if (off % LP == 0) {
            std::memcpy(kmin + s, ksrc, static_cast<size_t>(D) * sizeof(float));
            std::memcpy(kmax + s, ksrc, static_cast<size_t>(D) * sizeof(float));
          } else {
            for (int64_t d = 0; d < D; ++d) {
              kmin[s + static_cast<size_t>(d)] = std::min(kmin[s + static_cast<size_t>(d)], ksrc[d]);
              kmax[s + static_cast<size_t>(d)] = std::max(kmax[s + static_cast<size_t>(d)], ksrc[d]);
            }
          }
        }
      }
    }
  }

  void attention(const KvCache& cache, int64_t layer, const Tensor& q, const AttentionBatch& batch, float scale,
                 Tensor out) override {
    const bool summaries = cache.logical_page_size() > 0 && cache.heads_in_pool(HeadKind::Retrieval, layer) > 0;
    std::vector<HeadSlot> slots(static_cast<size_t>(cache.num_kv_heads()));
    for (int64_t h = 0; h < cache.num_kv_heads(); ++h) slots[static_cast<size_t>(h)] = cache.slot(layer, h);
    CpuAttentionArgs args{};
    args.q = q.as<float>();
    args.out = out.as<float>();
    args.num_heads = q.dim(1) / cache.head_dim();
    args.num_kv_heads = cache.num_kv_heads();
    args.head_dim = cache.head_dim();
    args.page_size = cache.page_size();
    args.scale = scale;
    for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
      const int i = static_cast<int>(kind);
      args.k[i] = cache.k_pages(layer, kind).as<float>();
      args.v[i] = cache.v_pages(layer, kind).as<float>();
      args.pool_heads[i] = cache.heads_in_pool(kind, layer);
    }
    args.slots = slots.data();
    args.key_min = summaries ? cache.key_min(layer).as<float>() : nullptr;
    args.key_max = summaries ? cache.key_max(layer).as<float>() : nullptr;
    args.logical_page_size = cache.logical_page_size();
    args.layer = layer;
    if (batch.selects_pages() && !summaries && cache.heads_in_pool(HeadKind::Retrieval, layer) > 0)
      fail("page selection needs a KV cache with key summaries (logical page size > 0)");
    cpu_paged_attention(args, batch);
  }

  void synchronize() override {}

 private:
  // HF's RMSNorm: mean of squares in f32, x * rsqrt(mean + eps), then times the weight.
  static void normalize_row(const float* x, const float* w, int64_t n, float eps, float* out) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) { return std::make_unique<CpuBackend>(num_threads); }

}  // namespace lserve
