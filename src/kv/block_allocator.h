// BlockAllocator: the bookkeeping of a fixed pool of physical KV pages (ids 0..num_pages-1),
// apart from the storage itself. Pages are reference-counted so that sequences can share a
// prefix; a page returns to the free list when its last reference is dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace lserve {

using PageId = int32_t;

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_list_.size()); }
  int32_t num_used() const { return num_pages() - num_free(); }

  // A fresh page with ref count 1, or nullopt when the pool is exhausted.
  std::optional<PageId> allocate();
  // Adds a reference (a second sequence now points at the page).
  void retain(PageId page);
  // Drops a reference; the page is free again when none remain.
  void release(PageId page);
  int32_t ref_count(PageId page) const { return ref_counts_.at(static_cast<size_t>(page)); }

 private:
  std::vector<int32_t> ref_counts_;
  std::vector<PageId> free_list_;  // LIFO: recently freed pages are likely still in cache
};

}  // namespace lserve
