// Times the linear layers of one Llama-3-8B decoder layer (hidden 4096, 32/8 heads of 128,
// FFN 14336) at decode-sized batches, each against the copy bandwidth (at a few rows a linear
// layer is a pass over its weights): a CUDA backend with cuBLASLt only, against the default one,
// which takes our skinny kernel (skinny_linear.h) where it wins and cuBLASLt elsewhere. q/k/v
// and gate/up go through the ops the model calls (linear_group, gated_linear), so the first
// column is three linears, or two and silu_mul.
// Then o_proj and down_proj with the residual add and RMSNorm after them (linear_add_rms_norm),
// at one and two rows: the norm as its own kernel, against the end of the linear's kernel.
// Every timed call cycles over enough copies of its weights (at least 512 MiB) that none is
// still in L2 when it comes round again; times are medians of timed repeats.
//
//   cuda_linear_timing [dependent-launch]   (the option: programmatic dependent launch, for comparison)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "copy_bandwidth.h"

namespace lserve {
namespace {

constexpr int64_t kHidden = 4096, kHeads = 32, kKvHeads = 8, kHeadDim = 128, kFfn = 14336;

using bench::copy_bandwidth;
using bench::median;

// A bf16 tensor on the GPU, filled with a constant pattern (speed does not depend on values).
struct Buffer {
  std::shared_ptr<DeviceMemory> mem;
  Tensor t;
};
Buffer make(Backend& gpu, int64_t rows, int64_t cols) {
  Buffer b;
  b.mem = gpu.allocate(static_cast<size_t>(rows * cols) * 2);
  LSERVE_CUDA_CHECK(cudaMemset(b.mem->data(), 0x3c, b.mem->size()));
  b.t = b.mem->view(DType::BF16, Shape{rows, cols}, Device::Cuda);
  return b;
}

// Median microseconds of op(copy) over the copies in turn, back to back on the GPU.
double time_us(Backend& gpu, int copies, const std::function<void(int)>& op) {
  for (int c = 0; c < copies; ++c) op(c);  // warm-up: plans, module loads
  gpu.synchronize();
  cudaEvent_t e0, e1;
  LSERVE_CUDA_CHECK(cudaEventCreate(&e0));
  LSERVE_CUDA_CHECK(cudaEventCreate(&e1));
  const int reps = std::max(copies, 48);
  std::vector<double> us;
  for (int sample = 0; sample < 7; ++sample) {
    LSERVE_CUDA_CHECK(cudaEventRecord(e0, cuda_stream_of(gpu)));
    for (int r = 0; r < reps; ++r) op(r % copies);
    LSERVE_CUDA_CHECK(cudaEventRecord(e1, cuda_stream_of(gpu)));
    LSERVE_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    LSERVE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    us.push_back(1e3 * static_cast<double>(ms) / reps);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(us);
}

struct Op {
  const char* name;
  std::vector<std::pair<int64_t, int64_t>> weights;  // (rows, K) of each weight the op reads
  enum Kind { Group, Gated, Single } kind;
};

int run(bool dependent_launch) {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "no CUDA GPU visible\n");
    return 1;
  }
  CudaBackendOptions cublas_only, ours;
  cublas_only.skinny_linear = false;
  cublas_only.dependent_launch = ours.dependent_launch = dependent_launch;
  auto cublas = make_cuda_backend(cublas_only);
  auto skinny = make_cuda_backend(ours);
  if (dependent_launch) std::printf("programmatic dependent launch\n");
  std::printf("%s\n", skinny->name().c_str());
  const double bw = copy_bandwidth();
  std::printf("copy bandwidth (device to device, read + write): %.0f GB/s\n\n", bw);
  const std::vector<Op> ops = {
      {"q, k, v (linear_group)", {{kHeads * kHeadDim, kHidden}, {kKvHeads * kHeadDim, kHidden}, {kKvHeads * kHeadDim, kHidden}}, Op::Group},
      {"o_proj", {{kHidden, kHeads * kHeadDim}}, Op::Single},
      {"gate, up + silu (gated_linear)", {{kFfn, kHidden}, {kFfn, kHidden}}, Op::Gated},
      {"down_proj", {{kHidden, kFfn}}, Op::Single},
  };
  std::printf("%-32s %4s %9s %9s %9s %9s %8s %8s\n", "linear (Llama-3-8B layer)", "rows", "MB", "cuBLASLt", "default",
              "speedup", "cuBLAS %", "default %");
  for (int64_t T : {1, 2, 4, 8}) {
    double layer_cublas = 0, layer_skinny = 0, layer_bytes = 0;
    for (const Op& op : ops) {
      double bytes = 0;
      for (const auto& [rows, K] : op.weights) bytes += static_cast<double>(rows * K) * 2;
      const int copies = std::max(2, static_cast<int>((512.0 * 1048576) / bytes) + 1);
      double us[2];
      Backend* backends[2] = {cublas.get(), skinny.get()};
      for (int which = 0; which < 2; ++which) {
        Backend& gpu = *backends[which];
        const int64_t K = op.weights[0].second;
        Buffer x = make(gpu, T, K);
        std::vector<std::vector<Buffer>> w(static_cast<size_t>(copies));
        std::vector<Buffer> outs;
        for (auto& set : w)
          for (const auto& [rows, k] : op.weights) set.push_back(make(gpu, rows, k));
        for (const auto& [rows, k] : op.weights) outs.push_back(make(gpu, T, rows));
        const Tensor none;
        us[which] = time_us(gpu, copies, [&](int c) {
          const auto& set = w[static_cast<size_t>(c)];
          switch (op.kind) {
            case Op::Group: {
              std::vector<Backend::LinearOut> o;
              for (size_t i = 0; i < set.size(); ++i) o.push_back({&set[i].t, &none, outs[i].t});
              gpu.linear_group(x.t, o);
              break;
            }
            case Op::Gated: gpu.gated_linear(x.t, set[0].t, set[1].t, outs[0].t, outs[1].t, outs[0].t); break;
            case Op::Single: gpu.linear(x.t, set[0].t, none, outs[0].t); break;
          }
        });
      }
      const double pct0 = 100.0 * bytes / (us[0] * 1e3) / bw, pct1 = 100.0 * bytes / (us[1] * 1e3) / bw;
      std::printf("%-32s %4lld %9.1f %8.1fus %8.1fus %8.2fx %7.0f%% %7.0f%%\n", op.name, static_cast<long long>(T),
                  bytes / 1e6, us[0], us[1], us[0] / us[1], pct0, pct1);
      layer_cublas += us[0];
      layer_skinny += us[1];
      layer_bytes += bytes;
    }
    std::printf("%-32s %4lld %9.1f %8.1fus %8.1fus %8.2fx %7.0f%% %7.0f%%\n\n", "the layer's linears",
                static_cast<long long>(T), layer_bytes / 1e6, layer_cublas, layer_skinny, layer_cublas / layer_skinny,
                100.0 * layer_bytes / (layer_cublas * 1e3) / bw, 100.0 * layer_bytes / (layer_skinny * 1e3) / bw);
  }
  std::printf("%% = weight bytes read over the time, against the copy bandwidth\n\n");

  CudaBackendOptions apart_options = ours;
  apart_options.fused_linear_norm = false;
  auto apart = make_cuda_backend(apart_options);
  std::printf("%-32s %4s %9s %9s %9s %9s\n", "linear, residual add and norm", "rows", "MB", "apart", "fused", "speedup");
  const std::vector<Op> normed_ops = {{"o_proj + add_rms_norm", {{kHidden, kHeads * kHeadDim}}, Op::Single},
                                      {"down_proj + add_rms_norm", {{kHidden, kFfn}}, Op::Single}};
  for (int64_t T : {1, 2}) {
    for (const Op& op : normed_ops) {
      const auto [N, K] = op.weights[0];
      const double bytes = static_cast<double>(N * K) * 2;
      const int copies = std::max(2, static_cast<int>((512.0 * 1048576) / bytes) + 1);
      double us[2];
      Backend* backends[2] = {apart.get(), skinny.get()};
      for (int which = 0; which < 2; ++which) {
        Backend& gpu = *backends[which];
        Buffer x = make(gpu, T, K), product = make(gpu, T, N), residual = make(gpu, T, N), normed = make(gpu, T, N);
        Buffer norm_weight = make(gpu, 1, N);
        std::vector<Buffer> w;
        for (int c = 0; c < copies; ++c) w.push_back(make(gpu, N, K));
        const Tensor nw = norm_weight.mem->view(DType::BF16, Shape{N}, Device::Cuda);
        us[which] = time_us(gpu, copies, [&](int c) {
          gpu.linear_add_rms_norm(x.t, w[static_cast<size_t>(c)].t, product.t, residual.t, nw, 1e-5f, normed.t);
        });
      }
      std::printf("%-32s %4lld %9.1f %8.1fus %8.1fus %8.2fx\n", op.name, static_cast<long long>(T), bytes / 1e6, us[0],
                  us[1], us[0] / us[1]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  try {
    return lserve::run(argc > 1 && std::string(argv[1]) == "dependent-launch");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_linear_timing: %s\n", e.what());
    return 1;
  }
}
