// The CUDA backend: bf16 weights, activations and KV cache on one GPU, f32 accumulation
// everywhere. Matrix products through cuBLASLt; norms, RoPE, SwiGLU, embedding and KV append as
// fused kernels; paged attention on tensor cores (attention.h). All work is queued on one stream
// owned by the backend; download() and synchronize() wait for it.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace lserve {

struct CudaBackendOptions {
  int device = 0;
  // Route attention through the plain reference kernel (tests compare the fast kernels with it).
  bool reference_attention = false;
};

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);
inline std::unique_ptr<Backend> make_cuda_backend(int device) { return make_cuda_backend(CudaBackendOptions{device}); }

// Number of CUDA devices usable here (0 when there is no driver or no GPU); never throws.
int cuda_device_count();

}  // namespace lserve
