// Formats CUDA and cuBLAS failures into lserve::Error (see cuda_check.h).
#include "backend/cuda/cuda_check.h"

#include <cublasLt.h>

#include <filesystem>

#include "core/error.h"

namespace lserve::cuda {

namespace {
std::string short_file(const char* file) { return std::filesystem::path(file).filename().string(); }
}  // namespace

void cuda_fail(cudaError_t err, const char* expr, const char* file, int line) {
  fail("CUDA error at {}:{}: {} failed: {} ({})", short_file(file), line, expr, cudaGetErrorString(err),
       cudaGetErrorName(err));
}

void cublas_fail(int status, const char* expr, const char* file, int line) {
  fail("cuBLAS error at {}:{}: {} failed: {} ({})", short_file(file), line, expr,
       cublasLtGetStatusString(static_cast<cublasStatus_t>(status)),
       cublasLtGetStatusName(static_cast<cublasStatus_t>(status)));
}

}  // namespace lserve::cuda
