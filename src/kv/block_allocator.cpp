#include "kv/block_allocator.h"

#include "core/error.h"

namespace lserve {

BlockAllocator::BlockAllocator(int32_t num_pages)
    : ref_counts_(static_cast<size_t>(num_pages), 0),
      cached_(static_cast<size_t>(num_pages), 0),
      evictable_pos_(static_cast<size_t>(num_pages)) {
  LSERVE_CHECK(num_pages >= 0);
  free_list_.reserve(static_cast<size_t>(num_pages));
  for (PageId p = num_pages - 1; p >= 0; --p) free_list_.push_back(p);  // page 0 handed out first
}

void BlockAllocator::check(PageId page) const {
  LSERVE_CHECK(page >= 0 && page < num_pages(), "page {} outside the pool of {}", page, num_pages());
}

std::optional<PageId> BlockAllocator::allocate() {
  PageId p;
  if (!free_list_.empty()) {
    p = free_list_.back();
    free_list_.pop_back();
  } else if (!evictable_.empty()) {
    p = evictable_.front();
    evictable_.pop_front();
    cached_[static_cast<size_t>(p)] = 0;
    if (on_evict_) on_evict_(p);
  } else {
    return std::nullopt;
  }
  ref_counts_[static_cast<size_t>(p)] = 1;
  return p;
}

void BlockAllocator::retain(PageId page) {
  check(page);
  int32_t& refs = ref_counts_[static_cast<size_t>(page)];
  if (refs == 0) {
    LSERVE_CHECK(cached_[static_cast<size_t>(page)], "retain of a free page {}", page);
    evictable_.erase(evictable_pos_[static_cast<size_t>(page)]);
  }
  ++refs;
}

void BlockAllocator::release(PageId page) {
  check(page);
  int32_t& refs = ref_counts_[static_cast<size_t>(page)];
  LSERVE_CHECK(refs > 0, "release of a free page {}", page);
  if (--refs > 0) return;
  if (cached_[static_cast<size_t>(page)])
    evictable_pos_[static_cast<size_t>(page)] = evictable_.insert(evictable_.end(), page);
  else
    free_list_.push_back(page);
}

void BlockAllocator::set_cached(PageId page, bool cached) {
  check(page);
  uint8_t& flag = cached_[static_cast<size_t>(page)];
  if (static_cast<bool>(flag) == cached) return;
  const int32_t refs = ref_counts_[static_cast<size_t>(page)];
  LSERVE_CHECK(refs > 0 || !cached, "only a page in use can be marked cached");
  flag = cached ? 1 : 0;
  if (refs == 0) {  // an evictable page the index forgets is simply free
    evictable_.erase(evictable_pos_[static_cast<size_t>(page)]);
    free_list_.push_back(page);
  }
}

}  // namespace lserve
