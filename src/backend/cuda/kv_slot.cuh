// Where a new token's row of one KV head goes in the paged pools (kv/kv_cache.h layout
// [num_pages, heads_in_pool, page_size, head_dim]): its head's pool (retrieval or streaming, by
// the head map), the page and offset of its slot, and the page's first row of that head.
// Shared by the KV append kernels.
#pragma once

#include "backend/cuda/kernels.h"

namespace lserve::cuda {

struct KvSlot {
  bf16* k;
  bf16* v;
  bool streaming;
  int index;             // the head's index in its pool (for a retrieval head, its summaries' too)
  int64_t page, offset;  // the slot's page and its row within the page
  int64_t row0;          // the page's first row of this head: rows row0 .. row0 + page_size - 1

  __device__ static KvSlot of(const KvPools& pools, const HeadMap& heads, int kv_head, int64_t t, int64_t page_size) {
    const int s = heads.slot[kv_head];
    KvSlot r;
    r.streaming = s < 0;
    r.index = r.streaming ? ~s : s;
    const int pool_heads = r.streaming ? heads.stream_heads : heads.retrieval_heads;
    const int64_t slot = (r.streaming ? pools.stream_slot_mapping : pools.slot_mapping)[t];
    r.k = r.streaming ? pools.k_stream : pools.k_pages;
    r.v = r.streaming ? pools.v_stream : pools.v_pages;
    r.page = slot / page_size;
    r.offset = slot % page_size;
    r.row0 = (r.page * pool_heads + r.index) * page_size;
    return r;
  }
};

}  // namespace lserve::cuda
