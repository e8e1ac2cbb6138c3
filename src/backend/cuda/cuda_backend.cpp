// CudaBackend: the Backend ops on one GPU (see cuda_backend.h). This file is glue: argument
// checks, the per-step device copy of the batch, the attention plan, and kernel launches.
#include "backend/cuda/cuda_backend.h"

#include <cuda_profiler_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "backend/attention_batch.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/attention_plan.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_linear.h"
#include "backend/cuda/cuda_memory.h"
#include "backend/cuda/cuda_staging.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/page_select.h"
#include "backend/cuda/reused_lists.h"
#include "backend/cuda/sampling.h"
#include "backend/cuda/skinny_linear.h"
#include "kv/kv_cache.h"
#include "sparse/page_selector.h"
#include "sparse/sparsity_config.h"

namespace lserve {

namespace {

using cuda::bf16;

// The step's batch arrays on the device, all in one block (one copy per step).
struct DeviceBatch {
  const int64_t* slot_mapping = nullptr;
  const int32_t* query_start = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* page_indptr = nullptr;
  const int32_t* page_indices = nullptr;
  const int32_t* positions = nullptr;
  // Streaming heads' tables (null when the cache has none) and which sequences decode.
  const int64_t* stream_slot_mapping = nullptr;
  const int32_t* stream_page_indptr = nullptr;
  const int32_t* stream_page_indices = nullptr;
  const int32_t* decoding = nullptr;
  int32_t num_seqs = 0, num_tokens = 0;
};

// Windows as the kernels take them (int32; a window past any context is clamped, not wrapped).
cuda::StreamingWindows windows_of(const SparsityConfig* s) {
  auto clamp = [](int64_t v) { return static_cast<int32_t>(std::min<int64_t>(v, int64_t{1} << 30)); };
  cuda::StreamingWindows w;
  if (!s) {  // no policy: a streaming head attends causally, as on the CPU
    w.prefill_local = w.decode_local = clamp(int64_t{1} << 30);
    return w;
  }
  w.prefill_sink = clamp(s->prefill_window.sink);
  w.prefill_local = clamp(s->prefill_window.local);
  w.decode_sink = clamp(s->decode_window.sink);
  w.decode_local = clamp(s->decode_window.local);
  return w;
}

bf16* bf16_of(const Tensor& t) { return static_cast<bf16*>(t.data); }

void expect_bf16(const Tensor& t, const char* what) {
  LSERVE_CHECK(t.dtype == DType::BF16 && t.device == Device::Cuda, "{} must be a bf16 tensor on the GPU, got {} on {}",
               what, dtype_name(t.dtype), t.device == Device::Cuda ? "the GPU" : "the host");
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {
    const int count = cuda_device_count();
    if (count == 0) fail("--device cuda: no CUDA GPU is visible (no driver, or no device)");
    if (options.device < 0 || options.device >= count)
      fail("CUDA device {} does not exist ({} visible)", options.device, count);
    LSERVE_CUDA_CHECK(cudaSetDevice(options.device));
    LSERVE_CUDA_CHECK(cudaGetDeviceProperties(&props_, options.device));
    LSERVE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cuda::set_dependent_launch(options.dependent_launch);
    uploader_ = std::make_unique<cuda::PinnedUploader>(stream_);
    // The selection block grows with the batch past kPinnedUploadLimit (tens of MB at large
    // batches with a selection per query head); a pageable upload would make the host wait for
    // the stream, and an overlapped step for the one before. Two uploads a step, two steps.
    select_uploader_ = std::make_unique<cuda::PinnedUploader>(stream_, 4);
    linear_ = std::make_unique<cuda::CublasLtLinear>(stream_);
    norm_arrivals_ = norm_arrivals_buffer_.ensure(1, stream_);  // now: never inside a recording
  }

  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    clear_recorded_steps();
    for (StepTimer& t : timers_) t.destroy();
    if (pinned_download_) cudaFreeHost(pinned_download_);
    for (Readback& r : readbacks_) {
      if (r.done) cudaEventDestroy(r.done);
      if (r.host) cudaFreeHost(r.host);
    }
    for (QueuedCopy& q : queued_copies_) {
      if (q.done) cudaEventDestroy(q.done);
      if (q.host) cudaFreeHost(q.host);
    }
    linear_.reset();
    uploader_.reset();
    select_uploader_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::Cuda; }
  std::string name() const override {
    return fmt::format("cuda ({} #{}, {} SMs, {:.0f} GiB{})", props_.name, options_.device,
                       props_.multiProcessorCount, props_.totalGlobalMem / 1073741824.0,
                       options_.reference_attention ? ", reference attention" : "");
  }
  DType compute_dtype() const override { return DType::BF16; }

  std::shared_ptr<DeviceMemory> allocate(size_t bytes) override { return std::make_shared<cuda::CudaMemory>(bytes); }

  void upload(Tensor dst, const void* host_src) override {
    LSERVE_CHECK(dst.device == Device::Cuda, "upload needs a GPU tensor");
    LSERVE_CHECK(!capturing_, "upload inside a recorded step (inputs go to the device before it)");
    if (dst.nbytes() <= kPinnedUploadLimit) {
      uploader_->upload(dst.data, host_src, dst.nbytes());
    } else {
      LSERVE_CUDA_CHECK(cudaMemcpyAsync(dst.data, host_src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
    }
  }

  void download(const Tensor& src, void* host_dst) override {
    LSERVE_CHECK(src.device == Device::Cuda, "download needs a GPU tensor");
    LSERVE_CHECK(!capturing_, "download inside a recorded step");
    // Small reads (a step's sampled tokens) land in pinned memory: a copy to pageable memory is
    // staged by the driver through its own buffer, an extra hop on the one sync of a step.
    const size_t bytes = src.nbytes();
    if (bytes <= kPinnedDownloadBytes) {
      if (!pinned_download_) LSERVE_CUDA_CHECK(cudaMallocHost(&pinned_download_, kPinnedDownloadBytes));
      LSERVE_CUDA_CHECK(cudaMemcpyAsync(pinned_download_, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
      LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::memcpy(host_dst, pinned_download_, bytes);
      return;
    }
    LSERVE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
    LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // Into pinned slots, one per open ticket, each with an event the finish waits for alone.
  uint64_t queue_download(const Tensor& src) override {
    LSERVE_CHECK(src.device == Device::Cuda, "queue_download needs a GPU tensor");
    LSERVE_CHECK(!capturing_, "queue_download inside a recorded step");
    const uint64_t ticket = open_download(src);
    QueuedCopy& q = queued_copies_[ticket % queued_copies_.size()];
    if (!q.host) {
      LSERVE_CUDA_CHECK(cudaMallocHost(&q.host, kMaxQueuedDownloadBytes));
      LSERVE_CUDA_CHECK(cudaEventCreateWithFlags(&q.done, cudaEventDisableTiming));
    }
    q.bytes = src.nbytes();
    if (q.bytes) LSERVE_CUDA_CHECK(cudaMemcpyAsync(q.host, src.data, q.bytes, cudaMemcpyDeviceToHost, stream_));
    LSERVE_CUDA_CHECK(cudaEventRecord(q.done, stream_));
    return ticket;
  }

  void finish_download(uint64_t ticket, void* host_dst) override {
    close_download(ticket);
    QueuedCopy& q = queued_copies_[ticket % queued_copies_.size()];
    LSERVE_CUDA_CHECK(cudaEventSynchronize(q.done));
    if (q.bytes) std::memcpy(host_dst, q.host, q.bytes);
  }

  void copy(const Tensor& src, Tensor dst) override {
    LSERVE_CHECK(src.device == Device::Cuda && dst.device == Device::Cuda && src.nbytes() == dst.nbytes(),
                 "copy needs two GPU tensors of the same size");
    LSERVE_CHECK(!capturing_, "copy inside a recorded step");
    if (src.nbytes())
      LSERVE_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  }

  // Every weight becomes bf16 on the GPU, vectors (norms, biases) included: the kernels read one
  // weight dtype, and bf16 checkpoints (the common case) lose nothing.
  Tensor prepare_weight(const Tensor& host, std::shared_ptr<DeviceMemory>* keep) override {
    LSERVE_CHECK(host.device == Device::Cpu, "prepare_weight takes host tensors");
    if (host.dtype != DType::BF16 && host.dtype != DType::F32 && host.dtype != DType::F16)
      fail("a {} weight cannot go to the CUDA backend (F32, F16 or BF16 only)", dtype_name(host.dtype));
    const int64_t n = host.numel();
    auto mem = std::make_shared<cuda::CudaMemory>(static_cast<size_t>(n) * 2);
    bf16* dst = static_cast<bf16*>(mem->data());
    if (host.dtype == DType::BF16) {
      LSERVE_CUDA_CHECK(cudaMemcpyAsync(dst, host.data, host.nbytes(), cudaMemcpyHostToDevice, stream_));
    } else {
      // Through a device staging buffer in chunks: the widest source (f32) is never whole on the GPU.
      const size_t es = dtype_size(host.dtype);
      const int64_t chunk = std::min<int64_t>(n, kConvertChunk);
      void* staging = convert_staging_.ensure(static_cast<size_t>(chunk) * es, stream_);
      for (int64_t begin = 0; begin < n; begin += chunk) {
        const int64_t count = std::min(chunk, n - begin);
        LSERVE_CUDA_CHECK(cudaMemcpyAsync(staging, static_cast<const char*>(host.data) + begin * static_cast<int64_t>(es),
                                          static_cast<size_t>(count) * es, cudaMemcpyHostToDevice, stream_));
        if (host.dtype == DType::F32)
          cuda::convert_f32_to_bf16(static_cast<const float*>(staging), dst + begin, count, stream_);
        else
          cuda::convert_f16_to_bf16(static_cast<const uint16_t*>(staging), dst + begin, count, stream_);
      }
    }
    // The source may be a mapped file the caller unmaps after loading: finish reading it now.
    LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    Tensor out{dst, DType::BF16, host.shape, Device::Cuda};
    *keep = std::move(mem);
    return out;
  }

  // Either the step is open afterwards or, if this throws, nothing changed.
  void begin_step(const AttentionBatch& batch, const AttentionHeads& heads) override {
    const bool overlapping = open_steps_ > 0 && overlap_next_;
    overlap_next_ = false;
    LSERVE_CHECK(!overlapping || can_begin_before_end(),
                 "a step begun before the end of one whose page selections it needs");
    if (overlapping) {  // the step before goes on: keep what its end_step needs
      earlier_open_.push_back({std::move(sel_), step_cache_, step_num_heads_, timer_at_, open_batch_});
      timer_at_ ^= 1;  // at most two steps are open
      ++step_stats_.overlapped;
      ++open_steps_;
    } else {  // any open step is abandoned (callers that run ops without ending their steps)
      earlier_open_.clear();
      open_steps_ = 1;
    }
    try {
      prepare_step(batch, heads, overlapping);
    } catch (...) {
      abandon_step();
      throw;
    }
  }

  void abandon_step() override {
    if (open_steps_ == 0) return;
    --open_steps_;
    timer().active = false;
    step_batch_ = open_batch_ = nullptr;
    if (earlier_open_.empty()) {
      sel_ = StepSelection{};
      return;
    }
    OpenStep& before = earlier_open_.back();  // the newest again
    sel_ = std::move(before.sel);
    step_cache_ = before.cache;
    step_num_heads_ = before.num_heads;
    timer_at_ = before.timer;
    open_batch_ = before.batch;
    earlier_open_.pop_back();  // step_batch_ stays null: the device holds the abandoned step's batch
  }

  // begin_step's work once the step is open: the batch, the selections and the attention plan
  // to the device.
  void prepare_step(const AttentionBatch& batch, const AttentionHeads& heads, bool overlapping) {
    const size_t T = static_cast<size_t>(batch.num_tokens()), B = batch.seq_lens.size();
    start_step_timer(batch);
    LSERVE_CHECK(batch.query_start.size() == B + 1 && batch.page_indptr.size() == B + 1 &&
                     batch.slot_mapping.size() == T && batch.positions.size() == T,
                 "inconsistent AttentionBatch");
    LSERVE_CHECK(!capturing_, "begin_step inside a recorded step");
    // Layout: the slot mappings (i64) first for alignment, then the i32 arrays, the page list
    // last: every array but the last then sits at an offset that depends on T and B alone, so a
    // step recorded for this shape finds them where it recorded them. The streaming page list,
    // also of varying length, has a buffer of its own.
    const bool streaming = !batch.streaming_page_indptr.empty();
    LSERVE_CHECK(!streaming || (batch.streaming_page_indptr.size() == B + 1 && batch.streaming_slot_mapping.size() == T),
                 "inconsistent streaming tables in the AttentionBatch");
    const size_t n64 = streaming ? 2 * T : T;
    const size_t n32 = (B + 1) + B + (B + 1) + (B + 1) + B + T + batch.page_indices.size();
    step_host_.resize(n64 * 8 + n32 * 4);
    char* h = step_host_.data();
    auto put = [&](const auto& array) {  // a vector's elements, appended
      const size_t bytes = array.size() * sizeof(array[0]);
      if (bytes) std::memcpy(h, array.data(), bytes);
      h += bytes;
    };
    put(batch.slot_mapping);
    if (streaming) put(batch.streaming_slot_mapping);
    put(batch.query_start);
    put(batch.seq_lens);
    put(batch.page_indptr);
    // The streaming indptr (zeros without streaming heads), then the decoding flags.
    const std::vector<int32_t> stream_indptr =
        streaming ? batch.streaming_page_indptr : std::vector<int32_t>(batch.page_indptr.size(), 0);
    std::vector<int32_t> decoding(batch.seq_lens.size(), 0);
    for (size_t b = 0; b < decoding.size() && b < batch.decoding.size(); ++b) decoding[b] = batch.decoding[b] ? 1 : 0;
    put(stream_indptr);
    put(decoding);
    put(batch.positions);
    put(batch.page_indices);
    char* d = static_cast<char*>(step_device_.ensure(step_host_.size(), stream_));
    uploader_->upload(d, step_host_.data(), step_host_.size());
    dbatch_.slot_mapping = reinterpret_cast<const int64_t*>(d);
    dbatch_.stream_slot_mapping = streaming ? dbatch_.slot_mapping + T : nullptr;
    dbatch_.query_start = reinterpret_cast<const int32_t*>(d + n64 * 8);
    dbatch_.seq_lens = dbatch_.query_start + B + 1;
    dbatch_.page_indptr = dbatch_.seq_lens + B;
    dbatch_.stream_page_indptr = streaming ? dbatch_.page_indptr + B + 1 : nullptr;
    dbatch_.decoding = dbatch_.page_indptr + 2 * (B + 1);
    dbatch_.positions = dbatch_.decoding + B;
    dbatch_.page_indices = dbatch_.positions + T;
    dbatch_.stream_page_indices = nullptr;
    if (streaming) {
      const size_t bytes = std::max<size_t>(batch.streaming_page_indices.size(), 1) * 4;
      auto* sd = static_cast<int32_t*>(stream_pages_device_.ensure(bytes, stream_));
      uploader_->upload(sd, batch.streaming_page_indices.data(), batch.streaming_page_indices.size() * 4);
      dbatch_.stream_page_indices = sd;
    }
    dbatch_.num_seqs = static_cast<int32_t>(B);
    dbatch_.num_tokens = static_cast<int32_t>(T);
    step_batch_ = open_batch_ = &batch;
    step_cache_ = heads.cache;
    step_num_heads_ = heads.num_heads;
    plan_group_ = -1;  // the attention plan is rebuilt for this batch
    sel_.reset();
    if (heads.cache && batch.selects_pages() && heads.num_heads > 0) {
      const auto t0 = timer().active ? StepTimer::Clock::now() : StepTimer::Clock::time_point{};
      // Begun beside a step that selected pages: this one's reuse may read those selections
      // where they are on the device, before they are back in the sequences.
      OpenStep* before = overlapping && !earlier_open_.back().sel.fresh.empty() ? &earlier_open_.back() : nullptr;
      plan_selection(batch, *heads.cache, heads.num_heads, before);
      if (timer().active) timer().select_plan = StepTimer::Clock::now() - t0;
    }
    if (heads.num_heads > 0 && heads.num_kv_heads > 0 && heads.num_heads % heads.num_kv_heads == 0 &&
        cuda::fast_attention_supports(heads.head_dim))
      ensure_plan(batch, heads.num_heads / heads.num_kv_heads, heads.num_heads,
                  heads.full_context_kv_heads > 0 ? heads.full_context_kv_heads : heads.num_kv_heads, heads.head_dim);
  }

  void run_step(const StepKey& key, bool recordable, const std::function<void()>& ops) override {
    {
      const StepTimer::Kernels timing(timer(), stream_);
      launch_step(key, recordable, ops);
    }
    queue_selection_readback();
  }

  void launch_step(const StepKey& key, bool recordable, const std::function<void()>& ops) {
    if (!recordable || !options_.graphs) {
      ops();
      return;
    }
    const uint64_t layout = buffer_layout();
    const int variant = sel_.fresh.empty() ? 0 : 1;  // a step that selects pages, or one that reuses them
    for (RecordedStep& r : recorded_) {
      if (r.key == key && r.variant == variant && r.layout == layout) {
        LSERVE_CUDA_CHECK(cudaGraphLaunch(r.exec, stream_));
        ++step_stats_.replayed;
        return;
      }
    }
    // Record: the ops are captured, not run; the recording then runs as this step.
    if (recorded_.size() >= kMaxRecordedSteps) clear_recorded_steps();
    LSERVE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    cudaGraph_t graph = nullptr;
    try {
      ops();
    } catch (...) {
      capturing_ = false;
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    capturing_ = false;
    LSERVE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    LSERVE_CUDA_CHECK(err);
    std::erase_if(recorded_, [&](const RecordedStep& r) {  // this variant's stale recording
      if (r.key != key || r.variant != variant) return false;
      cudaGraphExecDestroy(r.exec);
      return true;
    });
    recorded_.push_back({key, variant, layout, exec});
    ++step_stats_.recorded;
    LSERVE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  }

  bool samples_on_device() const override { return true; }

  void set_sampling(std::span<const DeviceSampling> rows) override {
    LSERVE_CHECK(!capturing_, "set_sampling inside a recorded step");
    static_assert(sizeof(DeviceSampling) == sizeof(cuda::SamplingRow) &&
                      offsetof(DeviceSampling, top_k) == offsetof(cuda::SamplingRow, top_k) &&
                      offsetof(DeviceSampling, min_p) == offsetof(cuda::SamplingRow, min_p) &&
                      offsetof(DeviceSampling, seed) == offsetof(cuda::SamplingRow, seed) &&
                      offsetof(DeviceSampling, counter) == offsetof(cuda::SamplingRow, counter),
                  "one layout on both sides");
    sampling_rows_ = static_cast<int32_t>(rows.size());
    if (rows.empty()) return;
    void* d = sampling_device_.ensure(rows.size_bytes(), stream_);
    uploader_->upload(d, rows.data(), rows.size_bytes());
  }

  void sample(const Tensor& logits, Tensor tokens) override {
    LSERVE_CHECK(logits.dtype == DType::F32 && logits.device == Device::Cuda && logits.shape.ndim == 2,
                 "sample takes [rows, vocab] f32 logits on the GPU");
    LSERVE_CHECK(tokens.dtype == DType::I32 && tokens.device == Device::Cuda && tokens.numel() == logits.dim(0),
                 "sample writes one i32 token per row on the GPU");
    LSERVE_CHECK(logits.dim(0) == sampling_rows_, "sample: {} rows of logits, {} rows of parameters", logits.dim(0),
                 sampling_rows_);
    cuda::sample_rows(logits.as<float>(), logits.dim(0), logits.dim(1),
                      static_cast<const cuda::SamplingRow*>(sampling_device_.data()), tokens.as<int32_t>(), stream_);
  }

  void gather_rows(const Tensor& src, std::span<const int32_t> rows, Tensor dst) override {
    LSERVE_CHECK(src.device == Device::Cuda && dst.device == Device::Cuda && src.dtype == dst.dtype);
    for (int32_t r : rows) LSERVE_CHECK(r >= 0 && r < src.dim(0), "row {} outside [0, {})", r, src.dim(0));
    if (rows.empty()) return;
    LSERVE_CHECK(!capturing_, "gather_rows uploads its rows: not inside a recorded step");
    const int64_t row_bytes = static_cast<int64_t>(src.nbytes()) / src.dim(0);
    auto* d = static_cast<int32_t*>(rows_device_.ensure(rows.size_bytes(), stream_));
    uploader_->upload(d, rows.data(), rows.size_bytes());
    cuda::gather_rows(src.data, d, static_cast<int64_t>(rows.size()), row_bytes, dst.data, stream_);
  }

  void embedding(const Tensor& ids, const Tensor& table, Tensor out) override {
    expect_bf16(table, "the embedding table");
    expect_bf16(out, "embedding output");
    LSERVE_CHECK(ids.dtype == DType::I32);
    const int64_t T = ids.numel(), V = table.dim(0), H = table.dim(1);
    const int32_t* dev_ids = ids.as<int32_t>();
    if (ids.device == Device::Cpu) {
      LSERVE_CHECK(!capturing_, "embedding of host ids inside a recorded step");
      for (int64_t t = 0; t < T; ++t)
        if (dev_ids[t] < 0 || dev_ids[t] >= V) fail("token id {} is outside the vocabulary of {}", dev_ids[t], V);
      auto* d = static_cast<int32_t*>(ids_device_.ensure(static_cast<size_t>(T) * 4, stream_));
      uploader_->upload(d, dev_ids, static_cast<size_t>(T) * 4);
      dev_ids = d;
    }
    cuda::embedding(dev_ids, bf16_of(table), V, H, bf16_of(out), T, stream_);
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    expect_bf16(x, "rms_norm input");
    expect_bf16(weight, "rms_norm weight");
    expect_bf16(out, "rms_norm output");
    cuda::rms_norm(bf16_of(x), bf16_of(weight), eps, bf16_of(out), x.dim(0), x.dim(1), stream_);
  }

  void add_rms_norm(Tensor residual, const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    expect_bf16(residual, "residual");
    expect_bf16(x, "add_rms_norm input");
    expect_bf16(weight, "add_rms_norm weight");
    expect_bf16(out, "add_rms_norm output");
    cuda::add_rms_norm(bf16_of(residual), bf16_of(x), bf16_of(weight), eps, bf16_of(out), x.dim(0), x.dim(1), stream_);
  }

  void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) override {
    expect_bf16(x, "linear input");
    expect_bf16(weight, "linear weight");
    if (!bias.empty()) expect_bf16(bias, "linear bias");
    LSERVE_CHECK(out.device == Device::Cuda && (out.dtype == DType::BF16 || out.dtype == DType::F32),
                 "linear output must be bf16 or f32 on the GPU");
    const int64_t T = x.dim(0), K = x.dim(1), N = weight.dim(0);
    LSERVE_CHECK(weight.dim(1) == K && out.dim(0) == T && out.dim(1) == N, "linear shapes x {} w {} out {}",
                 x.shape.str(), weight.shape.str(), out.shape.str());
    if (out.dtype == DType::BF16 && options_.skinny_linear && T <= cuda::kSkinnySingleMaxTokens) {
      const cuda::SkinnyTarget target{bf16_of(weight), bias.empty() ? nullptr : bf16_of(bias), bf16_of(out), N};
      if (cuda::skinny_linear(bf16_of(x), T, K, &target, 1, stream_)) return;
    }
    linear_->run(bf16_of(x), bf16_of(weight), bias.empty() ? nullptr : bf16_of(bias), out.data,
                 out.dtype == DType::F32, T, N, K);
  }

  void linear_add_rms_norm(const Tensor& x, const Tensor& weight, Tensor product, Tensor residual,
                           const Tensor& norm_weight, float eps, Tensor out) override {
    const int64_t T = x.dim(0), K = x.dim(1), N = weight.dim(0);
    if (options_.skinny_linear && options_.fused_linear_norm && T <= cuda::kSkinnyFusedNormMaxTokens &&
        product.dtype == DType::BF16) {
      expect_bf16(x, "linear input");
      expect_bf16(weight, "linear weight");
      expect_bf16(residual, "residual");
      expect_bf16(norm_weight, "add_rms_norm weight");
      expect_bf16(out, "add_rms_norm output");
      LSERVE_CHECK(weight.dim(1) == K && product.dim(0) == T && product.dim(1) == N && residual.dim(0) == T &&
                       residual.dim(1) == N && out.dim(0) == T && out.dim(1) == N && norm_weight.numel() == N,
                   "linear_add_rms_norm shapes x {} w {} product {} residual {} norm {} out {}", x.shape.str(),
                   weight.shape.str(), product.shape.str(), residual.shape.str(), norm_weight.shape.str(),
                   out.shape.str());
      if (cuda::skinny_linear_add_rms_norm(bf16_of(x), T, K, bf16_of(weight), N, bf16_of(product), bf16_of(residual),
                                           bf16_of(norm_weight), eps, bf16_of(out), norm_arrivals_, stream_))
        return;
    }
    Backend::linear_add_rms_norm(x, weight, product, residual, norm_weight, eps, out);
  }

  void linear_group(const Tensor& x, std::span<const LinearOut> outs) override {
    if (options_.skinny_linear && x.dim(0) <= cuda::kSkinnyGroupMaxTokens &&
        outs.size() <= static_cast<size_t>(cuda::kSkinnyMaxTargets)) {
      expect_bf16(x, "linear input");
      cuda::SkinnyTarget targets[cuda::kSkinnyMaxTargets];
      bool ok = true;
      for (size_t i = 0; i < outs.size() && ok; ++i) {
        const LinearOut& o = outs[i];
        expect_bf16(*o.weight, "linear weight");
        if (!o.bias->empty()) expect_bf16(*o.bias, "linear bias");
        const int64_t N = o.weight->dim(0);
        LSERVE_CHECK(o.weight->dim(1) == x.dim(1) && o.out.dim(0) == x.dim(0) && o.out.dim(1) == N,
                     "linear shapes x {} w {} out {}", x.shape.str(), o.weight->shape.str(), o.out.shape.str());
        ok = o.out.dtype == DType::BF16 && o.out.device == Device::Cuda;
        targets[i] = {bf16_of(*o.weight), o.bias->empty() ? nullptr : bf16_of(*o.bias), bf16_of(o.out), N};
      }
      if (ok && cuda::skinny_linear(bf16_of(x), x.dim(0), x.dim(1), targets, static_cast<int>(outs.size()), stream_))
        return;
    }
    Backend::linear_group(x, outs);
  }

  void gated_linear(const Tensor& x, const Tensor& gate, const Tensor& up, Tensor gate_out, Tensor up_out,
                    Tensor out) override {
    if (options_.skinny_linear && x.dim(0) <= cuda::kSkinnySingleMaxTokens) {
      expect_bf16(x, "gated_linear input");
      expect_bf16(gate, "gated_linear gate");
      expect_bf16(up, "gated_linear up");
      expect_bf16(out, "gated_linear output");
      const int64_t F = gate.dim(0);
      LSERVE_CHECK(up.shape == gate.shape && gate.dim(1) == x.dim(1) && out.dim(0) == x.dim(0) && out.dim(1) == F,
                   "gated_linear shapes x {} gate {} up {} out {}", x.shape.str(), gate.shape.str(), up.shape.str(),
                   out.shape.str());
      if (out.data != x.data &&
          cuda::skinny_gated_linear(bf16_of(x), x.dim(0), x.dim(1), bf16_of(gate), bf16_of(up), F, bf16_of(out),
                                    stream_))
        return;
    }
    Backend::gated_linear(x, gate, up, gate_out, up_out, out);
  }

  void head_rms_norm(Tensor x, int64_t head_dim, const Tensor& weight, float eps) override {
    expect_bf16(x, "head_rms_norm input");
    expect_bf16(weight, "head_rms_norm weight");
    cuda::head_rms_norm(bf16_of(x), bf16_of(weight), eps, x.numel() / head_dim, head_dim, stream_);
  }

  void rope(Tensor q, Tensor k, const Tensor& positions, const Tensor& cos_sin, int64_t head_dim) override {
    expect_bf16(q, "rope q");
    expect_bf16(k, "rope k");
    LSERVE_CHECK(cos_sin.dtype == DType::F32 && cos_sin.device == Device::Cuda, "the RoPE table must be f32 on the GPU");
    LSERVE_CHECK(positions.dtype == DType::I32);
    const int64_t T = q.dim(0);
    const int32_t* pos = positions.as<int32_t>();
    if (positions.device == Device::Cpu) {
      LSERVE_CHECK(!capturing_, "rope with host positions inside a recorded step");
      for (int64_t t = 0; t < T; ++t)
        LSERVE_CHECK(pos[t] >= 0 && pos[t] < cos_sin.dim(0), "position {} outside the RoPE table of {}", pos[t],
                     cos_sin.dim(0));
      auto* d = static_cast<int32_t*>(positions_device_.ensure(static_cast<size_t>(T) * 4, stream_));
      uploader_->upload(d, pos, static_cast<size_t>(T) * 4);
      pos = d;
    }
    cuda::rope(bf16_of(q), bf16_of(k), pos, cos_sin.as<float>(), cos_sin.dim(0), T, q.dim(1) / head_dim,
               k.dim(1) / head_dim, head_dim, stream_);
  }

  void silu_mul(const Tensor& gate, const Tensor& up, Tensor out) override {
    expect_bf16(gate, "silu_mul gate");
    expect_bf16(up, "silu_mul up");
    expect_bf16(out, "silu_mul output");
    cuda::silu_mul(bf16_of(gate), bf16_of(up), bf16_of(out), out.numel(), stream_);
  }

  // The layer's pools and the step's slots (begin_step copied the batch).
  cuda::KvPools kv_pools(KvCache& cache, int64_t layer) const {
    const bool streaming = cache.has_streaming_heads();
    LSERVE_CHECK(!streaming || dbatch_.stream_slot_mapping, "a cache with streaming heads needs their slots in the batch");
    return {bf16_of(cache.k_pages(layer)),
            bf16_of(cache.v_pages(layer)),
            dbatch_.slot_mapping,
            streaming ? bf16_of(cache.k_pages(layer, HeadKind::Streaming)) : nullptr,
            streaming ? bf16_of(cache.v_pages(layer, HeadKind::Streaming)) : nullptr,
            dbatch_.stream_slot_mapping};
  }

  void rope_kv_append(KvCache& cache, int64_t layer, Tensor q, Tensor k, const Tensor& v, const Tensor& positions,
                      const Tensor& cos_sin, int64_t head_dim, const AttentionBatch& batch) override {
    expect_bf16(q, "rope_kv_append q");
    expect_bf16(k, "rope_kv_append k");
    expect_bf16(v, "rope_kv_append v");
    LSERVE_CHECK(cos_sin.dtype == DType::F32 && cos_sin.device == Device::Cuda, "the RoPE table must be f32 on the GPU");
    expect_kv_cache(cache);
    ensure_step(batch);
    if (!options_.fused_rope_kv_append || positions.device != Device::Cuda || head_dim != cache.head_dim()) {
      Backend::rope_kv_append(cache, layer, q, k, v, positions, cos_sin, head_dim, batch);
      return;
    }
    const cuda::HeadMap heads = head_map(cache, layer);
    const bool summaries = cache.logical_page_size() > 0 && heads.retrieval_heads > 0;
    // The step's positions (the batch's, which `positions` holds too), as kv_summaries reads them.
    cuda::rope_kv_append(bf16_of(q), bf16_of(k), bf16_of(v), kv_pools(cache, layer), heads, dbatch_.positions,
                         dbatch_.query_start, dbatch_.num_seqs, cos_sin.as<float>(), cos_sin.dim(0), q.dim(0),
                         q.dim(1) / head_dim, k.dim(1) / head_dim, cache.page_size(), head_dim,
                         summaries ? cache.logical_page_size() : 0,
                         summaries ? bf16_of(cache.key_min(layer)) : nullptr,
                         summaries ? bf16_of(cache.key_max(layer)) : nullptr, stream_);
  }

  void kv_append(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v, const AttentionBatch& batch) override {
    expect_bf16(k, "kv_append k");
    expect_bf16(v, "kv_append v");
    expect_kv_cache(cache);
    ensure_step(batch);
    const cuda::KvPools pools = kv_pools(cache, layer);
    const cuda::HeadMap heads = head_map(cache, layer);
    cuda::kv_append(bf16_of(k), bf16_of(v), pools, heads, k.dim(0), cache.num_kv_heads(), cache.page_size(),
                    cache.head_dim(), stream_);
    if (cache.logical_page_size() > 0 && heads.retrieval_heads > 0)
      cuda::kv_summaries(pools.k_pages, dbatch_.slot_mapping, dbatch_.positions, dbatch_.query_start, dbatch_.num_seqs,
                         k.dim(0), heads, cache.num_kv_heads(), cache.page_size(), cache.logical_page_size(),
                         cache.head_dim(), bf16_of(cache.key_min(layer)), bf16_of(cache.key_max(layer)), stream_);
  }

  void attention(const KvCache& cache, int64_t layer, const Tensor& q, const AttentionBatch& batch, float scale,
                 Tensor out) override {
    expect_bf16(q, "attention q");
    expect_bf16(out, "attention output");
    expect_kv_cache(cache);
    ensure_step(batch);
    const int64_t D = cache.head_dim(), Hk = cache.num_kv_heads(), H = q.dim(1) / D;
    LSERVE_CHECK(H % Hk == 0 && q.dim(0) == batch.num_tokens(), "attention: {} heads over {} KV heads, {} rows", H, Hk,
                 q.dim(0));
    if (batch.selects_pages() && !sel_.planned) {
      LSERVE_CHECK(!capturing_, "a recorded step needs its page selections planned in begin_step");
      if (!options_.gpu_selection)
        fail("page selection is switched off on this CUDA backend (CudaBackendOptions::gpu_selection)");
      plan_selection(batch, cache, static_cast<int32_t>(H), nullptr);
      plan_group_ = -1;
    }
    cuda::AttentionParams p;
    p.q = bf16_of(q);
    p.out = bf16_of(out);
    p.k_pages = bf16_of(cache.k_pages(layer));
    p.v_pages = bf16_of(cache.v_pages(layer));
    p.query_start = dbatch_.query_start;
    p.seq_lens = dbatch_.seq_lens;
    p.page_indptr = dbatch_.page_indptr;
    p.page_indices = dbatch_.page_indices;
    p.num_seqs = dbatch_.num_seqs;
    p.num_tokens = dbatch_.num_tokens;
    p.num_heads = static_cast<int32_t>(H);
    p.num_kv_heads = static_cast<int32_t>(Hk);
    p.head_dim = static_cast<int32_t>(D);
    p.page_size = cache.page_size();
    p.scale = scale;
    if (cache.has_streaming_heads()) {
      LSERVE_CHECK(dbatch_.stream_page_indptr, "a cache with streaming heads needs their page tables in the batch");
      p.k_stream = bf16_of(cache.k_pages(layer, HeadKind::Streaming));
      p.v_stream = bf16_of(cache.v_pages(layer, HeadKind::Streaming));
      p.stream_page_indptr = dbatch_.stream_page_indptr;
      p.stream_page_indices = dbatch_.stream_page_indices;
    }
    p.decoding = dbatch_.decoding;
    p.windows = windows_of(batch.sparsity);
    p.heads = head_map(cache, layer);
    if (sel_.slots > 0) run_selection(cache, layer, q, scale, p);
    if (options_.reference_attention || !cuda::fast_attention_supports(static_cast<int>(D))) {
      cuda::attention_reference(p, stream_);
      return;
    }
    const auto group = static_cast<int32_t>(H / Hk);
    if (plan_group_ != group) {
      LSERVE_CHECK(!capturing_, "a recorded step needs its attention planned in begin_step");
      int64_t full_context = 1;
      for (int64_t l = 0; l < cache.num_layers(); ++l)
        full_context = std::max(full_context, cache.heads_in_pool(HeadKind::Retrieval, l));
      ensure_plan(batch, group, static_cast<int32_t>(H), static_cast<int32_t>(full_context), static_cast<int32_t>(D));
    }
    // A recording launches the grids a batch of this shape can need at any length (the counts
    // on the device say how much of it this step uses); a direct launch, just the step's.
    const bool full = capturing_;
    cuda::attention_prefill(p, plan_prefill_, plan_counts_.prefill, stream_);
    cuda::attention_decode(p, plan_decode_, plan_device_counts_, full ? plan_counts_.decode_capacity : plan_counts_.decode,
                           partial_o_, partial_lse_, plan_merge_, merge_arrivals_, stream_);
  }

  void synchronize() override { LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // Fresh selections back to the sequences, as the host selector leaves them, then what each
  // decoding sequence read (SequenceKv::kv_tokens_read, as the CPU backend counts it).
  // Steps end in the order they began: the oldest open one ends here (with none open, the last
  // one begun, again).
  void end_step(const AttentionBatch& batch) override {
    const auto finish = std::chrono::steady_clock::now();
    open_steps_ = std::max(open_steps_ - 1, 0);
    if (!earlier_open_.empty()) {  // a step that ends after the next one began
      OpenStep step = std::move(earlier_open_.front());
      earlier_open_.pop_front();
      store_fresh_selections(step.sel, batch);
      if (step.cache && step.num_heads > 0) count_kv_reads(step.sel, step.num_heads, batch, *step.cache);
      timers_[step.timer].finish(finish, step_stats_);
      return;
    }
    store_fresh_selections(sel_, batch);
    if (step_cache_ && step_num_heads_ > 0) count_kv_reads(sel_, step_num_heads_, batch, *step_cache_);
    if (timer().active && profile_steps_) LSERVE_CUDA_CHECK(cudaProfilerStop());
    timer().finish(finish, step_stats_);
  }

  // Two steps may be open at once, unless steps are profiled one by one. A step begun beside
  // one that selected pages reuses those selections from the device when the same sequences go
  // on by one token onto no new page (plan_selection), and waits for them otherwise.
  void overlap_next_step() override { overlap_next_ = true; }
  bool can_begin_before_end() const override {
    return open_steps_ == 0 || (earlier_open_.empty() && !profile_steps_);
  }

  cudaStream_t stream() const { return stream_; }
  CudaStepStats step_stats() const { return step_stats_; }
  void enable_step_timing(bool profile) {
    time_steps_ = true;
    profile_steps_ = profile;
  }

 private:
  // ---- page selection of the step ----
  // Device block: the jobs, the sequences' slots, then per layer, slot and KV head a list's
  // length and its pages (select_capacity entries each). Reused selections are written by the
  // host, fresh ones by the select kernel of their layer and read back in end_step.
  struct StepSelection {
    bool planned = false;
    int32_t slots = 0, capacity = 0, entries_per_split = 1, num_layers = 0;
    bool per_query_head = false;  // one selection per query head (units: the layer's query heads)
    int32_t group = 1, num_units = 0;  // query heads per KV head; selection units per layer
    std::vector<int32_t> seq_slot, list_splits;  // [B]
    std::vector<int32_t> layer_job_begin;        // [layers + 1]
    std::vector<cuda::SelectJob> jobs;
    // (seq, layer, unit, the sequence's decode step) of each fresh job: the step is taken when
    // planned, since the caller may count the step before it ends (overlapped steps).
    std::vector<std::array<int64_t, 4>> fresh;
    std::vector<int32_t> lists_host;             // counts, then pages (the host's part)
    int32_t readback = -1;  // the readbacks_ slot its fresh lists come back in, once queued
    bool stored = false;    // its fresh selections are in the sequences
    std::vector<char> upload_host;               // jobs, slots, counts and lists, as uploaded
    size_t scratch_bytes = 0;
    int32_t grid_pages = 0;  // the selector's grid (select_grid_pages of the longest fresh job)
    // As a fresh StepSelection, keeping the vectors' memory: planned every step.
    void reset() {
      planned = per_query_head = false;
      slots = capacity = num_layers = num_units = grid_pages = 0;
      entries_per_split = group = 1;
      for (auto* v : {&seq_slot, &list_splits, &layer_job_begin}) v->clear();
      jobs.clear();
      fresh.clear();
      scratch_bytes = 0;
      readback = -1;
      stored = false;
    }
  };
  // Open steps (begun, not ended): the newest one's state is in the members (sel_, step_cache_,
  // ...); the ones begun before it keep what their end_step needs in earlier_open_, oldest first.
  struct OpenStep {
    StepSelection sel;
    const KvCache* cache;
    int32_t num_heads;
    size_t timer;
    const AttentionBatch* batch;
  };
  // Times one decode-only step (CudaStepStats): host clocks around the planning and the
  // finishing work, CUDA events around the uploads and the kernels. A step's events have
  // completed by end_step (its results were downloaded); one whose have not is left out.
  struct StepTimer {
    using Clock = std::chrono::steady_clock;
    cudaEvent_t begin = nullptr, kernels_begin = nullptr, kernels_end = nullptr;
    Clock::time_point start, queued;
    Clock::duration select_plan{};
    bool active = false, kernels = false;

    struct Kernels {  // the step's kernels: from run_step's start to its end
      StepTimer& t;
      cudaStream_t s;
      Kernels(StepTimer& timer, cudaStream_t stream) : t(timer), s(stream) {
        if (!t.active) return;
        t.queued = Clock::now();
        LSERVE_CUDA_CHECK(cudaEventRecord(t.kernels_begin, s));
      }
      ~Kernels() {
        if (t.active && cudaEventRecord(t.kernels_end, s) == cudaSuccess) t.kernels = true;
      }
    };

    void finish(Clock::time_point finished, CudaStepStats& stats) {
      if (!active || !kernels) return;
      active = false;
      float before_ms = 0, kernels_ms = 0;
      if (cudaEventQuery(kernels_end) != cudaSuccess ||
          cudaEventElapsedTime(&before_ms, begin, kernels_begin) != cudaSuccess ||
          cudaEventElapsedTime(&kernels_ms, kernels_begin, kernels_end) != cudaSuccess) {
        cudaGetLastError();
        return;
      }
      const auto now = Clock::now();
      auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
      ++stats.timed_steps;
      stats.host_plan_s += seconds(queued - start);
      stats.host_select_plan_s += seconds(select_plan);
      stats.device_before_kernels_s += before_ms / 1e3;
      stats.device_kernels_s += kernels_ms / 1e3;
      stats.host_finish_s += seconds(now - finished);
      stats.step_wall_s += seconds(now - start);
    }
    void destroy() {
      for (cudaEvent_t e : {begin, kernels_begin, kernels_end})
        if (e) cudaEventDestroy(e);
    }
  };

  void start_step_timer(const AttentionBatch& batch) {
    StepTimer& t = timer();
    t.active = false;
    t.kernels = false;
    if (!time_steps_ || capturing_ || batch.num_tokens() == 0 || batch.num_tokens() != batch.num_seqs()) return;  // decode-only steps
    if (!t.begin)
      for (cudaEvent_t* e : {&t.begin, &t.kernels_begin, &t.kernels_end})
        LSERVE_CUDA_CHECK(cudaEventCreate(e));
    t.start = StepTimer::Clock::now();
    t.select_plan = {};
    if (profile_steps_) LSERVE_CUDA_CHECK(cudaProfilerStart());
    LSERVE_CUDA_CHECK(cudaEventRecord(t.begin, stream_));
    t.active = true;
  }

  // A step's fresh lists (its counts and lists block) to pinned memory, queued behind its work,
  // so that its end_step, or the plan of a step begun beside it, waits for this step alone.
  void queue_selection_readback() {
    if (!sel_.planned || sel_.slots == 0 || sel_.fresh.empty()) return;
    const size_t counts = static_cast<size_t>(sel_.num_layers) * sel_.slots * sel_.num_units;
    const size_t bytes = (counts + counts * static_cast<size_t>(sel_.capacity)) * sizeof(int32_t);
    readback_at_ ^= 1;  // the other slot may hold the open step's before this one
    Readback& r = readbacks_[readback_at_];
    if (!r.done) LSERVE_CUDA_CHECK(cudaEventCreateWithFlags(&r.done, cudaEventDisableTiming));
    LSERVE_CUDA_CHECK(cudaEventSynchronize(r.done));  // its last copy, long read
    if (r.capacity < bytes) {  // grown by doubling, as the block grows with the batch
      if (r.host) LSERVE_CUDA_CHECK(cudaFreeHost(r.host));
      size_t capacity = std::max<size_t>(size_t{64} << 10, 2 * r.capacity);
      r.host = nullptr;
      r.capacity = 0;
      while (capacity < bytes) capacity *= 2;
      LSERVE_CUDA_CHECK(cudaMallocHost(&r.host, capacity));
      r.capacity = capacity;
    }
    LSERVE_CUDA_CHECK(cudaMemcpyAsync(r.host, sel_counts_dev_, bytes, cudaMemcpyDeviceToHost, stream_));
    LSERVE_CUDA_CHECK(cudaEventRecord(r.done, stream_));
    sel_.readback = static_cast<int32_t>(readback_at_);
  }

  void store_fresh_selections(StepSelection& sel, const AttentionBatch& batch) {
    if (!sel.planned || sel.slots == 0 || sel.stored) return;
    const int32_t L = sel.num_layers, U = sel.num_units, S = sel.slots, cap = sel.capacity;
    const size_t counts = static_cast<size_t>(L) * S * U;
    const int32_t* lists = sel.lists_host.data();
    if (!sel.fresh.empty() && sel.readback >= 0) {  // queued by run_step
      const Readback& r = readbacks_[static_cast<size_t>(sel.readback)];
      LSERVE_CUDA_CHECK(cudaEventSynchronize(r.done));
      lists = static_cast<const int32_t*>(r.host);
    } else if (!sel.fresh.empty()) {  // the ops ran outside run_step (never so for overlapped steps)
      LSERVE_CHECK(&sel == &sel_, "an earlier open step's selections were not read back");
      LSERVE_CUDA_CHECK(cudaMemcpyAsync(sel.lists_host.data(), sel_counts_dev_,
                                        (counts + counts * static_cast<size_t>(cap)) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, stream_));
      LSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    for (const auto& [b, layer, u, decode_step] : sel.fresh) {
      SequenceKv& seq = *batch.sequences[static_cast<size_t>(b)];
      if (seq.selections.size() < static_cast<size_t>(L) * static_cast<size_t>(U)) continue;  // released since
      const size_t unit = (static_cast<size_t>(layer) * S + static_cast<size_t>(sel.seq_slot[static_cast<size_t>(b)])) * U +
                          static_cast<size_t>(u);
      const int32_t* list = lists + counts + unit * static_cast<size_t>(cap);
      PageSelection& ps = seq.selections[static_cast<size_t>(layer * U + u)];
      ps.pages.assign(list, list + lists[unit]);
      ps.decode_step = decode_step;
      ps.num_pages_then = (batch.seq_lens[b] + sel_page_size_ - 1) / sel_page_size_;
    }
    sel.stored = true;
  }

  // Keys each (layer, query head) of a decoding sequence attended this step: a streaming head
  // its decode window, a retrieval head that selects the tokens of its page list (the
  // selection, then the pages newer than it), any other head the whole context.
  void count_kv_reads(const StepSelection& sel, int32_t num_heads, const AttentionBatch& batch,
                      const KvCache& cache) const {
    if (batch.decoding.empty() || batch.sequences.empty()) return;
    const int64_t L = cache.num_layers(), Hk = cache.num_kv_heads(), P = cache.page_size();
    const int64_t G = num_heads / Hk;
    for (int32_t b = 0; b < batch.num_seqs(); ++b) {
      SequenceKv* seq = batch.sequences[static_cast<size_t>(b)];
      if (!seq || !batch.decoding[static_cast<size_t>(b)] || batch.query_len(b) != 1) continue;
      const int64_t len = batch.seq_lens[b], num_pages = (len + P - 1) / P;
      const int32_t slot = sel.planned && static_cast<size_t>(b) < sel.seq_slot.size() ? sel.seq_slot[static_cast<size_t>(b)] : -1;
      const int64_t U = slot >= 0 ? sel.num_units : 0;
      auto page_tokens = [&](int64_t pg) { return std::min<int64_t>(P, len - pg * P); };
      // A selection's pages are ascending (the selector writes them so): those still in the
      // context are a prefix, all whole pages but perhaps the last (a binary search, not a walk).
      // Then the pages appended since.
      auto list_tokens = [&](const PageSelection& ps) {
        const auto kept = std::lower_bound(ps.pages.begin(), ps.pages.end(), num_pages);
        int64_t n = (kept - ps.pages.begin()) * P;
        if (kept != ps.pages.begin() && *(kept - 1) == num_pages - 1) n -= P - page_tokens(num_pages - 1);
        for (int64_t pg = std::max<int64_t>(ps.num_pages_then, 0); pg < num_pages; ++pg)
          if (ps.pages.empty() || pg > ps.pages.back()) n += page_tokens(pg);
        return n;
      };
      for (int64_t l = 0; l < L; ++l)
        for (int64_t h = 0; h < Hk; ++h) {
          if (cache.slot(l, h).kind == HeadKind::Streaming && batch.sparsity) {
            const StreamingWindow& w = batch.sparsity->decode_window;
            const int64_t sink = std::min(w.sink, len), band = std::max(len - w.local, sink);
            seq->kv_tokens_read += G * (sink + (len - band));
            seq->kv_head_reads += G;
            continue;
          }
          // A selecting retrieval head: one list for the group, or one per query head.
          const int64_t units = slot < 0 ? 0 : (sel.per_query_head ? G : 1);
          for (int64_t s = 0; s < units; ++s) {
            const size_t idx = static_cast<size_t>(l * U + (sel.per_query_head ? h * G + s : h));
            const int64_t heads = sel.per_query_head ? 1 : G;
            const bool listed = idx < seq->selections.size() && seq->selections[idx].decode_step >= 0;
            seq->kv_tokens_read += heads * (listed ? list_tokens(seq->selections[idx]) : len);
            seq->kv_head_reads += heads;
          }
          if (units == 0) {
            seq->kv_tokens_read += G * len;
            seq->kv_head_reads += G;
          }
        }
    }
  }

  static constexpr size_t kPinnedUploadLimit = size_t{4} << 20;  // larger uploads go direct
  static constexpr size_t kPinnedDownloadBytes = size_t{64} << 10;
  static constexpr int64_t kConvertChunk = int64_t{16} << 20;     // elements per conversion chunk

  void expect_kv_cache(const KvCache& cache) const {
    LSERVE_CHECK(cache.dtype() == DType::BF16 && cache.k_pages(0).device == Device::Cuda,
                 "the KV cache must be bf16 on the GPU (made with this backend)");
    if (cache.num_kv_heads() > cuda::kMaxKvHeads)
      fail("the CUDA backend takes at most {} KV heads per layer, the model has {}", cuda::kMaxKvHeads,
           cache.num_kv_heads());
  }

  // Where the layer's KV heads live in the cache's pools (built on the host: a kernel argument).
  static cuda::HeadMap head_map(const KvCache& cache, int64_t layer) {
    cuda::HeadMap m;
    m.retrieval_heads = static_cast<int32_t>(cache.heads_in_pool(HeadKind::Retrieval, layer));
    m.stream_heads = static_cast<int32_t>(cache.heads_in_pool(HeadKind::Streaming, layer));
    for (int64_t h = 0; h < cache.num_kv_heads(); ++h) {
      const HeadSlot slot = cache.slot(layer, h);
      m.slot[h] = static_cast<int16_t>(slot.kind == HeadKind::Retrieval ? slot.index : ~slot.index);
    }
    return m;
  }

  // kv_append and attention read the batch copied by begin_step; a caller that skipped it (or
  // passes another batch) gets it copied here, so the ops also work on their own.
  void ensure_step(const AttentionBatch& batch) {
    if (step_batch_ != &batch || dbatch_.num_tokens != batch.num_tokens() || dbatch_.num_seqs != batch.num_seqs())
      begin_step(batch, AttentionHeads{});
  }

  // Which decoding sequences select pages this step, and for each (layer, selection unit: a
  // retrieval KV head, or one of its query heads) whether its selection is made now on the
  // device (a job) or reused (its list written here: the selected pages, then every page newer
  // than the selection, as the host selector reads).
  //
  // `before`: the open step this one was begun beside, when it selected pages: its selections
  // are on the device and not yet in the sequences. If the same sequences go on by one token
  // onto no new page, a unit that reuses one of them reads its list where that step's selector
  // left it (this step uploads no counts or lists then); otherwise the plan waits for them.
  void plan_selection(const AttentionBatch& batch, const KvCache& cache, int32_t num_heads, OpenStep* before) {
    if (before && !selections_can_stay_on_device(*before, batch)) {
      LSERVE_CHECK(before->batch, "an open step without its batch");
      store_fresh_selections(before->sel, *before->batch);  // waits for that step's work
      ++step_stats_.overlap_waits;
      before = nullptr;
    }
    if (!options_.gpu_selection)
      fail("page selection is switched off on this CUDA backend (CudaBackendOptions::gpu_selection)");
    LSERVE_CHECK(cache.logical_page_size() > 0, "page selection needs a KV cache with key summaries");
    if (options_.reference_attention || !cuda::fast_attention_supports(static_cast<int>(cache.head_dim())))
      fail("page selection on the GPU needs the tensor-core attention kernels (head_dim 16, 32, 64 or 128)");
    const int32_t B = batch.num_seqs(), L = static_cast<int32_t>(cache.num_layers());
    const int32_t Hk = static_cast<int32_t>(cache.num_kv_heads()), G = num_heads / Hk, P = cache.page_size();
    LSERVE_CHECK(G <= kDecodeMaxGroupForSelection, "page selection on the GPU takes groups of at most {} heads",
                 kDecodeMaxGroupForSelection);
    LSERVE_CHECK(cache.head_dim() <= cuda::kSelectMaxHeadDim, "page selection on the GPU takes head dims up to {}",
                 cuda::kSelectMaxHeadDim);
    LSERVE_CHECK(P / cache.logical_page_size() <= cuda::kSelectMaxLogicalPerPage,
                 "page selection on the GPU takes at most {} logical pages per page", cuda::kSelectMaxLogicalPerPage);
    StepSelection& sel = sel_;
    sel.reset();
    sel.planned = true;
    sel.num_layers = L;
    // Granularity is the cache's (the batch's), whatever policy a sequence runs.
    sel.per_query_head = batch.sparsity && batch.sparsity->granularity == SelectionGranularity::QueryHead;
    sel.group = G;
    sel.num_units = sel.per_query_head ? num_heads : Hk;
    const int32_t U = sel.num_units;
    const int32_t list_keys = options_.decode_list_keys > 0 ? options_.decode_list_keys : cuda::kDecodeListKeys;
    sel.entries_per_split = std::max(1, list_keys / P);
    sel.seq_slot.assign(static_cast<size_t>(B), -1);
    sel.list_splits.assign(static_cast<size_t>(B), 0);
    sel_page_size_ = P;
    for (int32_t b = 0; b < B; ++b) {
      const SparsityConfig* s = batch.sparsity_of(b);
      if (batch.decoding.empty() || !batch.decoding[static_cast<size_t>(b)] || !batch.sequences[static_cast<size_t>(b)] ||
          !s || !s->selects_pages() || batch.query_len(b) != 1 || !context_needs_selection(*s, batch.seq_lens[b]))
        continue;
      const BudgetRule rule = budget_rule(*s);
      // The list: the selection, then the pages appended since (at most one per step reused).
      // Its splits follow the sequence's own rule, never the batch's, so that its attention is
      // the same whatever it is batched with; the lists' stride is the batch's largest.
      const int32_t cap = static_cast<int32_t>(std::max<int64_t>(rule.max_pages, 2)) + s->selector_interval + 1;
      sel.capacity = std::max(sel.capacity, cap);
      sel.list_splits[static_cast<size_t>(b)] = (cap + sel.entries_per_split - 1) / sel.entries_per_split;
      LSERVE_CHECK(sel.list_splits[static_cast<size_t>(b)] <= cuda::kDecodeMaxMergeSplits,
                   "a page list of {} entries needs more splits than the merge takes", cap);
      sel.seq_slot[static_cast<size_t>(b)] = sel.slots++;
    }
    if (sel.slots == 0) return;
    const int32_t S = sel.slots, cap = sel.capacity;
    const size_t counts = static_cast<size_t>(L) * S * U;
    // Only the counts need clearing: a list is read up to its count, and every list that is read
    // is written this step (here, or by the selector on the device).
    sel.lists_host.resize(counts + counts * static_cast<size_t>(cap));
    std::fill_n(sel.lists_host.begin(), counts, 0);
    // The decode step at which `before` selected each (sequence, layer, unit), or -1; its lists
    // are of no use in another layout.
    if (before && (before->sel.num_layers != L || before->sel.num_units != U ||
                   before->sel.per_query_head != sel.per_query_head)) {
      store_fresh_selections(before->sel, *before->batch);
      ++step_stats_.overlap_waits;
      before = nullptr;
    }
    std::vector<int64_t>& pending = pending_host_;
    pending.clear();
    if (before) {
      pending.assign(static_cast<size_t>(B) * L * U, -1);
      for (const auto& [b, l, u, step] : before->sel.fresh) pending[(static_cast<size_t>(b) * L + l) * U + u] = step;
    }
    bool lists_on_device = false;
    // What the device does with each unit's list when some stay there (cuda::carry_reused_lists).
    std::vector<int32_t>& keep = keep_host_;
    if (before) keep.assign(counts, cuda::kListFromHost);
    size_t scratch_layer = 0;
    for (int32_t l = 0; l < L; ++l) {
      sel.layer_job_begin.push_back(static_cast<int32_t>(sel.jobs.size()));
      size_t scratch_at = 0;
      for (int32_t b = 0; b < B; ++b) {
        const int32_t slot = sel.seq_slot[static_cast<size_t>(b)];
        if (slot < 0) continue;
        const SparsityConfig& s = *batch.sparsity_of(b);
        SequenceKv& seq = *batch.sequences[static_cast<size_t>(b)];
        if (seq.selections.size() < static_cast<size_t>(L * U)) seq.selections.resize(static_cast<size_t>(L * U));
        const int32_t len = batch.seq_lens[b], num_pages = (len + P - 1) / P;
        const BudgetRule rule = budget_rule(s);
        for (int32_t u = 0; u < U; ++u) {
          const int32_t h = sel.per_query_head ? u / G : u;  // the unit's KV head
          const HeadSlot hs = cache.slot(l, h);
          if (hs.kind != HeadKind::Retrieval) continue;
          const size_t unit = (static_cast<size_t>(l) * S + static_cast<size_t>(slot)) * U + static_cast<size_t>(u);
          const PageSelection& ps = seq.selections[static_cast<size_t>(l * U + u)];
          const int64_t pending_step = pending.empty() ? -1 : pending[(static_cast<size_t>(b) * L + l) * U + u];
          const int64_t selected_at = pending_step >= 0 ? pending_step : ps.decode_step;
          // Every unit has a job, so that a layer's grid is the same in every step that selects,
          // whichever sequences select afresh (a recorded step replays any of them); only the
          // fresh ones are active. Steps that only reuse launch no selector (recorded apart).
          const bool fresh = selected_at < 0 || seq.decode_steps - selected_at >= s.selector_interval;
          {
            cuda::SelectJob j{};
            j.q_row = batch.query_start[b];
            j.head0 = sel.per_query_head ? u : h * G;
            j.num_heads = sel.per_query_head ? 1 : G;
            j.pool_index = hs.index;
            j.pages_begin = batch.page_indptr[b];
            j.num_pages = num_pages;
            j.num_tokens = len;
            j.max_pages = static_cast<int32_t>(rule.max_pages);
            j.min_pages = static_cast<int32_t>(rule.min_pages);
            j.mass_threshold = rule.mass_threshold;
            j.out = static_cast<int32_t>(counts + unit * static_cast<size_t>(cap));  // from the counts' start
            j.count_index = static_cast<int32_t>(unit);
            j.scratch = static_cast<int32_t>(scratch_at / 16);
            j.active = fresh ? 1 : 0;
            if (fresh)
              scratch_at += cuda::select_scratch_bytes(j.num_heads, num_pages, P / cache.logical_page_size(), j.max_pages);
            // Over every selecting sequence, fresh or not: with the fresh ones alone, sequences
            // selecting out of phase would change the grid (and the recording) step to step.
            sel.grid_pages = std::max(sel.grid_pages, cuda::select_grid_pages(num_pages));
            LSERVE_CHECK(scratch_at / 16 <= static_cast<size_t>(INT32_MAX) &&
                             counts + (unit + 1) * static_cast<size_t>(cap) <= static_cast<size_t>(INT32_MAX),
                         "page selection: {} sequences of {} pages overflow the selector's offsets", S, num_pages);
            sel.jobs.push_back(j);
          }
          if (fresh) {
            sel.fresh.push_back({b, l, u, seq.decode_steps});
            continue;
          }
          if (pending_step >= 0) {
            // The list `before` selected, where its selector wrote it; a page appended since (the
            // context moved onto a new one) is added there, as below.
            lists_on_device = true;
            const bool new_page = (len - 1) % P == 0;
            keep[unit] = new_page ? num_pages - 1 : cuda::kListKept;
            continue;
          }
          // The selection's pages still in the context (a prefix: they are ascending), then the
          // pages appended since.
          int32_t* list = sel.lists_host.data() + counts + unit * static_cast<size_t>(cap);
          const auto kept = std::lower_bound(ps.pages.begin(), ps.pages.end(), num_pages);
          auto n = static_cast<int32_t>(kept - ps.pages.begin());
          LSERVE_CHECK(n <= cap, "a reused page list outgrew its {} entries", cap);
          std::copy(ps.pages.begin(), kept, list);
          for (int64_t pg = std::max<int64_t>(ps.num_pages_then, 0); pg < num_pages; ++pg) {
            if (!ps.pages.empty() && pg <= ps.pages.back()) continue;
            LSERVE_CHECK(n < cap, "a reused page list outgrew its {} entries", cap);
            list[n++] = static_cast<int32_t>(pg);
          }
          sel.lists_host[unit] = n;
        }
      }
      scratch_layer = std::max(scratch_layer, scratch_at);
    }
    sel.layer_job_begin.push_back(static_cast<int32_t>(sel.jobs.size()));
    sel.scratch_bytes = scratch_layer;
    // Lists left on the device must be where this step's kernels look: the same block layout.
    if (lists_on_device &&
        (sel.slots != before->sel.slots || sel.capacity != before->sel.capacity ||
         sel.num_units != before->sel.num_units || sel.num_layers != before->sel.num_layers ||
         sel.per_query_head != before->sel.per_query_head || sel.seq_slot != before->sel.seq_slot ||
         sel.jobs.size() != before->sel.jobs.size())) {
      store_fresh_selections(before->sel, *before->batch);
      ++step_stats_.overlap_waits;
      plan_selection(batch, cache, num_heads, nullptr);
      return;
    }

    // One upload: jobs, slots, then counts and lists (which end_step reads back in one piece).
    // With lists left on the device, the counts and lists go to a staging block instead, with
    // what to keep, and a kernel carries them over.
    const size_t jobs_bytes = (sel.jobs.size() * sizeof(cuda::SelectJob) + 15) / 16 * 16;
    const size_t slot_bytes = (static_cast<size_t>(B) * 4 + 15) / 16 * 16;
    const size_t lists_bytes = sel.lists_host.size() * 4;
    std::vector<char>& host = sel.upload_host;  // kept from step to step
    host.resize(jobs_bytes + slot_bytes + lists_bytes + (lists_on_device ? counts * 4 : 0));
    std::memcpy(host.data(), sel.jobs.data(), sel.jobs.size() * sizeof(cuda::SelectJob));
    std::memcpy(host.data() + jobs_bytes, sel.seq_slot.data(), static_cast<size_t>(B) * 4);
    std::memcpy(host.data() + jobs_bytes + slot_bytes, sel.lists_host.data(), lists_bytes);
    if (lists_on_device) std::memcpy(host.data() + jobs_bytes + slot_bytes + lists_bytes, keep.data(), counts * 4);
    auto put = [&](void* dst, const char* src, size_t bytes) { select_uploader_->upload(dst, src, bytes); };
    const void* block_before = select_device_.data();
    char* d = static_cast<char*>(select_device_.ensure(jobs_bytes + slot_bytes + lists_bytes, stream_));
    LSERVE_CHECK(!lists_on_device || d == block_before, "the page lists left on the device moved");
    if (lists_on_device) {
      put(d, host.data(), jobs_bytes + slot_bytes);
      char* staged = static_cast<char*>(select_staging_.ensure(lists_bytes + counts * 4, stream_));
      put(staged, host.data() + jobs_bytes + slot_bytes, lists_bytes + counts * 4);
      auto* live = reinterpret_cast<int32_t*>(d + jobs_bytes + slot_bytes);
      const auto* staged_counts = reinterpret_cast<const int32_t*>(staged);
      cuda::carry_reused_lists(live, live + counts, staged_counts, staged_counts + counts,
                               staged_counts + counts + counts * static_cast<size_t>(cap), static_cast<int64_t>(counts),
                               cap, stream_);
    } else {
      put(d, host.data(), host.size());
    }
    sel_jobs_dev_ = reinterpret_cast<const cuda::SelectJob*>(d);
    sel_slot_dev_ = reinterpret_cast<const int32_t*>(d + jobs_bytes);
    sel_counts_dev_ = reinterpret_cast<int32_t*>(d + jobs_bytes + slot_bytes);
    sel_pages_dev_ = sel_counts_dev_;  // job.out counts from here: counts first, then the lists
    if (sel.scratch_bytes > 0) select_scratch_.ensure(sel.scratch_bytes, stream_);
    // The selector's counters, one per job of a layer.
    size_t layer_jobs = 0;
    for (size_t l = 0; l + 1 < sel.layer_job_begin.size(); ++l)
      layer_jobs = std::max<size_t>(layer_jobs, static_cast<size_t>(sel.layer_job_begin[l + 1] - sel.layer_job_begin[l]));
    select_arrivals_.ensure(layer_jobs, stream_);
  }

  // Whether a step may read the selections `before` made where they are on the device: the same
  // sequences, those that selected each one token on.
  static bool selections_can_stay_on_device(const OpenStep& before, const AttentionBatch& batch) {
    const AttentionBatch* prev = before.batch;
    if (!prev || prev->sequences != batch.sequences || prev->seq_lens.size() != batch.seq_lens.size()) return false;
    for (const auto& entry : before.sel.fresh) {
      const auto b = static_cast<size_t>(entry[0]);
      if (batch.seq_lens[b] != prev->seq_lens[b] + 1) return false;
    }
    return true;
  }

  // This layer's fresh selections, then the attention params that read the lists.
  void run_selection(const KvCache& cache, int64_t layer, const Tensor& q, float scale, cuda::AttentionParams& p) {
    const int32_t S = sel_.slots, U = sel_.num_units, cap = sel_.capacity;
    const size_t counts = static_cast<size_t>(sel_.num_layers) * S * U;
    const int32_t j0 = sel_.layer_job_begin[static_cast<size_t>(layer)];
    const int32_t j1 = sel_.layer_job_begin[static_cast<size_t>(layer) + 1];
    if (j1 > j0 && !sel_.fresh.empty()) {  // a step that only reuses selections launches no selector
      cuda::SelectParams sp{};
      sp.q = bf16_of(q);
      sp.num_heads = p.num_heads;
      sp.head_dim = p.head_dim;
      sp.max_job_heads = sel_.per_query_head ? 1 : sel_.group;
      sp.grid_pages = sel_.grid_pages;
      sp.key_min = bf16_of(cache.key_min(layer));
      sp.key_max = bf16_of(cache.key_max(layer));
      sp.pool_heads = static_cast<int32_t>(cache.heads_in_pool(HeadKind::Retrieval, layer));
      sp.page_size = cache.page_size();
      sp.logical_page_size = cache.logical_page_size();
      sp.scale = scale;
      sp.page_indices = dbatch_.page_indices;
      sp.out_pages = sel_pages_dev_;
      sp.out_counts = sel_counts_dev_;
      sp.scratch = static_cast<unsigned char*>(select_scratch_.data());
      sp.arrivals = select_arrivals_.data();
      cuda::select_pages(sp, sel_jobs_dev_ + j0, j1 - j0, stream_);
    }
    p.select_slot = sel_slot_dev_;
    p.select_counts = sel_counts_dev_ + static_cast<size_t>(layer) * S * U;
    p.select_pages = sel_pages_dev_ + counts + static_cast<size_t>(layer) * S * U * static_cast<size_t>(cap);
    p.select_capacity = cap;
    p.select_per_query_head = sel_.per_query_head ? 1 : 0;
  }

  // The attention plan of this step for a GQA group size, built and uploaded once per step.
  // Device layout: the decode count (and three spare ints), then the prefill items, then room
  // for the most decode and merge items a batch of these sequences can need (so the layout, and
  // a recording made over it, stays the same while the sequences grow).
  // full_context_kv_heads: the KV heads per layer that read the whole context (the rest stream):
  // one sequence's splits of those fill the GPU once.
  void ensure_plan(const AttentionBatch& batch, int32_t group, int32_t num_heads, int32_t full_context_kv_heads,
                   int32_t head_dim) {
    const int32_t max_splits = max_splits_for(head_dim, full_context_kv_heads);
    const cuda::AttentionPlan plan =
        cuda::make_attention_plan(batch, group, max_splits, sel_.list_splits, sel_.entries_per_split, sel_.seq_slot);
    plan_counts_.prefill = static_cast<int32_t>(plan.prefill.size());
    plan_counts_.decode = static_cast<int32_t>(plan.decode.size());
    plan_counts_.decode_capacity = plan.decode_capacity;
    plan_counts_.merge_capacity = plan.merge_capacity();
    const size_t b_head = 4 * sizeof(int32_t);
    const size_t b0 = plan.prefill.size() * sizeof(cuda::PrefillItem);
    const size_t b1 = static_cast<size_t>(plan_counts_.decode_capacity) * sizeof(cuda::DecodeItem);
    const size_t b2 = static_cast<size_t>(plan_counts_.merge_capacity) * sizeof(cuda::MergeItem);
    plan_host_.assign(b_head + b0 + b1 + b2, 0);
    const int32_t counts[4] = {plan_counts_.decode, 0, 0, 0};  // the decode kernel reads the first
    std::memcpy(plan_host_.data(), counts, b_head);
    std::memcpy(plan_host_.data() + b_head, plan.prefill.data(), b0);
    std::memcpy(plan_host_.data() + b_head + b0, plan.decode.data(), plan.decode.size() * sizeof(cuda::DecodeItem));
    std::memcpy(plan_host_.data() + b_head + b0 + b1, plan.merge.data(), plan.merge.size() * sizeof(cuda::MergeItem));
    char* d = static_cast<char*>(plan_device_.ensure(plan_host_.size(), stream_));
    uploader_->upload(d, plan_host_.data(), plan_host_.size());
    plan_device_counts_ = reinterpret_cast<const int32_t*>(d);
    plan_prefill_ = reinterpret_cast<const cuda::PrefillItem*>(d + b_head);
    plan_decode_ = reinterpret_cast<const cuda::DecodeItem*>(d + b_head + b0);
    plan_merge_ = reinterpret_cast<const cuda::MergeItem*>(d + b_head + b0 + b1);
    const size_t partials = static_cast<size_t>(std::max(plan.num_partials, plan_counts_.decode_capacity)) *
                            static_cast<size_t>(num_heads);
    partial_o_ = static_cast<float*>(partial_o_buffer_.ensure(partials * static_cast<size_t>(head_dim) * 4, stream_));
    partial_lse_ = static_cast<float*>(partial_lse_buffer_.ensure(partials * 4, stream_));
    // The decode's merge counters, one per (merge, query head) at most.
    merge_arrivals_ = merge_arrivals_buffer_.ensure(
        static_cast<size_t>(plan_counts_.merge_capacity) * static_cast<size_t>(num_heads), stream_);
    plan_group_ = group;
  }

  int32_t max_splits_for(int32_t head_dim, int32_t num_kv_heads) {
    const int64_t key = int64_t{head_dim} << 32 | static_cast<uint32_t>(num_kv_heads);
    auto it = max_splits_.find(key);
    if (it == max_splits_.end()) it = max_splits_.emplace(key, cuda::decode_max_splits(head_dim, num_kv_heads)).first;
    return it->second;
  }

  // The identity of every backend buffer a recorded step reads: a recording is replayed only
  // over the same ones.
  uint64_t buffer_layout() const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(reinterpret_cast<uintptr_t>(step_device_.data()));
    mix(reinterpret_cast<uintptr_t>(stream_pages_device_.data()));
    mix(reinterpret_cast<uintptr_t>(plan_device_.data()));
    mix(reinterpret_cast<uintptr_t>(partial_o_));
    mix(reinterpret_cast<uintptr_t>(partial_lse_));
    mix(reinterpret_cast<uintptr_t>(merge_arrivals_));
    mix(reinterpret_cast<uintptr_t>(sampling_device_.data()));
    mix(reinterpret_cast<uintptr_t>(select_device_.data()));
    if (!sel_.fresh.empty()) {  // only the selector reads these
      mix(reinterpret_cast<uintptr_t>(select_scratch_.data()));
      mix(reinterpret_cast<uintptr_t>(select_arrivals_.data()));
      mix(static_cast<uint64_t>(sel_.grid_pages));  // the selector's grid
    }
    mix(static_cast<uint64_t>(sel_.slots) << 32 ^ static_cast<uint64_t>(sel_.capacity));
    mix(static_cast<uint64_t>(sel_.per_query_head));
    for (int32_t b : sel_.layer_job_begin) mix(static_cast<uint64_t>(b));  // jobs per layer (fixed per batch)
    mix(static_cast<uint64_t>(plan_counts_.prefill));
    mix(static_cast<uint64_t>(plan_counts_.decode_capacity));
    mix(static_cast<uint64_t>(plan_counts_.merge_capacity));
    mix(static_cast<uint64_t>(plan_group_));
    return h;
  }

  void clear_recorded_steps() {
    for (RecordedStep& r : recorded_) cudaGraphExecDestroy(r.exec);
    recorded_.clear();
  }

  CudaBackendOptions options_;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::PinnedUploader> uploader_, select_uploader_;
  std::unique_ptr<cuda::CublasLtLinear> linear_;
  void* pinned_download_ = nullptr;  // kPinnedDownloadBytes of pinned host memory
  cuda::GrowableBuffer convert_staging_, rows_device_, ids_device_, positions_device_;

  // The step's batch on the device.
  std::vector<char> step_host_;
  cuda::GrowableBuffer step_device_, stream_pages_device_;
  DeviceBatch dbatch_;
  const AttentionBatch* step_batch_ = nullptr;  // the batch on the device (ensure_step)
  const AttentionBatch* open_batch_ = nullptr;  // the newest open step's
  const KvCache* step_cache_ = nullptr;  // the step's cache (for the read statistics), if given
  int32_t step_num_heads_ = 0;

  // The step's attention plan.
  struct PlanCounts {
    int32_t prefill = 0, decode = 0, decode_capacity = 0, merge_capacity = 0;
  };
  int32_t plan_group_ = -1;
  std::vector<char> plan_host_;
  cuda::GrowableBuffer plan_device_, partial_o_buffer_, partial_lse_buffer_;
  const int32_t* plan_device_counts_ = nullptr;
  const cuda::PrefillItem* plan_prefill_ = nullptr;
  const cuda::DecodeItem* plan_decode_ = nullptr;
  const cuda::MergeItem* plan_merge_ = nullptr;
  PlanCounts plan_counts_;
  float* partial_o_ = nullptr;
  float* partial_lse_ = nullptr;
  cuda::ArrivalCounters merge_arrivals_buffer_;
  uint32_t* merge_arrivals_ = nullptr;
  // The fused norm's counter (skinny_linear_add_rms_norm): one for the stream, whose launches
  // run one after another.
  cuda::ArrivalCounters norm_arrivals_buffer_;
  uint32_t* norm_arrivals_ = nullptr;
  std::map<int64_t, int32_t> max_splits_;  // (head_dim, KV heads) -> decode_max_splits

  // Recorded steps (CUDA graphs), one per key; few shapes recur (one per decode batch size).
  struct RecordedStep {
    StepKey key;
    int variant;  // the same step shape selecting pages afresh (1) or only reusing them (0)
    uint64_t layout;
    cudaGraphExec_t exec;
  };
  static constexpr size_t kMaxRecordedSteps = 64;
  std::vector<RecordedStep> recorded_;
  bool capturing_ = false;
  CudaStepStats step_stats_;
  std::array<StepTimer, 2> timers_;  // the newest open step's, and the one before's
  size_t timer_at_ = 0;               // the newest open step's
  StepTimer& timer() { return timers_[timer_at_]; }
  bool time_steps_ = false;     // enable_cuda_step_timing
  bool profile_steps_ = false;  // and each timed step inside cudaProfilerStart/Stop

  StepSelection sel_;
  int32_t sel_page_size_ = 0;

  std::deque<OpenStep> earlier_open_;
  int32_t open_steps_ = 0;
  bool overlap_next_ = false;  // overlap_next_step() was said for the next begin_step

  // queue_download's pinned slots, one per open ticket.
  struct QueuedCopy {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  };
  std::array<QueuedCopy, kMaxQueuedDownloads> queued_copies_{};

  // Fresh selections read back (queue_selection_readback): a slot for each of two open steps.
  struct Readback {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  std::array<Readback, 2> readbacks_{};
  size_t readback_at_ = 0;
  std::vector<int64_t> pending_host_;  // plan_selection's table of the open step's selections
  std::vector<int32_t> keep_host_;     // and what becomes of each list (cuda::carry_reused_lists)
  cuda::GrowableBuffer select_staging_;  // counts, lists and keep, when lists stay on the device
  static constexpr int32_t kDecodeMaxGroupForSelection = cuda::kDecodeMaxGroup;
  cuda::GrowableBuffer select_device_, select_scratch_;
  cuda::ArrivalCounters select_arrivals_;
  const cuda::SelectJob* sel_jobs_dev_ = nullptr;
  const int32_t* sel_slot_dev_ = nullptr;
  int32_t* sel_counts_dev_ = nullptr;
  int32_t* sel_pages_dev_ = nullptr;

  // Sampling parameters of the next sample().
  cuda::GrowableBuffer sampling_device_;
  int32_t sampling_rows_ = 0;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not report it
    return 0;
  }
  return n;
}

CUstream_st* cuda_stream_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  LSERVE_CHECK(cuda != nullptr, "{} is not a CUDA backend", backend.name());
  return cuda->stream();
}

CudaStepStats cuda_step_stats(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  LSERVE_CHECK(cuda != nullptr, "{} is not a CUDA backend", backend.name());
  return cuda->step_stats();
}

void enable_cuda_step_timing(Backend& backend, bool profile) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  LSERVE_CHECK(cuda != nullptr, "{} is not a CUDA backend", backend.name());
  cuda->enable_step_timing(profile);
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

}  // namespace lserve
