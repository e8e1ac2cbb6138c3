#include "model/llama_model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace lserve {

// Activation buffers, grown to the largest step seen.
struct LlamaModel::Scratch {
  int64_t capacity = 0, logit_capacity = 0;
  uint64_t generation = 0;  // bumped whenever a buffer is reallocated (offsets follow capacity)
  std::shared_ptr<DeviceMemory> memory, logit_memory;
  Tensor ids, positions, hidden, normed, q, k, v, attn, gate, up, rows, logits, sampled;
};

namespace {
std::atomic<uint64_t> next_model_id{1};
}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, Backend& backend, int64_t max_context)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      backend_(backend),
      max_context_(max_context),
      id_(next_model_id.fetch_add(1, std::memory_order_relaxed)) {
  if (max_context_ <= 0 || max_context_ > config_.max_position_embeddings)
    fail("max context {} must be between 1 and the model's max_position_embeddings ({})", max_context_,
         config_.max_position_embeddings);
  // RoPE table: angles in f32 like HF (position * inv_freq), so long positions round alike.
  const RopeTable rope = compute_rope(config_);
  const int64_t D = config_.head_dim, half = D / 2;
  std::vector<float> table(static_cast<size_t>(max_context_ * D));
  for (int64_t p = 0; p < max_context_; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * rope.inv_freq[static_cast<size_t>(i)];
      table[static_cast<size_t>(p * D + i)] = static_cast<float>(std::cos(static_cast<double>(angle))) * rope.attention_scale;
      table[static_cast<size_t>(p * D + half + i)] = static_cast<float>(std::sin(static_cast<double>(angle))) * rope.attention_scale;
    }
  }
  rope_memory_ = backend_.allocate(table.size() * sizeof(float));
  rope_table_ = rope_memory_->view(DType::F32, Shape{max_context_, D}, backend_.device());
  backend_.upload(rope_table_, table.data());
  scratch_ = std::make_unique<Scratch>();
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::ensure_scratch(int64_t T, int64_t R) {
  Scratch& s = *scratch_;
  const DType dt = backend_.compute_dtype();
  const Device dev = backend_.device();
  const int64_t H = config_.hidden_size, Q = config_.q_dim(), KV = config_.kv_dim(), F = config_.intermediate_size;
  if (T > s.capacity) {
    const int64_t cap = std::max<int64_t>(T, 16);
    const size_t es = dtype_size(dt);
    const size_t per_token = static_cast<size_t>(2 * 4 + 3 * H + 2 * Q + 2 * KV + 2 * F) * es;  // ids+pos as 4-byte
    char* p = nullptr;
    auto take = [&](DType d, Shape shape) {
      Tensor t{p, d, shape, dev};
      p += (t.nbytes() + 63) / 64 * 64;  // keep every buffer 64-byte aligned
      return t;
    };
    s.memory = backend_.allocate(per_token * static_cast<size_t>(cap) + 64 * 16);
    p = static_cast<char*>(s.memory->data());
    s.ids = take(DType::I32, Shape{cap});
    s.positions = take(DType::I32, Shape{cap});
    s.hidden = take(dt, Shape{cap, H});
    s.normed = take(dt, Shape{cap, H});
    s.q = take(dt, Shape{cap, Q});
    s.k = take(dt, Shape{cap, KV});
    s.v = take(dt, Shape{cap, KV});
    s.attn = take(dt, Shape{cap, Q});
    s.gate = take(dt, Shape{cap, F});
    s.up = take(dt, Shape{cap, F});
    s.rows = take(dt, Shape{cap, H});
    s.capacity = cap;
    ++s.generation;
  }
  if (R > s.logit_capacity) {
    // Logits in f32 on every backend: bf16 would round away the margins greedy decoding compares.
    const size_t logit_bytes = static_cast<size_t>(R * config_.vocab_size) * sizeof(float);
    s.logit_memory = backend_.allocate(logit_bytes + static_cast<size_t>(R) * sizeof(int32_t));
    s.logits = s.logit_memory->view(DType::F32, Shape{R, config_.vocab_size}, dev);
    s.sampled = Tensor{static_cast<char*>(s.logit_memory->data()) + logit_bytes, DType::I32, Shape{R}, dev};
    s.logit_capacity = R;
    ++s.generation;
  }
}

void LlamaModel::forward(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                         std::span<const int32_t> logit_rows, float* logits) {
  run(token_ids, batch, cache, logit_rows, {}, logits, nullptr);
}

void LlamaModel::forward_sampled(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                                 std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling,
                                 int32_t* tokens, float* logits) {
  LSERVE_CHECK(backend_.samples_on_device(), "the {} backend cannot sample", backend_.name());
  LSERVE_CHECK(sampling.size() == logit_rows.size(), "{} sampling rows for {} logit rows", sampling.size(),
               logit_rows.size());
  run(token_ids, batch, cache, logit_rows, sampling, logits, tokens);
}

void LlamaModel::queue_sampled(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                               std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling) {
  LSERVE_CHECK(backend_.samples_on_device(), "the {} backend cannot sample", backend_.name());
  LSERVE_CHECK(sampling.size() == logit_rows.size() && !logit_rows.empty(), "{} sampling rows for {} logit rows",
               sampling.size(), logit_rows.size());
  LSERVE_CHECK(queued_.empty() || backend_.can_begin_before_end(),
               "a step queued before the last one ended, on a backend that cannot overlap them now");
  const auto R = static_cast<int64_t>(logit_rows.size());
  expect_room_to_queue(R);
  launch(token_ids, false, {}, batch, cache, logit_rows, sampling, true);
  remember_queued(batch, R);
}

void LlamaModel::queue_sampled_after(const AttentionBatch& batch, KvCache& cache,
                                     std::span<const DeviceSampling> sampling, std::span<const int32_t> from_rows) {
  LSERVE_CHECK(backend_.samples_on_device(), "the {} backend cannot sample", backend_.name());
  LSERVE_CHECK(!queued_.empty(), "queue_sampled_after with no step queued before it");
  LSERVE_CHECK(backend_.can_begin_before_end(), "a step queued before the last one ended, on a backend that cannot "
                                                "overlap them now");
  const int64_t T = batch.num_tokens(), last_rows = queued_.back().rows;
  LSERVE_CHECK(T == batch.num_seqs() && (from_rows.empty() ? T == last_rows : T == static_cast<int64_t>(from_rows.size())),
               "a step fed by the last one's {} tokens ({} picked) has {} tokens of {} sequences", last_rows,
               from_rows.size(), T, batch.num_seqs());
  for (int32_t r : from_rows) LSERVE_CHECK(r >= 0 && r < last_rows, "row {} of the last step's {}", r, last_rows);
  LSERVE_CHECK(static_cast<int64_t>(sampling.size()) == T, "{} sampling rows for {} logit rows", sampling.size(), T);
  expect_room_to_queue(T);
  std::vector<int32_t> rows(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) rows[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  launch({}, true, from_rows, batch, cache, rows, sampling, true);
  remember_queued(batch, T);
}

// A launched step's drawn tokens on their way back, and where it drew them.
void LlamaModel::remember_queued(const AttentionBatch& batch, int64_t rows) {
  queued_.push_back({&batch, backend_.queue_download(scratch_->sampled.rows(0, rows)), rows, scratch_->generation});
}

// Before a step is launched: its tokens' download will be taken (Backend::queue_download).
void LlamaModel::expect_room_to_queue(int64_t rows) const {
  LSERVE_CHECK(static_cast<size_t>(rows) * sizeof(int32_t) <= Backend::kMaxQueuedDownloadBytes &&
                   queued_.size() < Backend::kMaxQueuedDownloads,
               "{} steps queued, the next of {} rows: more than a backend's queued downloads take", queued_.size(),
               rows);
}

void LlamaModel::collect_sampled(int32_t* tokens) {
  LSERVE_CHECK(!queued_.empty(), "collect_sampled with no step queued");
  const QueuedStep step = queued_.front();
  queued_.pop_front();
  try {
    backend_.finish_download(step.tokens_ticket, tokens);
  } catch (...) {  // still the oldest open step: ended, so that the next collect ends its own
    try {
      backend_.end_step(*step.batch);
    } catch (...) {
    }
    throw;
  }
  backend_.end_step(*step.batch);
}

void LlamaModel::launch(std::span<const int32_t> token_ids, bool ids_from_last, std::span<const int32_t> from_rows,
                        const AttentionBatch& batch, KvCache& cache, std::span<const int32_t> logit_rows,
                        std::span<const DeviceSampling> sampling, bool sampled) {
  const int64_t T = batch.num_tokens();
  const int64_t R = static_cast<int64_t>(logit_rows.size());
  LSERVE_CHECK((ids_from_last || T == static_cast<int64_t>(token_ids.size())) &&
                   static_cast<int64_t>(batch.positions.size()) == T,
               "batch describes {} tokens, {} given", batch.num_tokens(), token_ids.size());
  for (int32_t p : batch.positions)
    if (p < 0 || p >= max_context_) fail("position {} is beyond the max context {}", p, max_context_);
  for (int32_t r : logit_rows) LSERVE_CHECK(r >= 0 && r < T, "logit row {} outside the step's {} rows", r, T);
  ensure_scratch(T, R);
  Scratch& s = *scratch_;
  // The last step's tokens are read where it drew them: a reallocated scratch has lost them.
  LSERVE_CHECK(!ids_from_last || queued_.back().scratch_generation == s.generation,
               "the step feeding this one drew its tokens into a scratch since reallocated");

  // Everything the step reads goes to the device first, so that the ops below are launches only
  // and a backend may record them once and replay them (decode steps, as CUDA graphs).
  int64_t full_context_heads = 0;
  for (int64_t l = 0; l < config_.num_layers; ++l)
    full_context_heads = std::max(full_context_heads, cache.heads_in_pool(HeadKind::Retrieval, l));
  // Rows 0..R-1 in order (every decode step) feed lm_head in place; others are gathered.
  bool identity_rows = true;
  for (int64_t i = 0; i < R; ++i) identity_rows = identity_rows && logit_rows[static_cast<size_t>(i)] == i;
  const bool decode_only = T == batch.num_seqs();
  const StepKey key{static_cast<int32_t>(T), batch.num_seqs(), static_cast<int32_t>(R), sampled,
                    buffers_identity(cache, batch)};
  if (!queued_.empty()) backend_.overlap_next_step();  // the queued steps stay open
  backend_.begin_step(batch, AttentionHeads{static_cast<int32_t>(config_.num_heads),
                                            static_cast<int32_t>(config_.num_kv_heads),
                                            static_cast<int32_t>(config_.head_dim),
                                            static_cast<int32_t>(std::max<int64_t>(full_context_heads, 1)), &cache});

  // A step begun whose work fails to queue is abandoned: the backend's open steps must match the
  // model's, and what it would store back was never computed.
  try {
    Tensor ids = s.ids.rows(0, T), positions = s.positions.rows(0, T);
    if (ids_from_last && from_rows.empty())
      backend_.copy(s.sampled.rows(0, T), ids);
    else if (ids_from_last)
      backend_.gather_rows(s.sampled.rows(0, queued_.back().rows), from_rows, ids);
    else
      backend_.upload(ids, token_ids.data());
    backend_.upload(positions, batch.positions.data());
    if (sampled) backend_.set_sampling(sampling);
    record_or_replay(key, decode_only && identity_rows, batch, cache, T, R, identity_rows, logit_rows, sampled);
  } catch (...) {
    backend_.abandon_step();
    throw;
  }
}

void LlamaModel::record_or_replay(const StepKey& key, bool recordable, const AttentionBatch& batch, KvCache& cache,
                                  int64_t T, int64_t R, bool identity_rows, std::span<const int32_t> logit_rows,
                                  bool sampled) {
  Scratch& s = *scratch_;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor ids = s.ids.rows(0, T);
  backend_.run_step(key, recordable, [&] {
    Tensor hidden = s.hidden.rows(0, T), normed = s.normed.rows(0, T);
    backend_.embedding(ids, weights_.embed_tokens, hidden);
    backend_.rms_norm(hidden, weights_.layers[0].input_norm, eps, normed);
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      attention_block(layer, T, batch, cache);
      // hidden += attn @ o_proj^T, then normed = post-attention norm of hidden.
      const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
      Tensor product = s.rows.rows(0, T);  // reuse: [T, H]
      backend_.linear_add_rms_norm(s.attn.rows(0, T), w.o_proj, product, hidden, w.post_attention_norm, eps, normed);
      // hidden += down_proj(mlp's first half), then normed = the next layer's input norm of it.
      mlp_gated_half(layer, T);
      const Tensor& next_norm =
          layer + 1 < config_.num_layers ? weights_.layers[layer + 1].input_norm : weights_.final_norm;
      backend_.linear_add_rms_norm(s.gate.rows(0, T), w.down_proj, product, hidden, next_norm, eps, normed);
    }
    if (R == 0) return;
    // Only the requested rows go through lm_head (a prefill chunk needs just its last row).
    Tensor picked = normed.rows(0, R);
    if (!identity_rows) {
      picked = s.rows.rows(0, R);
      backend_.gather_rows(normed, logit_rows, picked);
    }
    backend_.linear(picked, weights_.lm_head, Tensor{}, s.logits.rows(0, R));
    if (sampled) backend_.sample(s.logits.rows(0, R), s.sampled.rows(0, R));
  });
}

void LlamaModel::run(std::span<const int32_t> token_ids, const AttentionBatch& batch, KvCache& cache,
                     std::span<const int32_t> logit_rows, std::span<const DeviceSampling> sampling, float* logits,
                     int32_t* tokens) {
  LSERVE_CHECK(queued_.empty(), "a forward pass while {} queued steps are not collected", queued_.size());
  LSERVE_CHECK(static_cast<int64_t>(token_ids.size()) == batch.num_tokens(), "batch describes {} tokens, {} given",
               batch.num_tokens(), token_ids.size());
  if (token_ids.empty()) return;
  const int64_t R = static_cast<int64_t>(logit_rows.size());
  const bool sampled = tokens != nullptr;
  launch(token_ids, false, {}, batch, cache, logit_rows, sampling, sampled);
  Scratch& s = *scratch_;
  try {
    if (R > 0 && sampled) backend_.download(s.sampled.rows(0, R), tokens);
    if (R > 0 && logits) {
      Tensor out = s.logits.rows(0, R);
      if (out.dtype == DType::F32) {
        backend_.download(out, logits);
      } else {
        std::vector<uint16_t> tmp(static_cast<size_t>(out.numel()));
        backend_.download(out, tmp.data());
        convert_to_f32(tmp.data(), out.dtype, logits, tmp.size());
      }
    }
  } catch (...) {
    backend_.abandon_step();
    throw;
  }
  backend_.end_step(batch);
}

uint64_t LlamaModel::buffers_identity(const KvCache& cache, const AttentionBatch& batch) const {
  // Ids and generations rather than addresses alone: a freed buffer's address comes back.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(id_);
  mix(scratch_->generation);
  mix(reinterpret_cast<uintptr_t>(scratch_->memory ? scratch_->memory->data() : nullptr));
  mix(reinterpret_cast<uintptr_t>(scratch_->logit_memory ? scratch_->logit_memory->data() : nullptr));
  mix(cache.id());
  if (const SparsityConfig* s = batch.sparsity) {  // windows and policy are kernel arguments
    mix(static_cast<uint64_t>(s->policy));
    mix(static_cast<uint64_t>(s->prefill_window.sink));
    mix(static_cast<uint64_t>(s->prefill_window.local));
    mix(static_cast<uint64_t>(s->decode_window.sink));
    mix(static_cast<uint64_t>(s->decode_window.local));
  }
  return h;
}

void LlamaModel::attention_block(int64_t layer, int64_t T, const AttentionBatch& batch, KvCache& cache) {
  Scratch& s = *scratch_;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor x = s.normed.rows(0, T), q = s.q.rows(0, T), k = s.k.rows(0, T), v = s.v.rows(0, T);
  const Backend::LinearOut qkv[] = {{&w.q_proj, &w.q_bias, q}, {&w.k_proj, &w.k_bias, k}, {&w.v_proj, &w.v_bias, v}};
  backend_.linear_group(x, qkv);
  if (config_.qk_norm) {
    backend_.head_rms_norm(q, config_.head_dim, w.q_norm, eps);
    backend_.head_rms_norm(k, config_.head_dim, w.k_norm, eps);
  }
  backend_.rope_kv_append(cache, layer, q, k, v, s.positions.rows(0, T), rope_table_, config_.head_dim, batch);
  const float scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  backend_.attention(cache, layer, q, batch, scale, s.attn.rows(0, T));
}

void LlamaModel::mlp_gated_half(int64_t layer, int64_t T) {
  Scratch& s = *scratch_;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  Tensor x = s.normed.rows(0, T), gate = s.gate.rows(0, T), up = s.up.rows(0, T);
  backend_.gated_linear(x, w.gate_proj, w.up_proj, gate, up, gate);
}

}  // namespace lserve
