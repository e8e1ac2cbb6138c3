// KvCache: the physical KV pages of every layer plus the page tables of the sequences using
// them. Bookkeeping (which page holds what) is BlockAllocator's and PageTable's; this class
// adds the storage and turns token counts into page allocations.
//
// Storage layout, per layer, for K and for V separately (the CUDA backend uses the same):
//     [num_pages, num_kv_heads, page_size, head_dim]
// so one page of one head is a contiguous page_size x head_dim tile: a selected page is one
// contiguous read per head, and a page can be dropped for some heads but not others later
// (streaming heads get their own pool in the sparse milestone).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "kv/block_allocator.h"

namespace lserve {

struct ModelConfig;

// The pool is out of pages: recoverable (the caller may free sequences or preempt).
class KvCacheFull : public Error {
 public:
  using Error::Error;
};

struct KvCacheOptions {
  int32_t page_size = 64;
  // Memory for K and V of all layers; the page count is the largest that fits.
  size_t memory_bytes = size_t{1} << 30;
};

// The pages of one sequence, in position order.
struct PageTable {
  std::vector<PageId> pages;
  int64_t num_tokens = 0;  // tokens whose KV is (or is being) written
};

class KvCache {
 public:
  KvCache(const ModelConfig& config, const KvCacheOptions& options, Backend& backend);

  int32_t page_size() const { return page_size_; }
  int64_t num_layers() const { return num_layers_; }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  DType dtype() const { return dtype_; }
  const BlockAllocator& allocator() const { return allocator_; }

  // Grows `table` so it can hold `num_tokens` tokens. Throws KvCacheFull (leaving the table
  // as it was) when the pool cannot supply the pages.
  void reserve(PageTable& table, int64_t num_tokens);
  // Returns every page of the table to the pool and empties it.
  void release(PageTable& table);
  // Pages needed for n tokens.
  int64_t pages_for(int64_t num_tokens) const { return (num_tokens + page_size_ - 1) / page_size_; }

  // [num_pages, num_kv_heads, page_size, head_dim] views of a layer's K and V.
  Tensor k_pages(int64_t layer) const { return pool_view(layer, 0); }
  Tensor v_pages(int64_t layer) const { return pool_view(layer, 1); }

  size_t bytes_per_page() const;  // K and V of one page, all layers
  static size_t bytes_per_page(const ModelConfig& config, int32_t page_size, DType dtype);
  size_t total_bytes() const { return bytes_per_page() * static_cast<size_t>(allocator_.num_pages()); }
  std::string summary() const;

 private:
  Tensor pool_view(int64_t layer, int kv) const;

  int32_t page_size_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  DType dtype_;
  Device device_;
  BlockAllocator allocator_;
  std::shared_ptr<DeviceMemory> storage_;
};

}  // namespace lserve
