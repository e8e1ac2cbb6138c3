// Backend: the only place that computes. The model, KV cache and engine describe work in
// tensors and plans; a backend (cpu/ now, cuda/ later) owns memory on its device and runs the
// ops. Every op states its shapes; tensors are row-major and contiguous unless said otherwise.
// Activations are f32 on the CPU backend (bf16 on CUDA); weights are in the backend's
// preferred layout after prepare_weight().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lserve {

struct AttentionBatch;  // backend/attention_batch.h
class KvCache;          // kv/kv_cache.h

// Memory owned by a backend; freed when the last handle goes.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  Tensor view(DType dtype, Shape shape, Device device) const {
    Tensor t{data(), dtype, shape, device};
    LSERVE_CHECK(t.nbytes() <= size(), "view of {} bytes over {} bytes", t.nbytes(), size());
    return t;
  }
};

// Host memory as a DeviceMemory (the CPU backend's allocations, and host buffers that a
// weight view points into).
class HostMemory final : public DeviceMemory {
 public:
  explicit HostMemory(size_t bytes) : buffer_(bytes) {}
  explicit HostMemory(HostBuffer&& buffer) : buffer_(std::move(buffer)) {}
  void* data() const override { return buffer_.data(); }
  size_t size() const override { return buffer_.size(); }

 private:
  HostBuffer buffer_;
};

// The attention shape of the model a step runs: a backend plans the step's attention once for
// all layers from it (begin_step).
struct AttentionHeads {
  int32_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  // KV heads of a layer that attend over the whole context (the most over layers; 0: all):
  // streaming heads read a short window, so a backend sizes its context splits by these.
  int32_t full_context_kv_heads = 0;
  // The cache the step runs on: a backend that selects pages on its device plans the step's
  // selections from it (its head pattern and the sequences' selection state).
  const KvCache* cache = nullptr;
};

// What a recorded step (run_step) is recorded for: the step's shape, and the identity of every
// caller-owned buffer its ops read or write (a changed buffer means a new recording).
struct StepKey {
  int32_t num_tokens = 0, num_seqs = 0, num_logit_rows = 0;
  bool samples = false;   // the ops end with sample()
  uint64_t buffers = 0;   // a hash of the caller's buffers (model scratch, KV pools)
  bool operator==(const StepKey&) const = default;
};

// One row's sampling on the device (Backend::sample): SamplingParams without the penalties,
// which need the sequence's token history. The draw is a function of (seed, counter) alone,
// so a request samples the same tokens whatever it is batched with.
struct DeviceSampling {
  float temperature = 0.0f;  // <= 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;
  uint64_t counter = 0;      // which draw of the request this is (tokens generated so far)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The dtype activations and KV are computed in.
  virtual DType compute_dtype() const = 0;

  // ---- memory ----
  virtual std::shared_ptr<DeviceMemory> allocate(size_t bytes) = 0;
  // dst (on the device) <- host bytes; src (on the device) -> host bytes.
  virtual void upload(Tensor dst, const void* host_src) = 0;
  virtual void download(const Tensor& src, void* host_dst) = 0;
  // A download that does not wait: queue_download copies src (at most kMaxQueuedDownloadBytes)
  // behind the work queued so far, and finish_download waits for that copy alone and writes its
  // bytes to host_dst; later work may overwrite src meanwhile. Tickets finish in the order they
  // were queued, and at most kMaxQueuedDownloads are open at once. The default copies at once.
  static constexpr size_t kMaxQueuedDownloadBytes = size_t{64} << 10;
  static constexpr size_t kMaxQueuedDownloads = 4;
  virtual uint64_t queue_download(const Tensor& src);
  virtual void finish_download(uint64_t ticket, void* host_dst);
  // dst <- src, both on the device, behind the work queued so far and outside a recorded step
  // (a decode step's token ids from the tokens the step before it drew). The default: memcpy.
  virtual void copy(const Tensor& src, Tensor dst);
  // A weight as read from the file (host memory, any float dtype) in the backend's layout.
  // May return a view of the source without copying when the layout already fits, so the
  // source must outlive the returned tensor; `keep` receives any memory allocated for it.
  virtual Tensor prepare_weight(const Tensor& host_weight, std::shared_ptr<DeviceMemory>* keep) = 0;

  // ---- per step ----
  // Called once per forward pass before any layer runs: a backend copies the batch's page
  // tables and slot mapping to its device here (the "plan"), so the per-layer ops below only
  // read them. The batch must stay alive and unchanged until the step's last op.
  virtual void begin_step(const AttentionBatch& batch, const AttentionHeads& heads) {
    (void)batch;
    (void)heads;
  }

  // After a step's last op and its results' download: a backend that kept step state on its
  // device (page selections made there) writes it back to the batch's sequences, and a backend
  // that counts the KV each sequence read at the end of a step (SequenceKv::kv_tokens_read)
  // adds that step's counts.
  //
  // A begin_step while a step is open (begun, not ended) abandons that one, unless the caller
  // said overlap_next_step() first: then the new step begins beside it (its uploads and run_step
  // queued behind the open one's work), so that the host plans a decode step while the device
  // runs the one before, and each ends by its own end_step, in the order they began. Only while
  // can_begin_before_end() says so.
  virtual void end_step(const AttentionBatch& batch) { (void)batch; }
  virtual void overlap_next_step() {}
  // Forgets the newest open step without ending it: one whose work could not be queued whole
  // (it stores nothing back; a step begun beside it is again the newest).
  virtual void abandon_step() {}
  // Whether a step may begin now, before the step begun last has ended: false while that
  // step's results feed the next one's plan (page selections the device makes are read back by
  // end_step, and the steps after it plan their reuse from them). The default never overlaps.
  virtual bool can_begin_before_end() const { return false; }

  // Runs `ops`, the launches of one step between begin_step and its last op. A backend that can
  // record launches (CUDA graphs) records them the first time it sees `key` when `recordable`,
  // and replays the recording for later steps with the same key instead of calling ops. Ops of
  // a recordable step must therefore do no host work that differs between steps: every input is
  // on the device before the call (begin_step, upload, set_sampling), and nothing inside ops
  // uploads or downloads. The default runs ops.
  virtual void run_step(const StepKey& key, bool recordable, const std::function<void()>& ops) {
    (void)key;
    (void)recordable;
    ops();
  }

  // ---- sampling on the device ----
  // Whether sample() exists; without it the caller downloads logits and samples on the host.
  virtual bool samples_on_device() const { return false; }
  // The rows' parameters for the next sample() (copied to the device now, outside any recording).
  virtual void set_sampling(std::span<const DeviceSampling> rows) { (void)rows; }
  // tokens[r] (i32 on the device) = a draw from logits row r ([R, V] f32 on the device) under
  // the r-th row set by set_sampling.
  virtual void sample(const Tensor& logits, Tensor tokens) {
    (void)logits;
    (void)tokens;
    fail("the {} backend samples on the host", name());
  }

  // ---- ops ----
  // dst[i, :] = src[rows[i], :].  src: [T, H], dst: [rows.size(), H]; rows on the host.
  virtual void gather_rows(const Tensor& src, std::span<const int32_t> rows, Tensor dst) = 0;
  // out[t, :] = table[ids[t], :].  ids: [T] i32 (host or device), table: [V, H], out: [T, H].
  virtual void embedding(const Tensor& ids, const Tensor& table, Tensor out) = 0;
  // out = x / rms(x) * weight, per row.  x, out: [T, H]; weight: [H]. out may alias x.
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor out) = 0;
  // residual += x; out = rms_norm(residual).  Fuses the residual add with the next norm.
  virtual void add_rms_norm(Tensor residual, const Tensor& x, const Tensor& weight, float eps, Tensor out) = 0;
  // out = x @ weight^T (+ bias).  x: [T, K]; weight: [N, K] (HF's nn.Linear layout); bias: [N] or empty; out: [T, N].
  virtual void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) = 0;
  // A linear whose product joins the residual stream, and the norm after it, as one op so that
  // a backend may end the linear's kernel with the norm: product = x @ weight^T (no bias);
  // residual += product; out = rms_norm(residual) * norm_weight. product: [T, N]; residual and
  // out: [T, N], neither aliasing product or x. The default runs linear, then add_rms_norm.
  virtual void linear_add_rms_norm(const Tensor& x, const Tensor& weight, Tensor product, Tensor residual,
                                   const Tensor& norm_weight, float eps, Tensor out) {
    linear(x, weight, Tensor{}, product);
    add_rms_norm(residual, product, norm_weight, eps, out);
  }
  // Several linears of the same x (q, k and v): out_i = x @ weight_i^T (+ bias_i), as one op
  // so that a backend may run them in one kernel. The default runs one linear each.
  struct LinearOut {
    const Tensor* weight;
    const Tensor* bias;  // an empty tensor for none
    Tensor out;
  };
  virtual void linear_group(const Tensor& x, std::span<const LinearOut> outs) {
    for (const LinearOut& o : outs) linear(x, *o.weight, *o.bias, o.out);
  }
  // SwiGLU's first half: out = silu(x @ gate^T) * (x @ up^T). gate_out and up_out ([T, F]) hold
  // the two products where a backend computes them apart (the default: two linears and
  // silu_mul); out may alias gate_out.
  virtual void gated_linear(const Tensor& x, const Tensor& gate, const Tensor& up, Tensor gate_out, Tensor up_out,
                            Tensor out) {
    linear(x, gate, Tensor{}, gate_out);
    linear(x, up, Tensor{}, up_out);
    silu_mul(gate_out, up_out, out);
  }
  // Per-head RMSNorm (Qwen3's q/k norm).  x: [T, num_heads * head_dim], weight: [head_dim]; in place.
  virtual void head_rms_norm(Tensor x, int64_t head_dim, const Tensor& weight, float eps) = 0;
  // Rotates q and k in place by RoPE at `positions` ([T] i32), NeoX style (halves rotated),
  // with cos_sin: [max_pos, head_dim] (first half cos, second half sin, scaling folded in).
  virtual void rope(Tensor q, Tensor k, const Tensor& positions, const Tensor& cos_sin, int64_t head_dim) = 0;
  // out = silu(gate) * up.  gate, up, out: [T, F]; out may alias gate.
  virtual void silu_mul(const Tensor& gate, const Tensor& up, Tensor out) = 0;
  // Writes k and v ([T, num_kv_heads * head_dim]) of `layer` into the cache at the batch's slots.
  virtual void kv_append(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                         const AttentionBatch& batch) = 0;
  // rope, then kv_append of the rotated k and v: q is rotated in place, the cache gets the
  // rotated keys, and k's contents afterwards are unspecified (a backend may rotate it in place
  // or leave it). positions: the batch's ([T] i32). The default runs the two ops.
  virtual void rope_kv_append(KvCache& cache, int64_t layer, Tensor q, Tensor k, const Tensor& v,
                              const Tensor& positions, const Tensor& cos_sin, int64_t head_dim,
                              const AttentionBatch& batch) {
    rope(q, k, positions, cos_sin, head_dim);
    kv_append(cache, layer, k, v, batch);
  }
  // Attention of the batch's queries over the cache.  q: [T, num_heads * head_dim], out: same.
  virtual void attention(const KvCache& cache, int64_t layer, const Tensor& q, const AttentionBatch& batch,
                         float scale, Tensor out) = 0;
  // Waits for queued work (no-op on the CPU).
  virtual void synchronize() = 0;

 protected:
  // Checks a queue_download and hands out its ticket; the ticket finish_download may take next.
  uint64_t open_download(const Tensor& src);
  void close_download(uint64_t ticket);

 private:
  struct QueuedDownload {
    uint64_t ticket;
    std::vector<char> bytes;
  };
  std::deque<QueuedDownload> downloads_;  // the default's copies
  uint64_t next_ticket_ = 1, next_to_finish_ = 1;
};

std::unique_ptr<Backend> make_cpu_backend(int num_threads);

}  // namespace lserve
