// BlockAllocator: the bookkeeping of a fixed pool of physical KV pages (ids 0..num_pages-1),
// apart from the storage itself. Pages are reference-counted so that sequences can share a
// prefix. When the last reference goes, a page becomes free; or, if the prefix cache has
// marked it as holding a reusable prefix, evictable: its contents stay until a fresh page is
// needed and no free one is left, and then the least recently released goes first.
//
//   page states:   in use (refs > 0)  --last release-->  free         (uncached)
//                                     --last release-->  evictable    (cached; LRU order)
//   evictable --retain--> in use;  evictable --allocate when nothing is free--> in use (evicted)
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <vector>

namespace lserve {

using PageId = int32_t;

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_pages);
  BlockAllocator(BlockAllocator&&) = default;
  BlockAllocator& operator=(BlockAllocator&&) = default;

  int32_t num_pages() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Pages an allocation can get: free plus evictable.
  int32_t num_free() const { return static_cast<int32_t>(free_list_.size() + evictable_.size()); }
  int32_t num_evictable() const { return static_cast<int32_t>(evictable_.size()); }
  int32_t num_used() const { return num_pages() - num_free(); }

  // A page with ref count 1 (free pages first, then the least recently released evictable
  // one, which is evicted), or nullopt when every page is in use.
  std::optional<PageId> allocate();
  // Adds a reference (a second sequence now points at the page). An evictable page is revived.
  void retain(PageId page);
  // Drops a reference; the page becomes free or evictable when none remain.
  void release(PageId page);
  int32_t ref_count(PageId page) const { return ref_counts_.at(static_cast<size_t>(page)); }

  // The prefix cache marks pages whose contents it indexes. A cached page that is evicted is
  // reported to `on_evict` so the index can forget it; unmarking an evictable page frees it.
  void set_cached(PageId page, bool cached);
  bool cached(PageId page) const { return cached_.at(static_cast<size_t>(page)) != 0; }
  void set_evict_callback(std::function<void(PageId)> on_evict) { on_evict_ = std::move(on_evict); }

 private:
  void check(PageId page) const;

  std::vector<int32_t> ref_counts_;
  std::vector<uint8_t> cached_;
  std::vector<PageId> free_list_;  // LIFO: recently freed pages are likely still in CPU caches
  std::list<PageId> evictable_;    // front: released longest ago
  std::vector<std::list<PageId>::iterator> evictable_pos_;
  std::function<void(PageId)> on_evict_;
};

}  // namespace lserve
