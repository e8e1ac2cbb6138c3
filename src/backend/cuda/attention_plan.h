// The attention plan of one step: which sequences the prefill kernel takes (query tiles) and
// which the decode kernel takes (splits along the context, and the merges that follow). Built on
// the host once per step and GQA group size, uploaded once, read by every layer.
//
// Routing: a sequence with one new token and a group of at most kDecodeMaxGroup heads goes to
// the decode kernel; every other sequence (prefill chunks, several new tokens) to prefill.
// Splits depend on the sequence alone (decode_splits in attention.h), so a request's attention is
// bit-identical whatever it is batched with.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/attention.h"

namespace lserve {
struct AttentionBatch;
}

namespace lserve::cuda {

struct AttentionPlan {
  std::vector<PrefillItem> prefill;  // longest-running tiles first
  std::vector<DecodeItem> decode;
  std::vector<MergeItem> merge;
  int32_t num_partials = 0;
  int32_t decode_seqs = 0;  // sequences the decode kernel takes
  // The most decode items (and partial states) and merges a batch of these sequences can need
  // at any length: a recorded step is laid out (and launched) for these.
  int32_t decode_capacity = 0;
  int32_t merge_capacity() const { return decode_seqs; }
};

// max_splits: decode_max_splits() of the model's attention on this device. list_splits: per
// sequence, 0, or the splits of kDecodeListKeys keys its page lists are read in (a sequence
// whose retrieval heads read selected pages this step); list_slots: per sequence, its
// page-selection slot (DecodeItem::slot).
AttentionPlan make_attention_plan(const AttentionBatch& batch, int32_t group, int32_t max_splits,
                                  const std::vector<int32_t>& list_splits = {}, int32_t list_entries_per_split = 1,
                                  const std::vector<int32_t>& list_slots = {});

}  // namespace lserve::cuda
