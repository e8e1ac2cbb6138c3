// The attention plan of one step: which sequences the prefill kernel takes (query tiles) and
// which the decode kernel takes (splits along the context, and the merges that follow). Built on
// the host once per step and GQA group size, uploaded once, read by every layer.
//
// Routing: a sequence with one new token and a group of at most kDecodeMaxGroup heads goes to
// the decode kernel; every other sequence (prefill chunks, several new tokens) to prefill.
// Splits depend on the sequence alone (kDecodeSplitKeys keys each), so a request's attention is
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
};

AttentionPlan make_attention_plan(const AttentionBatch& batch, int32_t group);

}  // namespace lserve::cuda
