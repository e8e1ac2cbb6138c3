// Scheduler: continuous batching. Each step it builds one batch of decode rows and prefill
// chunks under a token budget and the KV pages that are free:
//   1. every running sequence that is decoding gets its one token (decodes never wait behind a
//      long prompt);
//   2. running sequences still in their prompt get the next chunk the budget allows;
//   3. waiting sequences are admitted, oldest first, while the budget, the running-sequence
//      limit and the free pages allow (admission never preempts).
// When a running sequence needs a page and none is free, the newest running sequence is
// preempted: its pages are freed and it goes back to the head of the queue, to be recomputed
// later (its generated tokens are replayed as decode rows; see sequence.h).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/sequence.h"
#include "kv/kv_cache.h"
#include "kv/prefix_cache.h"

namespace lserve {

struct SchedulerOptions {
  int64_t max_batched_tokens = 2048;  // prefill chunk tokens + decode rows per step
  int32_t max_running = 64;           // sequences holding KV at once
};

struct ScheduledChunk {
  Sequence* seq;
  int64_t start;       // == seq->num_computed when scheduled
  int64_t num_tokens;
  bool decoding;       // a generated token (decode row), else a prompt chunk
};

class Scheduler {
 public:
  // prefix_cache may be null (no prefix caching).
  Scheduler(KvCache& cache, PrefixCache* prefix_cache, SchedulerOptions options);

  const SchedulerOptions& options() const { return options_; }
  void add(Sequence* seq);  // to the back of the waiting queue
  // The next step's work; `preempted` receives the sequences preempted while planning it.
  std::vector<ScheduledChunk> schedule(std::vector<Sequence*>* preempted = nullptr);
  // Takes a sequence out (finished or aborted), returning its pages unless keep_pages (a step
  // still queued on the device holds them: the caller releases them once it is collected).
  void remove(Sequence* seq, bool keep_pages = false);

  const std::vector<Sequence*>& running() const { return running_; }
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Prompt tokens of admitted sequences, and those of them found in the prefix cache.
  int64_t prefix_tokens_queried() const { return prefix_tokens_queried_; }
  int64_t prefix_tokens_hit() const { return prefix_tokens_hit_; }

 private:
  bool try_reserve(Sequence& seq, int64_t num_tokens);
  void preempt(Sequence& seq);
  void admit(Sequence& seq);

  KvCache& cache_;
  PrefixCache* prefix_cache_;
  SchedulerOptions options_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order: the back is the newest
  int64_t num_preemptions_ = 0;
  int64_t prefix_tokens_queried_ = 0, prefix_tokens_hit_ = 0;
};

}  // namespace lserve
