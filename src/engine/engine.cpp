#include "engine/engine.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>

#include <spdlog/spdlog.h>

#include "engine/batch_plan.h"

namespace lserve {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// What besides the tokens shapes a prompt page's KV: which heads stream and their prefill window.
uint64_t prefix_salt(const KvCache& cache, const SparsityConfig& sparsity) {
  std::string key = cache.pattern().num_streaming() ? cache.pattern().to_text() : "dense";
  if (cache.has_streaming_heads())
    key += fmt::format("|prefill {} {}", sparsity.prefill_window.sink, sparsity.prefill_window.local);
  return XXH3_64bits(key.data(), key.size());
}

StreamingWindow prefill_keep_window(const SparsityConfig& s) {
  return {std::max(s.prefill_window.sink, s.decode_window.sink), std::max(s.prefill_window.local, s.decode_window.local)};
}

// log_softmax of a row, with the `top` likeliest tokens.
TokenLogprob logprobs_of(std::span<const float> logits, int32_t token, int32_t top) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
  const auto log_z = static_cast<float>(static_cast<double>(mx) + std::log(sum));
  TokenLogprob lp{token, logits[static_cast<size_t>(token)] - log_z, {}};
  if (top > 0) {
    std::vector<int32_t> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    const auto k = std::min<size_t>(static_cast<size_t>(top), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), [&](int32_t a, int32_t b) {
      return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
             (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
    });
    for (size_t i = 0; i < k; ++i) lp.top.emplace_back(ids[i], logits[static_cast<size_t>(ids[i])] - log_z);
  }
  return lp;
}

}  // namespace

Engine::Engine(LlamaModel& model, KvCache& cache, const Tokenizer* tokenizer, const SparsityConfig& sparsity,
               EngineOptions options)
    : model_(model),
      cache_(cache),
      tokenizer_(tokenizer),
      sparsity_(sparsity),
      options_(options),
      prefix_cache_(options.prefix_caching ? std::make_unique<PrefixCache>(cache, prefix_salt(cache, sparsity)) : nullptr),
      scheduler_(cache, prefix_cache_.get(), options.scheduler) {
  if (cache_.has_streaming_heads() && !sparsity_.has_streaming_heads())
    fail("the KV cache has streaming heads but the attention policy '{}' uses none", policy_name(sparsity_.policy));
  update_stats();
}

Engine::~Engine() {
  stop(false);
  try {
    while (!queued_steps_.empty()) collect_step();
  } catch (const std::exception& e) {  // a callback's: the rest is aborted below
    spdlog::error("collecting the queued steps: {}", e.what());
    queued_steps_.clear();
    release_retired();
  }
  // Whatever is left is aborted, so every callback hears the end of its request.
  {
    std::lock_guard lock(mutex_);
    for (auto& seq : inbox_) scheduler_.add(sequences_.emplace(seq->id, std::move(seq)).first->second.get());
    inbox_.clear();
  }
  std::vector<Sequence*> left;
  for (auto& [id, seq] : sequences_) left.push_back(seq.get());
  for (Sequence* seq : left) finish(*seq, FinishReason::Abort);
}

void Engine::validate(const RequestParams& p) const {
  const auto n = static_cast<int64_t>(p.prompt.size());
  if (n == 0) throw InvalidRequest("the prompt is empty");
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t t : p.prompt)
    if (t < 0 || t >= vocab) throw InvalidRequest(fmt::format("token id {} is outside the vocabulary (0..{})", t, vocab - 1));
  if (p.max_tokens < 1) throw InvalidRequest(fmt::format("max_tokens must be at least 1, got {}", p.max_tokens));
  if (p.top_logprobs < 0 || p.top_logprobs > 20) throw InvalidRequest("top_logprobs must be in [0, 20]");
  const int64_t limit = model_.max_context();
  if (n + p.max_tokens > limit)
    throw InvalidRequest(fmt::format("this model's maximum context length is {} tokens, but {} were requested ({} in "
                                     "the prompt, {} for the completion); shorten the prompt or lower max_tokens",
                                     limit, n + p.max_tokens, n, p.max_tokens));
  if (cache_.has_pool(HeadKind::Retrieval)) {
    const int64_t pages = cache_.pages_for(n + p.max_tokens);
    const int64_t pool = cache_.allocator(HeadKind::Retrieval).num_pages();
    if (pages > pool)
      throw InvalidRequest(fmt::format("the request needs up to {} tokens of KV cache, more than the {} the server's KV "
                                       "pool holds",
                                       n + p.max_tokens, pool * cache_.page_size()));
  }
  try {
    p.sampling.validate();
    if (p.sparsity) p.sparsity->validate();
  } catch (const Error& e) {
    throw InvalidRequest(e.what());
  }
  if (p.sparsity) {
    const std::string why = override_incompatibility(sparsity_, *p.sparsity, cache_.logical_page_size() > 0);
    if (!why.empty()) throw InvalidRequest("sparse attention: " + why);
  }
}

uint64_t Engine::submit(RequestParams params, OutputCallback on_output) {
  validate(params);
  std::lock_guard lock(mutex_);
  if (stopping_) throw EngineOverloaded("the server is shutting down");
  if (queued_ >= options_.max_waiting + options_.scheduler.max_running)
    throw EngineOverloaded(fmt::format("the server has {} requests queued; try again later", queued_));
  const uint64_t id = next_id_++;
  auto seq = std::make_unique<Sequence>(id, std::move(params), std::move(on_output), tokenizer_);
  if (prefix_cache_) seq->page_hashes = prefix_cache_->page_hashes(seq->params.prompt);
  seq->prefill_keep = prefill_keep_window(sparsity_);
  inbox_.push_back(std::move(seq));
  ++queued_;
  wake_.notify_one();
  return id;
}

void Engine::abort(uint64_t id) {
  std::lock_guard lock(mutex_);
  aborts_.push_back(id);
  wake_.notify_one();
}

void Engine::finish(Sequence& seq, FinishReason reason, std::string error, RequestOutput out) {
  if (reason == FinishReason::Length || reason == FinishReason::Eos) {
    if (seq.decoder) out.text += seq.stops.push(seq.decoder->flush()).text;
    out.text += seq.stops.flush();
  }
  out.request_id = seq.id;
  out.finished = true;
  out.finish_reason = reason;
  out.error = std::move(error);
  out.prompt_tokens = seq.prompt_len;
  out.completion_tokens = seq.num_generated();
  out.cached_prompt_tokens = seq.cached_prompt_tokens;
  // A step still queued holds the sequence: its end writes the sequence's KV state (selections,
  // read counts), so the sequence and its pages stay until the queue is collected.
  const bool held = !queued_steps_.empty();
  scheduler_.remove(&seq, held);
  {
    std::lock_guard lock(mutex_);
    ++stats_.requests_finished[static_cast<int>(reason)];
    stats_.request_latency.observe(seconds_between(seq.arrival, Clock::now()));
    --queued_;
  }
  if (seq.on_output) seq.on_output(std::move(out));
  auto it = sequences_.find(seq.id);
  if (held) retired_.push_back(std::move(it->second));
  sequences_.erase(it);  // `seq` may be gone from here on
}

void Engine::sample(Sequence& seq, float* logits) {
  const int64_t V = model_.config().vocab_size;
  const std::span<float> row(logits, static_cast<size_t>(V));
  std::optional<TokenLogprob> lp;
  std::vector<float> raw;
  if (seq.params.logprobs) raw.assign(row.begin(), row.end());  // the sampler adjusts `row`
  const auto generated = std::span<const int32_t>(seq.tokens).subspan(static_cast<size_t>(seq.prompt_len));
  const int32_t token = seq.sampler.sample(row, seq.tokens, generated);
  if (seq.params.logprobs) lp = logprobs_of(raw, token, seq.params.top_logprobs);
  accept(seq, token, std::move(lp));
}

void Engine::accept(Sequence& seq, int32_t token, std::optional<TokenLogprob> lp) {
  RequestOutput out;
  seq.tokens.push_back(token);
  ++generation_tokens_;

  const auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    if (!seq.first_token_time) stats_.time_to_first_token.observe(seconds_between(seq.arrival, now));
    else stats_.inter_token_latency.observe(seconds_between(*seq.last_token_time, now));
  }
  if (!seq.first_token_time) seq.first_token_time = now;
  seq.last_token_time = now;

  const auto& p = seq.params;
  if (!p.ignore_eos && std::find(p.eos_token_ids.begin(), p.eos_token_ids.end(), token) != p.eos_token_ids.end())
    return finish(seq, FinishReason::Eos);
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end())
    return finish(seq, FinishReason::Stop);
  out.tokens.push_back(token);
  if (lp) out.logprobs.push_back(std::move(*lp));
  if (seq.decoder) {
    auto r = seq.stops.push(seq.decoder->push(token));
    out.text = std::move(r.text);
    if (r.stopped) return finish(seq, FinishReason::Stop, {}, std::move(out));
  }
  if (seq.num_generated() >= p.max_tokens || static_cast<int64_t>(seq.tokens.size()) >= model_.max_context())
    return finish(seq, FinishReason::Length, {}, std::move(out));
  out.request_id = seq.id;
  out.prompt_tokens = seq.prompt_len;
  out.completion_tokens = seq.num_generated();
  out.cached_prompt_tokens = seq.cached_prompt_tokens;
  if (seq.on_output) seq.on_output(std::move(out));
}

bool Engine::step() {
  std::vector<std::unique_ptr<Sequence>> arrivals;
  std::vector<uint64_t> aborts;
  {
    std::lock_guard lock(mutex_);
    arrivals.swap(inbox_);
    aborts.swap(aborts_);
  }
  for (auto& seq : arrivals) {
    Sequence* s = seq.get();
    sequences_.emplace(s->id, std::move(seq));
    scheduler_.add(s);
  }
  for (uint64_t id : aborts)
    if (auto it = sequences_.find(id); it != sequences_.end()) finish(*it->second, FinishReason::Abort);

  if (!queued_steps_.empty()) {  // overlapped: queue the next step while this one runs, then read it
    queue_next_step();
    collect_step();
    update_stats();
    return true;
  }

  const std::vector<ScheduledChunk> chunks = scheduler_.schedule();
  if (chunks.empty()) {
    update_stats();
    return false;
  }

  // Plan the step: tokens, page tables, and which rows need logits (a row that computes a
  // sequence's newest token samples the next one).
  std::vector<int32_t> tokens;
  std::vector<StepChunk> plan;
  std::vector<int32_t> logit_rows;
  std::vector<Sequence*> samplers;
  for (const ScheduledChunk& c : chunks) {
    Sequence& seq = *c.seq;
    const auto first = seq.tokens.begin() + c.start;
    tokens.insert(tokens.end(), first, first + c.num_tokens);
    plan.push_back({&seq.kv, c.start, c.num_tokens, c.decoding, seq.params.sparsity ? &*seq.params.sparsity : nullptr});
    if (c.start + c.num_tokens == static_cast<int64_t>(seq.tokens.size())) {
      logit_rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
      samplers.push_back(&seq);
    }
    seq.kv.kv_tokens_read = seq.kv.kv_head_reads = 0;
    if (!c.decoding) prompt_tokens_ += c.num_tokens;
  }
  const int64_t V = model_.config().vocab_size;
  // Tokens are drawn on the device when the backend can, for every request that needs nothing
  // only the host sampler has (penalties over its history, logprobs); those get the logits.
  // Which sampler a request uses depends on the request alone, never on its batch-mates.
  const bool on_device = model_.backend().samples_on_device();
  auto drawn_on_device = [&](const Sequence& seq) {
    return on_device && !seq.params.logprobs && device_can_sample(seq.params.sampling);
  };
  bool host_rows = false;
  for (const Sequence* seq : samplers) host_rows = host_rows || !drawn_on_device(*seq);
  // A step of decode rows only, each drawing its next token on the device, may be the first of
  // overlapped steps: queued, and read back after the next one is queued (queue_next_step).
  bool overlap = options_.overlap_steps && on_device && !host_rows && samplers.size() == chunks.size() &&
                 model_.backend().can_begin_before_end();
  for (size_t i = 0; i < chunks.size() && overlap; ++i)
    overlap = chunks[i].decoding && chunks[i].num_tokens == 1 && logit_rows[i] == static_cast<int32_t>(i);
  auto queued = std::make_unique<QueuedStep>();
  queued->batch = plan_step(cache_, plan, &sparsity_);
  const AttentionBatch& batch = queued->batch;
  try {
    if (on_device) {
      std::vector<DeviceSampling> rows;
      for (const Sequence* seq : samplers)
        rows.push_back(drawn_on_device(*seq)
                           ? device_sampling(seq->params.sampling, static_cast<uint64_t>(seq->num_generated()))
                           : DeviceSampling{});  // drawn on the host from the logits instead
      if (overlap) {  // read back once the next step is queued (collect_step)
        model_.queue_sampled(tokens, batch, cache_, logit_rows, rows);
      } else {
        sampled_.resize(samplers.size());
        if (host_rows) logits_.resize(logit_rows.size() * static_cast<size_t>(V));
        model_.forward_sampled(tokens, batch, cache_, logit_rows, rows, sampled_.data(),
                               host_rows ? logits_.data() : nullptr);
      }
    } else {
      logits_.resize(logit_rows.size() * static_cast<size_t>(V));
      model_.forward(tokens, batch, cache_, logit_rows, logits_.data());
    }
  } catch (const std::exception& e) {
    // The step's sequences cannot continue (their KV is incomplete); the others are unaffected.
    spdlog::error("forward step failed: {}", e.what());
    for (const ScheduledChunk& c : chunks) finish(*c.seq, FinishReason::Error, e.what());
    update_stats();
    return true;
  }
  ++steps_;
  after_queued(chunks);
  if (overlap) {
    queued->rows = samplers;
    queued_steps_.push_back(std::move(queued));
    update_stats();
    return true;
  }
  for (size_t i = 0; i < samplers.size(); ++i) {
    if (drawn_on_device(*samplers[i]))
      accept(*samplers[i], sampled_[i], std::nullopt);
    else
      sample(*samplers[i], logits_.data() + i * static_cast<size_t>(V));
  }
  update_stats();
  return true;
}

void Engine::after_queued(const std::vector<ScheduledChunk>& chunks) {
  for (const ScheduledChunk& c : chunks) {
    Sequence& seq = *c.seq;
    seq.num_computed += c.num_tokens;
    if (c.decoding) ++seq.kv.decode_steps;
    // Index completed prompt pages before trimming, so that the streaming pages the trim
    // releases stay cached (evictable) for later requests with the same prefix.
    if (prefix_cache_) {
      const int64_t full = std::min(seq.num_computed, seq.prompt_len) / cache_.page_size();
      if (full > seq.pages_indexed) {
        prefix_cache_->insert(seq.kv, seq.page_hashes, full);
        seq.pages_indexed = full;
      }
    }
    trim_after_step(cache_, seq.kv, seq.num_computed, !seq.prefilling(), sparsity_);
  }
}

bool Engine::queue_next_step() {
  const QueuedStep& last = *queued_steps_.back();
  if (!options_.overlap_steps || queued_steps_.size() > 1 || !model_.backend().can_begin_before_end()) return false;
  {
    std::lock_guard lock(mutex_);
    if (!inbox_.empty() || !aborts_.empty()) return false;  // the next step's batch may change
  }
  // The scheduler would plan these rows again: every running sequence is a row of the queued
  // step, and the next step takes those that go on past its token (their num_generated() +
  // 1-th): not the ones it ends by length, nor the ones already ended.
  std::vector<int32_t> from;  // the rows of `last` that go on
  size_t running = 0;
  for (size_t i = 0; i < last.rows.size(); ++i) {
    const Sequence& seq = *last.rows[i];
    if (seq.status != SequenceStatus::Running) continue;
    ++running;
    if (seq.num_generated() + 1 < seq.params.max_tokens &&
        static_cast<int64_t>(seq.tokens.size()) + 1 < model_.max_context())
      from.push_back(static_cast<int32_t>(i));
  }
  if (running != scheduler_.running().size() || from.empty()) return false;
  // Nor would it admit a waiting sequence: none waits, or the batch is full and stays so (every
  // row goes on). A row that ends on the queued token by EOS or a stop string frees its place a
  // step later than without overlap, so a waiting sequence is then admitted a step later.
  const bool batch_stays_full =
      from.size() == running && static_cast<int64_t>(running) >= scheduler_.options().max_running;
  if (!scheduler_.waiting().empty() && !batch_stays_full) return false;
  // Pages for one more token each (a sequence that does not fit is the scheduler's to preempt).
  for (int32_t i : from) {
    try {
      cache_.reserve(last.rows[static_cast<size_t>(i)]->kv, last.rows[static_cast<size_t>(i)]->num_computed + 1);
    } catch (const KvCacheFull&) {
      return false;
    }
  }
  auto next = std::make_unique<QueuedStep>();
  std::vector<ScheduledChunk> chunks;
  std::vector<StepChunk> plan;
  std::vector<DeviceSampling> rows;
  for (int32_t i : from) {
    Sequence* seq = last.rows[static_cast<size_t>(i)];
    chunks.push_back({seq, seq->num_computed, 1, true});
    plan.push_back({&seq->kv, seq->num_computed, 1, true, seq->params.sparsity ? &*seq->params.sparsity : nullptr});
    rows.push_back(device_sampling(seq->params.sampling, static_cast<uint64_t>(seq->num_generated() + 1)));
    next->rows.push_back(seq);
  }
  next->batch = plan_step(cache_, plan, &sparsity_);
  if (from.size() == last.rows.size()) from.clear();  // every row, in order: copied, not gathered
  try {
    model_.queue_sampled_after(next->batch, cache_, rows, from);
  } catch (const std::exception& e) {  // the rows go on from the scheduler's next plan
    spdlog::error("queueing an overlapped step failed: {}", e.what());
    return false;
  }
  ++steps_;
  after_queued(chunks);
  queued_steps_.push_back(std::move(next));
  return true;
}

void Engine::collect_step() {
  // Off the queue as the model takes it off its own; then its rows' tokens are taken. A row's
  // sequence that ends is kept (retired_) while a later queued step still holds it.
  const std::unique_ptr<QueuedStep> step = std::move(queued_steps_.front());
  queued_steps_.pop_front();
  struct Release {  // when no queued step holds the retired sequences any more, on any way out
    Engine& e;
    ~Release() {
      if (e.queued_steps_.empty()) e.release_retired();
    }
  } release{*this};
  sampled_.resize(step->rows.size());
  try {
    model_.collect_sampled(sampled_.data());
  } catch (const std::exception& e) {
    spdlog::error("forward step failed: {}", e.what());
    for (Sequence* seq : step->rows)
      if (seq->status != SequenceStatus::Finished) finish(*seq, FinishReason::Error, e.what());
    return;
  }
  for (size_t i = 0; i < step->rows.size(); ++i)
    if (step->rows[i]->status != SequenceStatus::Finished)  // else it ended on an earlier token
      accept(*step->rows[i], sampled_[i], std::nullopt);
}

void Engine::release_retired() {
  for (const auto& seq : retired_) cache_.release(seq->kv);
  retired_.clear();
}

bool Engine::busy() const {
  std::lock_guard lock(mutex_);
  return !inbox_.empty() || !aborts_.empty() || !scheduler_.idle() || !queued_steps_.empty();
}

void Engine::run_until_idle() {
  while (true) {
    if (step()) continue;
    if (!busy()) return;
  }
}

void Engine::update_stats() {
  const auto& ret = cache_.allocator(HeadKind::Retrieval);
  const auto& str = cache_.allocator(HeadKind::Streaming);
  std::lock_guard lock(mutex_);
  stats_.running = static_cast<int64_t>(scheduler_.running().size());
  stats_.waiting = static_cast<int64_t>(scheduler_.waiting().size() + inbox_.size());
  stats_.retrieval_pages = ret.num_pages();
  stats_.retrieval_pages_used = ret.num_used();
  stats_.streaming_pages = str.num_pages();
  stats_.streaming_pages_used = str.num_used();
  stats_.cached_pages = prefix_cache_ ? prefix_cache_->num_cached_pages() : 0;
  stats_.evictable_pages = ret.num_evictable() + str.num_evictable();
  stats_.prompt_tokens = prompt_tokens_;
  stats_.generation_tokens = generation_tokens_;
  stats_.prefix_tokens_queried = scheduler_.prefix_tokens_queried();
  stats_.prefix_tokens_hit = scheduler_.prefix_tokens_hit();
  stats_.preemptions = scheduler_.num_preemptions();
  stats_.steps = steps_;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Engine::start() {
  LSERVE_CHECK(!thread_.joinable(), "the engine is already running");
  stopping_ = draining_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop(bool drain) {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    draining_ = drain;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !aborts_.empty() || !scheduler_.idle() || !queued_steps_.empty();
      });
      const bool idle = inbox_.empty() && aborts_.empty() && scheduler_.idle() && queued_steps_.empty();
      if (stopping_ && (!draining_ || idle)) return;
    }
    try {
      if (!step()) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // waiting for pages
    } catch (const std::exception& e) {
      // A bug, not a request's fault: keep serving the others.
      spdlog::error("engine step failed: {}", e.what());
    }
  }
}

}  // namespace lserve
