// LlamaModel: the forward pass shared by Llama 2/3, Mistral, Qwen2 and Qwen3, expressed in
// backend ops. One call runs one engine step: any mix of prefill chunks and decode tokens of
// several sequences (described by an AttentionBatch), appending their KV to the cache.
//
//   per layer:  x = rms_norm(h) -> q,k,v = linear(x) [+bias] [-> q/k head norm] -> rope
//               -> kv_append -> attention -> h += o_proj(attn)
//               x = rms_norm(h) -> h += down(silu(gate(x)) * up(x))
//   then:       logits of the requested rows = lm_head(rms_norm(h))
#pragma once

#include <deque>
#include <filesystem>
#include <memory>
#include <span>

#include "backend/attention_batch.h"
#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "model/weights.h"

namespace lserve {

class LlamaModel {
 public:
  // max_context: the longest sequence (positions) this instance will serve; at most the
  // model's max_position_embeddings.
  LlamaModel(ModelConfig config, ModelWeights weights, Backend& backend, int64_t max_context);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  int64_t max_context() const { return max_context_; }
  Backend& backend() const { return backend_; }

  // Runs the batch's tokens (token_ids: [T] on the host) through the model, writing their KV
  // into `cache` at the batch's slots, and the logits of batch rows `logit_rows` into
  // `logits` ([logit_rows.size(), vocab] f32, host).
  void forward(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
               std::span<const int32_t> logit_rows, float* logits);
  // The same step, but logit row i's next token is drawn on the device under sampling[i]
  // (Backend::sample) and only the tokens come back: tokens[i] for logit_rows[i]; the logits too
  // when `logits` is given (rows the host samples). Needs a backend that samples_on_device().
  void forward_sampled(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                       std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling,
                       int32_t* tokens, float* logits = nullptr);

  // Overlapped decoding: queue_sampled queues the step forward_sampled runs and returns without
  // waiting for its tokens, which collect_sampled returns later (steps are collected in the
  // order they were queued). Meanwhile the host may plan and queue the next step, when the
  // backend can_begin_before_end(): queue_sampled_after queues a step whose row i's token is the
  // one the step queued last drew for its logit row from_rows[i] (i itself when from_rows is
  // empty), so that tokens need not pass through the host between steps (its logit rows are its
  // rows, in order). A queued step's batch must stay alive and unchanged until it is collected;
  // forward() and forward_sampled() need none queued.
  void queue_sampled(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                     std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling);
  void queue_sampled_after(const AttentionBatch& batch, KvCache& cache, std::span<const DeviceSampling> sampling,
                           std::span<const int32_t> from_rows = {});
  // The tokens of the oldest queued step (one per logit row), once its work is done; ends it.
  void collect_sampled(int32_t* tokens);
  size_t queued_steps() const { return queued_.size(); }

 private:
  struct Scratch;
  // Everything of a step up to its last launch: uploads, then the recorded or replayed ops.
  // With ids_from_last, the ids are tokens the last queued step drew: those of its logit rows
  // from_rows (all of them, in order, when empty); else token_ids.
  void launch(std::span<const int32_t> token_ids, bool ids_from_last, std::span<const int32_t> from_rows,
              const AttentionBatch& batch, KvCache& cache, std::span<const int32_t> logit_rows,
              std::span<const DeviceSampling> sampling, bool sampled);
  // The step's ops, recorded or replayed by the backend (run_step).
  void record_or_replay(const StepKey& key, bool recordable, const AttentionBatch& batch, KvCache& cache, int64_t T,
                        int64_t R, bool identity_rows, std::span<const int32_t> logit_rows, bool sampled);
  void run(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
           std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling, float* logits,
           int32_t* tokens);
  void ensure_scratch(int64_t num_tokens, int64_t num_logit_rows);
  void expect_room_to_queue(int64_t rows) const;
  void remember_queued(const AttentionBatch& batch, int64_t rows);
  // Identifies the buffers a step's ops touch (scratch, the KV pools): part of a recorded step's key.
  uint64_t buffers_identity(const KvCache& cache, const AttentionBatch& batch) const;
  void attention_block(int64_t layer, int64_t T, const AttentionBatch& batch, KvCache& cache);
  void mlp_gated_half(int64_t layer, int64_t T);  // gate = silu(normed @ gate^T) * (normed @ up^T)

  ModelConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  int64_t max_context_;
  uint64_t id_;  // unique in the process (a recorded step's key)
  Tensor rope_table_;  // [max_context, head_dim]: cos | sin, with the attention scale folded in
  std::shared_ptr<DeviceMemory> rope_memory_;
  std::unique_ptr<Scratch> scratch_;
  struct QueuedStep {
    const AttentionBatch* batch;
    uint64_t tokens_ticket;   // Backend::queue_download of its drawn tokens
    int64_t rows;             // logit rows (tokens drawn)
    uint64_t scratch_generation;  // the scratch its tokens were drawn into
  };
  std::deque<QueuedStep> queued_;
};

}  // namespace lserve
