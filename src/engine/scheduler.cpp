#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace lserve {

Scheduler::Scheduler(KvCache& cache, PrefixCache* prefix_cache, SchedulerOptions options)
    : cache_(cache), prefix_cache_(prefix_cache), options_(options) {
  LSERVE_CHECK(options_.max_batched_tokens >= 1 && options_.max_running >= 1, "scheduler limits must be positive");
}

void Scheduler::add(Sequence* seq) {
  seq->status = SequenceStatus::Waiting;
  waiting_.push_back(seq);
}

bool Scheduler::try_reserve(Sequence& seq, int64_t num_tokens) {
  try {
    cache_.reserve(seq.kv, seq.num_computed + num_tokens);
    return true;
  } catch (const KvCacheFull&) {
    return false;
  }
}

void Scheduler::preempt(Sequence& seq) {
  cache_.release(seq.kv);
  seq.num_computed = seq.pages_indexed = 0;
  seq.status = SequenceStatus::Waiting;
  ++seq.preemptions;
  ++num_preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), &seq));
  waiting_.push_front(&seq);
}

void Scheduler::admit(Sequence& seq) {
  seq.status = SequenceStatus::Running;
  running_.push_back(&seq);
}

std::vector<ScheduledChunk> Scheduler::schedule(std::vector<Sequence*>* preempted) {
  std::vector<ScheduledChunk> chunks;
  int64_t budget = options_.max_batched_tokens;
  auto schedule_running = [&](bool decoding_pass) {
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      Sequence& seq = *running_[i];
      if (seq.prefilling() == decoding_pass) {
        ++i;
        continue;
      }
      const int64_t n = std::min(seq.pending_tokens(), budget);
      // Free pages by preempting the newest sequences until this one fits (or is itself the newest).
      bool fits = try_reserve(seq, n);
      while (!fits && running_.back() != &seq) {
        Sequence* victim = running_.back();
        // A victim already planned for this step gives its tokens back to the budget.
        auto planned = std::find_if(chunks.begin(), chunks.end(), [&](const ScheduledChunk& c) { return c.seq == victim; });
        if (planned != chunks.end()) {
          budget += planned->num_tokens;
          chunks.erase(planned);
        }
        preempt(*victim);
        if (preempted) preempted->push_back(victim);
        fits = try_reserve(seq, n);
      }
      if (!fits) {  // it is the newest and still does not fit: it waits
        preempt(seq);
        if (preempted) preempted->push_back(&seq);
        continue;  // running_[i] is now the next sequence
      }
      chunks.push_back({&seq, seq.num_computed, n, !seq.prefilling()});
      budget -= n;
      ++i;
    }
  };
  schedule_running(true);   // decode rows first: a long prompt never stalls running decodes
  schedule_running(false);  // then the running prompts' next chunks

  while (!waiting_.empty() && budget > 0 && static_cast<int32_t>(running_.size()) < options_.max_running) {
    Sequence& seq = *waiting_.front();
    // Everything it held was freed when it was preempted; look its prompt up again.
    if (prefix_cache_ && seq.num_computed == 0)
      seq.num_computed = seq.cached_prompt_tokens =
          prefix_cache_->attach(seq.kv, seq.page_hashes, seq.prompt_len, seq.prefill_keep);
    seq.pages_indexed = seq.num_computed / cache_.page_size();
    const int64_t n = std::min(seq.pending_tokens(), budget);
    if (!try_reserve(seq, n)) {  // admission never preempts: it waits for pages
      cache_.release(seq.kv);
      seq.num_computed = seq.cached_prompt_tokens = 0;
      break;
    }
    waiting_.pop_front();
    if (prefix_cache_) {
      prefix_tokens_queried_ += seq.prompt_len;
      prefix_tokens_hit_ += seq.cached_prompt_tokens;
    }
    admit(seq);
    chunks.push_back({&seq, seq.num_computed, n, !seq.prefilling()});
    budget -= n;
  }
  return chunks;
}

void Scheduler::remove(Sequence* seq, bool keep_pages) {
  if (!keep_pages) cache_.release(seq->kv);
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  seq->status = SequenceStatus::Finished;
}

}  // namespace lserve
