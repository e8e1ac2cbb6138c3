// HeadMap: where one layer's KV heads live in the two pools of the KV cache (kv/kv_cache.h),
// passed to the kernels by value. Retrieval heads' pages hold every position; streaming heads'
// pages only the sink and the local window (released pages read -1 in their page table).
#pragma once

#include <cstdint>

namespace lserve::cuda {

inline constexpr int kMaxKvHeads = 128;  // per layer

struct HeadMap {
  // slot[h] >= 0: KV head h is head slot[h] of the retrieval pool; < 0: head ~slot[h] of the
  // streaming pool. Dense attention: every head in the retrieval pool, in order.
  int16_t slot[kMaxKvHeads] = {};
  int32_t retrieval_heads = 0, stream_heads = 0;  // heads in each pool at this layer
};

}  // namespace lserve::cuda
