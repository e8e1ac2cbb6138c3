// KvCache: the physical KV pages of every layer and the page tables of the sequences using
// them. Bookkeeping (which page holds what) is BlockAllocator's and SequenceKv's; this class
// adds the storage and turns token counts into page allocations.
//
// Two pools, as in LServe: retrieval heads' pages hold every position of a sequence (and, per
// logical page, the per-channel min and max of the keys, which the page selector scores);
// streaming heads' pages hold only the sink and the local window, so their memory per sequence
// stays constant. A page id names the same positions in every layer of its pool.
//
// Storage, per layer and pool, K and V separately (every backend uses this layout):
//     k, v:          [num_pages, heads_in_pool(layer), page_size, head_dim]
//     key_min/max:   [num_pages, retrieval_heads(layer), page_size / logical_page_size, head_dim]
// KV head h of a layer lives in the pool of its kind at index slot(layer, h).index. With no
// streaming heads (dense), the retrieval pool holds every head in model order.
//
// Position p of a sequence lives in page p / page_size at offset p % page_size of each pool
// where it is kept:
//     retrieval: | page 0 | page 1 | page 2 | page 3 | page 4 | page 5 |   (all pages)
//     streaming: | page 0 |   --   |   --   | page 3 | page 4 | page 5 |   (sink + local window)
// Released streaming pages read kNoPage in the sequence's table.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "kv/block_allocator.h"
#include "sparse/head_pattern.h"
#include "sparse/sparsity_config.h"

namespace lserve {

struct ModelConfig;

inline constexpr PageId kNoPage = -1;

// The pool is out of pages: recoverable (the caller may free sequences or preempt).
class KvCacheFull : public Error {
 public:
  using Error::Error;
};

struct KvCacheOptions {
  int32_t page_size = 64;
  int32_t logical_page_size = 0;  // granularity of the key min/max summaries; 0: none (no selection)
  // Memory for K, V and summaries of all layers, both pools; page counts are the largest that fit.
  size_t memory_bytes = size_t{1} << 30;
  // Streaming pages each sequence may hold at once (sink + the widest local window + the
  // pages a step appends), and how many sequences run at once: the streaming pool is sized for
  // that, the retrieval pool gets the rest of the memory.
  int64_t streaming_pages_per_sequence = 0;
  int64_t max_sequences = 1;
  // Exact pool sizes, overriding memory_bytes when both are set (a cache sized for a known job).
  int64_t retrieval_pages = 0;
  int64_t streaming_pages = 0;
};

// The pages of one sequence, in position order.
struct PageTable {
  std::vector<PageId> pages;
  int64_t num_tokens = 0;  // tokens whose KV is (or is being) written
};

// Page selection of one (layer, selection unit) of a sequence, reused across decode steps.
struct PageSelection {
  std::vector<int32_t> pages;  // page indices within the sequence, ascending
  int64_t decode_step = -1;    // the step it was computed at; -1: never
  int64_t num_pages_then = 0;  // the sequence's page count then (newer pages are always read)
};

// A sequence's KV state: page tables of both pools, selections, and what the last step read.
struct SequenceKv {
  PageTable retrieval;
  PageTable streaming;  // kNoPage where released
  int64_t decode_steps = 0;
  std::vector<PageSelection> selections;  // [layer * units + unit], sized by the first selection
  int64_t live_streaming_pages = 0;        // streaming pages held now (not released)
  // Statistics of the last forward step, summed over layers and KV heads.
  int64_t kv_tokens_read = 0;
  int64_t kv_head_reads = 0;  // (layer, query head) pairs that contributed
  int64_t num_tokens() const { return retrieval.num_tokens; }
};

struct HeadSlot {
  HeadKind kind;
  int32_t index;  // the head's index within its pool at this layer
};

class KvCache {
 public:
  KvCache(const ModelConfig& config, const HeadPattern& pattern, const KvCacheOptions& options, Backend& backend);
  // Every head a retrieval head (dense attention).
  KvCache(const ModelConfig& config, const KvCacheOptions& options, Backend& backend);

  int32_t page_size() const { return page_size_; }
  int32_t logical_page_size() const { return logical_page_size_; }
  int64_t num_layers() const { return num_layers_; }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  DType dtype() const { return dtype_; }
  const HeadPattern& pattern() const { return pattern_; }
  bool has_streaming_heads() const { return pattern_.num_streaming() > 0; }
  HeadSlot slot(int64_t layer, int64_t kv_head) const { return slots_[layer][kv_head]; }
  int64_t heads_in_pool(HeadKind kind, int64_t layer) const;
  const BlockAllocator& allocator(HeadKind kind = HeadKind::Retrieval) const;
  BlockAllocator& allocator(HeadKind kind) { return pool(kind).allocator; }  // for the prefix cache
  bool has_pool(HeadKind kind) const { return pool(kind).bytes_per_page > 0; }

  // Grows the sequence so it holds `num_tokens` tokens: retrieval pages for every position,
  // streaming pages for the positions from `first_new` on (the step's new tokens; earlier
  // streaming pages are kept or already released). Throws KvCacheFull, leaving the sequence as
  // it was, when a pool cannot supply the pages.
  void reserve(SequenceKv& seq, int64_t num_tokens);
  // Releases streaming pages no query from `next_query_pos` on can see under `window`:
  // those wholly past the sink and wholly before next_query_pos - local + 1.
  void trim_streaming(SequenceKv& seq, int64_t next_query_pos, const StreamingWindow& window);
  // Returns every page of the sequence to the pools and empties it.
  void release(SequenceKv& seq);
  int64_t pages_for(int64_t num_tokens) const { return (num_tokens + page_size_ - 1) / page_size_; }

  // Pool views of a layer ([num_pages, heads_in_pool, page_size, head_dim]).
  Tensor k_pages(int64_t layer, HeadKind kind = HeadKind::Retrieval) const { return view(layer, kind, 0); }
  Tensor v_pages(int64_t layer, HeadKind kind = HeadKind::Retrieval) const { return view(layer, kind, 1); }
  // Retrieval heads' key summaries ([num_pages, retrieval heads, page_size / logical, head_dim]).
  Tensor key_min(int64_t layer) const { return view(layer, HeadKind::Retrieval, 2); }
  Tensor key_max(int64_t layer) const { return view(layer, HeadKind::Retrieval, 3); }

  size_t bytes_per_page(HeadKind kind) const;  // K, V (and summaries) of one page, all layers
  // Bytes of one page of each pool ({retrieval, streaming}) for a model and pattern.
  static std::pair<size_t, size_t> pool_page_bytes(const ModelConfig& config, const HeadPattern& pattern,
                                                   int32_t page_size, int32_t logical_page_size, DType dtype);
  // Dense bytes per page for a config (all heads retrieval, summaries included).
  static size_t bytes_per_page(const ModelConfig& config, int32_t page_size, DType dtype,
                               int32_t logical_page_size = 0);
  size_t total_bytes() const;
  // Bytes of KV (and summaries) the sequence holds now, in both pools.
  size_t sequence_bytes(const SequenceKv& seq) const;
  std::string summary() const;
  // Unique to this cache in the process, never reused (a new cache may get a freed one's
  // addresses): what a recorded step (Backend::run_step) keys the cache by.
  uint64_t id() const { return id_; }

 private:
  struct Pool {
    HeadKind kind;
    std::vector<int64_t> heads;  // per layer
    BlockAllocator allocator{0};
    std::shared_ptr<DeviceMemory> storage;
    std::vector<size_t> layer_offset;  // byte offset of each layer's block
    size_t bytes_per_page = 0;
  };
  Tensor view(int64_t layer, HeadKind kind, int part) const;
  Pool& pool(HeadKind kind) { return kind == HeadKind::Retrieval ? retrieval_ : streaming_; }
  const Pool& pool(HeadKind kind) const { return kind == HeadKind::Retrieval ? retrieval_ : streaming_; }
  size_t layer_bytes_per_page(const Pool& p, int64_t layer) const;
  void init_pool(Pool& p, int64_t num_pages, Backend& backend);

  uint64_t id_;
  int32_t page_size_, logical_page_size_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  DType dtype_;
  Device device_;
  HeadPattern pattern_;
  std::vector<std::vector<HeadSlot>> slots_;
  Pool retrieval_, streaming_;
};

}  // namespace lserve
