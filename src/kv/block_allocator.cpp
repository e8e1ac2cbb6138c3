#include "kv/block_allocator.h"

#include "core/error.h"

namespace lserve {

BlockAllocator::BlockAllocator(int32_t num_pages) : ref_counts_(static_cast<size_t>(num_pages), 0) {
  LSERVE_CHECK(num_pages >= 0);
  free_list_.reserve(static_cast<size_t>(num_pages));
  for (PageId p = num_pages - 1; p >= 0; --p) free_list_.push_back(p);  // page 0 handed out first
}

std::optional<PageId> BlockAllocator::allocate() {
  if (free_list_.empty()) return std::nullopt;
  const PageId p = free_list_.back();
  free_list_.pop_back();
  ref_counts_[static_cast<size_t>(p)] = 1;
  return p;
}

void BlockAllocator::retain(PageId page) {
  LSERVE_CHECK(page >= 0 && page < num_pages() && ref_counts_[static_cast<size_t>(page)] > 0,
               "retain of a free page {}", page);
  ++ref_counts_[static_cast<size_t>(page)];
}

void BlockAllocator::release(PageId page) {
  LSERVE_CHECK(page >= 0 && page < num_pages() && ref_counts_[static_cast<size_t>(page)] > 0,
               "release of a free page {}", page);
  if (--ref_counts_[static_cast<size_t>(page)] == 0) free_list_.push_back(page);
}

}  // namespace lserve
