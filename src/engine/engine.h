// Engine: serves many requests at once on one model and KV cache. Requests are submitted from
// any thread; one engine thread runs steps: the scheduler plans a batch (decode rows and
// prefill chunks), the model runs it in one forward pass, and each sequence whose step ended
// on its newest token samples its next one. Outputs go back through per-request callbacks.
// The engine does not know which backend computes; that is the model's and the cache's.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/histogram.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "kv/prefix_cache.h"
#include "model/llama_model.h"
#include "sparse/sparsity_config.h"

namespace lserve {

struct EngineOptions {
  SchedulerOptions scheduler;
  int64_t max_waiting = 1024;  // queued requests beyond which submit() refuses (EngineOverloaded)
  bool prefix_caching = true;
  // Overlapped decode steps (as Generator::set_overlap_steps): while a step of decode rows runs
  // on the device, the next one for the sequences that go on is planned and queued, fed by the
  // tokens it draws there, before its tokens are read back. Only while the next plan would admit
  // nothing (none waits, or the batch is full at max_running and every row goes on), no row
  // samples on the host, and the backend can overlap the two steps; a sequence
  // that ends on the first step's token by EOS or a stop string computes one token past its end,
  // which is dropped (one that ends by length is left out of the next step).
  bool overlap_steps = false;
};

// A snapshot for /metrics and the benchmarks.
struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t retrieval_pages = 0, retrieval_pages_used = 0, streaming_pages = 0, streaming_pages_used = 0;
  int64_t cached_pages = 0;      // indexed by the prefix cache (in use or evictable)
  int64_t evictable_pages = 0;   // cached and unreferenced
  int64_t prompt_tokens = 0, generation_tokens = 0;
  int64_t prefix_tokens_queried = 0, prefix_tokens_hit = 0;
  int64_t preemptions = 0, steps = 0;
  int64_t requests_finished[5] = {};  // by FinishReason
  Histogram time_to_first_token{exponential_buckets(0.001, 2, 65.536)};
  Histogram inter_token_latency{exponential_buckets(0.0005, 2, 8.192)};
  Histogram request_latency{exponential_buckets(0.01, 2, 655.36)};
};

class Engine {
 public:
  // `sparsity` must match the cache's head pattern (streaming heads iff the policy has them).
  Engine(LlamaModel& model, KvCache& cache, const Tokenizer* tokenizer, const SparsityConfig& sparsity,
         EngineOptions options = {});
  ~Engine();  // stops the engine thread; unfinished requests are aborted
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id. Throws InvalidRequest (bad parameters, a request that
  // can never fit the context or the KV pool) or EngineOverloaded (queue full).
  uint64_t submit(RequestParams params, OutputCallback on_output);
  // Ends a request at the next step boundary, freeing its pages; its callback gets a final
  // output with FinishReason::Abort. Unknown or finished ids are ignored.
  void abort(uint64_t id);

  // Runs steps on a thread of the engine's own until stop().
  void start();
  // drain: finish the requests already submitted first (new submits are refused meanwhile).
  void stop(bool drain);
  // One step on the calling thread (when not started): false when there was nothing to do.
  bool step();
  void run_until_idle();

  EngineStats stats() const;
  const LlamaModel& model() const { return model_; }
  const SparsityConfig& sparsity() const { return sparsity_; }
  int64_t max_context() const { return model_.max_context(); }

 private:
  void validate(const RequestParams& params) const;
  void finish(Sequence& seq, FinishReason reason, std::string error = {}, RequestOutput out = {});
  void sample(Sequence& seq, float* logits);
  // Appends a sequence's next token and reports it (or finishes the sequence).
  void accept(Sequence& seq, int32_t token, std::optional<TokenLogprob> logprob);
  void update_stats();
  void loop();
  bool busy() const;  // requests running or waiting, or steps queued (engine thread)

  // Bookkeeping of a step as soon as it is queued (none of it waits for the step's tokens):
  // what each sequence has computed, prompt pages indexed, streaming pages released.
  void after_queued(const std::vector<ScheduledChunk>& chunks);
  // Overlapped steps: a step of decode rows queued on the device, its tokens not yet read.
  struct QueuedStep {
    AttentionBatch batch;
    std::vector<Sequence*> rows;  // the sequence of each row (its logit row)
  };
  // Queues the step after the newest queued one, for those of its sequences that go on, when
  // nothing stands in the way (EngineOptions::overlap_steps); false if it did not.
  bool queue_next_step();
  // Reads the oldest queued step's tokens back and takes them (accept).
  void collect_step();
  void release_retired();  // the pages of sequences retired while steps were queued

  LlamaModel& model_;
  KvCache& cache_;
  const Tokenizer* tokenizer_;
  SparsityConfig sparsity_;
  EngineOptions options_;
  std::unique_ptr<PrefixCache> prefix_cache_;
  Scheduler scheduler_;

  // Owned by the engine thread.
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> sequences_;
  std::vector<float> logits_;
  std::vector<int32_t> sampled_;  // tokens drawn on the device, one per logit row
  std::deque<std::unique_ptr<QueuedStep>> queued_steps_;  // oldest first
  // Sequences finished while a queued step still holds them, kept with their pages until the
  // queue is collected.
  std::vector<std::unique_ptr<Sequence>> retired_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0, steps_ = 0;

  // Shared with submitting threads.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<uint64_t> aborts_;
  uint64_t next_id_ = 1;
  int64_t queued_ = 0;  // submitted and not yet finished
  bool stopping_ = false, draining_ = false;
  std::thread thread_;
  EngineStats stats_;
};

}  // namespace lserve
