#include "backend/cuda/cuda_linear.h"

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

#define LSERVE_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                       \
    const cublasStatus_t lserve_cublas_status_ = (expr);                                     \
    if (lserve_cublas_status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                         \
      ::lserve::cuda::cublas_fail(static_cast<int>(lserve_cublas_status_), #expr, __FILE__, __LINE__); \
  } while (0)

namespace lserve::cuda {

namespace {
// cuBLASLt's recommended workspace on Hopper; lets it pick split-K and stream-K kernels.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMaxPlans = 4096;  // shapes seen; cleared past this (prefill chunk lengths vary)

int alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  return align;
}
}  // namespace

// Column-major view of the row-major product: out^T [N, T] = W [N, K] . x^T [K, T], i.e. A = the
// weight as a K x N column-major matrix used transposed, B = x^T as K x T, C = D = out^T as N x T.
struct CublasLtLinear::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

CublasLtLinear::CublasLtLinear(cudaStream_t stream) : stream_(stream) {
  LSERVE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_ = std::make_unique<CudaMemory>(kWorkspaceBytes);
}

CublasLtLinear::~CublasLtLinear() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

CublasLtLinear::Plan& CublasLtLinear::plan_for(const Key& key) {
  if (auto it = plans_.find(key); it != plans_.end()) return *it->second;
  if (plans_.size() >= kMaxPlans) plans_.clear();
  const auto [T, N, K, has_bias, out_f32, align_x, align_w, align_out, align_bias] = key;
  auto plan = std::make_unique<Plan>();
  LSERVE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  LSERVE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa));
  LSERVE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb));
  if (has_bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    LSERVE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    LSERVE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                       sizeof bias_type));
  }
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  LSERVE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, u(K), u(N), K));
  LSERVE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, u(K), u(T), K));
  LSERVE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, out_f32 ? CUDA_R_32F : CUDA_R_16BF, u(N), u(T), N));

  cublasLtMatmulPreference_t pref = nullptr;
  LSERVE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t ax = static_cast<uint32_t>(align_x), aw = static_cast<uint32_t>(align_w),
                 ao = static_cast<uint32_t>(align_out);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof aw);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof ax);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao, sizeof ao);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao, sizeof ao);
  (void)align_bias;  // part of the key only: the bias epilogue reads it element-wise
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->d, plan->d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no algorithm for a bf16 linear of x [{}, {}] by w [{}, {}]{} ({})", T, K, N, K,
         has_bias ? " with bias" : "", cublasLtGetStatusString(st));
  plan->algo = result.algo;
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void CublasLtLinear::run(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, void* out,
                         bool out_f32, int64_t T, int64_t N, int64_t K) {
  if (T == 0 || N == 0) return;
  LSERVE_CHECK(!(bias && out_f32), "a bias needs a bf16 output");
  const Key key{T, N, K, bias != nullptr, out_f32, alignment_of(x), alignment_of(w), alignment_of(out),
                bias ? alignment_of(bias) : 0};
  Plan& plan = plan_for(key);
  if (bias)
    LSERVE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  const float alpha = 1.0f, beta = 0.0f;
  LSERVE_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, out, plan.d, out, plan.d,
                                     &plan.algo, workspace_->data(), kWorkspaceBytes, stream_));
}

}  // namespace lserve::cuda
