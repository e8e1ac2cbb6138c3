#include "engine/generator.h"

#include <chrono>
#include <deque>
#include <optional>

#include "engine/batch_plan.h"
#include "engine/stop_matcher.h"
#include "model/tokenizer.h"

namespace lserve {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Returns a sequence's pages to the pools whatever way the scope is left.
struct SequenceGuard {
  KvCache& cache;
  SequenceKv seq;
  ~SequenceGuard() { cache.release(seq); }
};

// The steps an overlapped decode loop has queued and not collected (their batches, oldest
// first): collected, their tokens dropped, when the loop ends or is left by an error, so that
// the model has none queued and every batch outlives its step.
struct QueuedSteps {
  LlamaModel& model;
  std::deque<AttentionBatch>& batches;
  void collect_all() {
    int32_t dropped = 0;
    for (; !batches.empty(); batches.pop_front()) model.collect_sampled(&dropped);
  }
  ~QueuedSteps() {
    try {
      collect_all();
    } catch (...) {  // already failing: the first error is the one to report
    }
  }
};
}  // namespace

Generator::Generator(LlamaModel& model, KvCache& cache, const Tokenizer* tokenizer, int64_t prefill_chunk,
                     const SparsityConfig* sparsity)
    : model_(model),
      cache_(cache),
      tokenizer_(tokenizer),
      prefill_chunk_(std::max<int64_t>(prefill_chunk, 1)),
      sparsity_(sparsity ? sparsity : &dense_) {
  if (cache_.has_streaming_heads() && !sparsity_->has_streaming_heads())
    fail("the KV cache has streaming heads but the attention policy '{}' uses none", policy_name(sparsity_->policy));
}

AttentionBatch Generator::plan(SequenceKv& seq, int64_t n, bool decoding) {
  const int64_t start = seq.num_tokens();
  if (start + n > model_.max_context())
    fail("sequence of {} tokens exceeds the max context of {}", start + n, model_.max_context());
  cache_.reserve(seq, start + n);
  const StepChunk chunk{&seq, start, n, decoding, nullptr};
  return plan_step(cache_, std::span<const StepChunk>(&chunk, 1), sparsity_);
}

void Generator::after_step(SequenceKv& seq, bool decoding, bool prefill_done) {
  if (decoding) ++seq.decode_steps;
  trim_after_step(cache_, seq, seq.num_tokens(), prefill_done, *sparsity_);  // planned up to here
}

void Generator::step(SequenceKv& seq, std::span<const int32_t> tokens, bool decoding, bool prefill_done,
                     std::span<const int32_t> logit_rows, float* logits, const DeviceSampling* sampling,
                     int32_t* sampled) {
  const auto n = static_cast<int64_t>(tokens.size());
  const AttentionBatch batch = plan(seq, n, decoding);
  if (sampling && !logit_rows.empty())
    model_.forward_sampled(tokens, batch, cache_, logit_rows, std::span<const DeviceSampling>(sampling, 1), sampled);
  else
    model_.forward(tokens, batch, cache_, logit_rows, logits);
  after_step(seq, decoding, prefill_done);
}

GenerationResult Generator::run(const GenerationRequest& req, const std::function<void(std::string_view)>& on_text) {
  if (req.prompt.empty()) fail("the prompt is empty");
  if (req.max_tokens < 0) fail("max_tokens must be >= 0");
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (static_cast<int64_t>(req.prompt.size()) > model_.max_context())
    fail("the prompt has {} tokens, more than the max context of {}", req.prompt.size(), model_.max_context());
  if (total > model_.max_context())
    fail("prompt ({} tokens) + max_tokens ({}) exceeds the max context of {}", req.prompt.size(), req.max_tokens,
         model_.max_context());

  GenerationResult result;
  result.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  SequenceGuard seq{cache_, {}};
  Sampler sampler(req.sampling);
  StopMatcher stops(req.stop);
  std::optional<IncrementalDecoder> decoder;
  if (tokenizer_) decoder.emplace(*tokenizer_);
  const int64_t V = model_.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<int32_t> context = req.prompt;

  auto emit = [&](std::string_view piece) {
    if (piece.empty()) return;
    result.text += piece;
    if (on_text) on_text(piece);
  };

  // Tokens are drawn on the device where it can (only they come back, not the logits); the
  // penalties need the host sampler.
  const bool on_device = model_.backend().samples_on_device() && device_can_sample(req.sampling);
  DeviceSampling draw;
  int32_t drawn = 0;
  auto next_draw = [&](int64_t counter) {
    draw = device_sampling(req.sampling, static_cast<uint64_t>(counter));
    return on_device ? &draw : nullptr;
  };

  // Prefill in chunks; only the last chunk's last row needs logits.
  const auto t0 = Clock::now();
  const auto prompt = std::span<const int32_t>(req.prompt);
  for (int64_t begin = 0; begin < result.prompt_tokens; begin += prefill_chunk_) {
    const int64_t n = std::min(prefill_chunk_, result.prompt_tokens - begin);
    const bool last = begin + n == result.prompt_tokens;
    const int32_t row = static_cast<int32_t>(n - 1);
    step(seq.seq, prompt.subspan(static_cast<size_t>(begin), static_cast<size_t>(n)), false, last,
         last ? std::span<const int32_t>(&row, 1) : std::span<const int32_t>(), logits.data(), next_draw(0), &drawn);
  }
  result.prefill_seconds = seconds_since(t0);

  // Decode: the step that draws token k takes token k - 1. Overlapped, the step drawing token
  // k + 1 is queued, fed on the device, before token k is read back (set_overlap_steps).
  seq.seq.kv_tokens_read = seq.seq.kv_head_reads = 0;
  int64_t kv_tokens_read = 0, kv_head_reads = 0;  // the counts after the last step taken
  double kv_read_sum = 0;                         // over the steps taken, of each one's mean
  const bool overlap = overlap_steps_ && on_device;
  std::deque<AttentionBatch> queued;  // the queued steps' batches, oldest first
  QueuedSteps drain{model_, queued};  // whatever is left queued is collected on any way out
  const int32_t row0 = 0;
  auto queue_decode = [&](const int32_t* host_token, int64_t k) {
    queued.push_back(plan(seq.seq, 1, true));  // where the model will read it until it is collected
    const DeviceSampling d = device_sampling(req.sampling, static_cast<uint64_t>(k));
    try {
      if (host_token)
        model_.queue_sampled(std::span<const int32_t>(host_token, 1), queued.back(), cache_,
                             std::span<const int32_t>(&row0, 1), std::span<const DeviceSampling>(&d, 1));
      else
        model_.queue_sampled_after(queued.back(), cache_, std::span<const DeviceSampling>(&d, 1));
    } catch (...) {
      queued.pop_back();  // never queued
      throw;
    }
    after_step(seq.seq, true, true);
  };

  const auto t1 = Clock::now();
  bool stopped = false;
  for (int64_t i = 0; i < req.max_tokens && !stopped; ++i) {
    const int32_t token = on_device ? drawn : sampler.sample(logits, context, result.tokens);
    result.tokens.push_back(token);
    context.push_back(token);
    const bool is_eos = std::find(req.eos_token_ids.begin(), req.eos_token_ids.end(), token) != req.eos_token_ids.end();
    if (is_eos && !req.ignore_eos) {
      result.finish_reason = FinishReason::Eos;
      break;
    }
    if (decoder) {
      auto r = stops.push(decoder->push(token));
      emit(r.text);
      if (r.stopped) {
        result.finish_reason = FinishReason::Stop;
        stopped = true;
        break;
      }
    }
    if (i + 1 == req.max_tokens) break;  // the last token needs no forward pass
    if (overlap) {
      if (queued.empty()) queue_decode(&token, i + 1);  // the step drawing token i + 1
      if (i + 2 < req.max_tokens && model_.backend().can_begin_before_end()) queue_decode(nullptr, i + 2);
      model_.collect_sampled(&drawn);
      queued.pop_front();
    } else {
      step(seq.seq, std::span<const int32_t>(&token, 1), true, true, std::span<const int32_t>(&row0, 1),
           logits.data(), next_draw(i + 1), &drawn);
    }
    ++result.decode_steps;
    // A backend adds a step's KV reads by the time it ends (collected, or run in the plain loop).
    const int64_t tokens_read = seq.seq.kv_tokens_read - kv_tokens_read;
    const int64_t head_reads = seq.seq.kv_head_reads - kv_head_reads;
    if (head_reads) kv_read_sum += static_cast<double>(tokens_read) / static_cast<double>(head_reads);
    kv_tokens_read = seq.seq.kv_tokens_read;
    kv_head_reads = seq.seq.kv_head_reads;
  }
  drain.collect_all();  // a step queued past a stop: its token is dropped
  if (decoder && !stopped) {
    auto r = stops.push(decoder->flush());
    emit(r.text);
    if (r.stopped) result.finish_reason = FinishReason::Stop;
    emit(stops.flush());
  }
  result.decode_seconds = seconds_since(t1);
  if (result.decode_steps) result.mean_kv_tokens_read = kv_read_sum / static_cast<double>(result.decode_steps);
  result.kv_bytes = cache_.sequence_bytes(seq.seq);
  result.kv_retrieval_pages = static_cast<int64_t>(seq.seq.retrieval.pages.size());
  return result;
}

std::vector<float> Generator::score(const std::vector<int32_t>& tokens, int64_t prefill_len, int64_t chunk) {
  const auto n = static_cast<int64_t>(tokens.size());
  LSERVE_CHECK(prefill_len >= 1 && prefill_len <= n && chunk >= 1);
  const int64_t V = model_.config().vocab_size;
  std::vector<float> out(static_cast<size_t>((n - prefill_len + 1) * V));
  SequenceGuard seq{cache_, {}};
  const auto all = std::span<const int32_t>(tokens);
  for (int64_t begin = 0; begin < prefill_len; begin += chunk) {
    const int64_t len = std::min(chunk, prefill_len - begin);
    const int32_t row = static_cast<int32_t>(len - 1);
    const bool last = begin + len == prefill_len;
    step(seq.seq, all.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), false, last,
         last ? std::span<const int32_t>(&row, 1) : std::span<const int32_t>(), out.data());
  }
  for (int64_t i = prefill_len; i < n; ++i) {
    const int32_t row = 0;
    step(seq.seq, all.subspan(static_cast<size_t>(i), 1), true, true, std::span<const int32_t>(&row, 1),
         out.data() + (i - prefill_len + 1) * V);
  }
  return out;
}

std::vector<float> Generator::prefill_logits(const std::vector<int32_t>& tokens) {
  const int64_t V = model_.config().vocab_size;
  std::vector<float> out(tokens.size() * static_cast<size_t>(V));
  std::vector<int32_t> rows(tokens.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  SequenceGuard seq{cache_, {}};
  step(seq.seq, tokens, false, true, rows, out.data());
  return out;
}

}  // namespace lserve
