// plan_step: turns the chunks one forward step runs (a prefill chunk or one decode token per
// sequence) into the AttentionBatch every layer reads: page tables, slots and positions. The
// sequences' pages must already be reserved for the chunk's tokens.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/attention_batch.h"
#include "kv/kv_cache.h"

namespace lserve {

struct StepChunk {
  SequenceKv* kv;     // pages reserved up to start + num_tokens
  int64_t start;      // position of the chunk's first token
  int64_t num_tokens;
  bool decoding;      // a decode row (decode windows, page selection)
  const SparsityConfig* sparsity = nullptr;  // the sequence's own policy (null: the step's)
};

AttentionBatch plan_step(const KvCache& cache, std::span<const StepChunk> chunks, const SparsityConfig* sparsity);

// After a step: releases streaming pages no later query can see. Until the prefill is done it
// keeps what either window can reach (the decode window may reach further back than the
// prefill window, and its pages must not be released early).
void trim_after_step(KvCache& cache, SequenceKv& kv, int64_t next_position, bool prefill_done,
                     const SparsityConfig& sparsity);

}  // namespace lserve
