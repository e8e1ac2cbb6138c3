#include "backend/cuda/attention_plan.h"

#include <algorithm>

#include "backend/attention_batch.h"

namespace lserve::cuda {

AttentionPlan make_attention_plan(const AttentionBatch& batch, int32_t group, int32_t max_splits,
                                  const std::vector<int32_t>& list_splits, int32_t list_entries_per_split,
                                  const std::vector<int32_t>& list_slots) {
  AttentionPlan plan;
  std::vector<int32_t> tile_keys;  // keys each prefill tile visits, for the ordering below
  for (int32_t b = 0; b < batch.num_seqs(); ++b) {
    const int32_t qlen = batch.query_len(b), seq_len = batch.seq_lens[b];
    if (qlen == 0) continue;
    if (qlen == 1 && group <= kDecodeMaxGroup) {
      ++plan.decode_seqs;
      const int32_t listed = static_cast<size_t>(b) < list_splits.size() ? list_splits[static_cast<size_t>(b)] : 0;
      plan.decode_capacity += std::max(max_splits, listed);
      if (listed > 0) {  // page lists: a fixed number of splits of list entries
        const int32_t e = list_entries_per_split;
        const int32_t slot = static_cast<size_t>(b) < list_slots.size() ? list_slots[static_cast<size_t>(b)] : -1;
        if (listed == 1) {
          plan.decode.push_back({b, 0, e, -1, 1, -1, slot});
          continue;
        }
        const auto merge = static_cast<int32_t>(plan.merge.size());
        plan.merge.push_back({b, plan.num_partials, listed});
        for (int32_t s = 0; s < listed; ++s)
          plan.decode.push_back({b, s * e, (s + 1) * e, plan.num_partials++, listed, merge, slot});
        continue;
      }
      const DecodeSplits splits = decode_splits(seq_len, max_splits);
      if (splits.count <= 1) {
        plan.decode.push_back({b, 0, seq_len, -1, 0, -1, -1});
        continue;
      }
      const auto merge = static_cast<int32_t>(plan.merge.size());
      plan.merge.push_back({b, plan.num_partials, splits.count});
      for (int32_t s = 0; s < splits.count; ++s)
        plan.decode.push_back(
            {b, s * splits.keys, std::min(seq_len, (s + 1) * splits.keys), plan.num_partials++, 0, merge, -1});
      continue;
    }
    const int32_t rows = qlen * group;
    for (int32_t r = 0; r < rows; r += kPrefillItemRows) {
      plan.prefill.push_back({b, r});
      const int32_t last_row = std::min(rows, r + kPrefillItemRows) - 1;
      tile_keys.push_back(seq_len - qlen + last_row / group + 1);
    }
  }
  // Longest tiles first: the causal tiles at the end of a long prompt visit the most keys, and
  // starting them last would leave the tail of the launch on a few SMs.
  std::vector<size_t> order(plan.prefill.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tile_keys[a] > tile_keys[b]; });
  std::vector<PrefillItem> sorted(order.size());
  for (size_t i = 0; i < order.size(); ++i) sorted[i] = plan.prefill[order[i]];
  plan.prefill = std::move(sorted);
  return plan;
}

}  // namespace lserve::cuda
