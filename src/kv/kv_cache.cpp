#include "kv/kv_cache.h"

#include <fmt/format.h>

#include "model/model_config.h"

namespace lserve {

namespace {
int32_t pages_that_fit(const ModelConfig& c, const KvCacheOptions& o, DType dtype) {
  LSERVE_CHECK(o.page_size > 0);
  const size_t per_page = KvCache::bytes_per_page(c, o.page_size, dtype);
  const size_t n = o.memory_bytes / per_page;
  if (n == 0)
    fail("KV cache memory of {} bytes holds not even one page ({} bytes per {}-token page)", o.memory_bytes,
         per_page, o.page_size);
  if (n > static_cast<size_t>(INT32_MAX)) fail("KV cache of {} pages is too many", n);
  return static_cast<int32_t>(n);
}
}  // namespace

KvCache::KvCache(const ModelConfig& config, const KvCacheOptions& options, Backend& backend)
    : page_size_(options.page_size),
      num_layers_(config.num_layers),
      num_kv_heads_(config.num_kv_heads),
      head_dim_(config.head_dim),
      dtype_(backend.compute_dtype()),
      device_(backend.device()),
      allocator_(pages_that_fit(config, options, backend.compute_dtype())) {
  storage_ = backend.allocate(total_bytes());
}

void KvCache::reserve(PageTable& table, int64_t num_tokens) {
  const int64_t needed = pages_for(num_tokens) - static_cast<int64_t>(table.pages.size());
  if (needed <= 0) return;
  if (needed > allocator_.num_free())
    throw KvCacheFull(fmt::format("KV cache is full: {} more pages needed, {} of {} free", needed,
                                  allocator_.num_free(), allocator_.num_pages()));
  for (int64_t i = 0; i < needed; ++i) table.pages.push_back(*allocator_.allocate());
}

void KvCache::release(PageTable& table) {
  for (PageId p : table.pages) allocator_.release(p);
  table.pages.clear();
  table.num_tokens = 0;
}

size_t KvCache::bytes_per_page(const ModelConfig& c, int32_t page_size, DType dtype) {
  return 2 * static_cast<size_t>(c.num_layers * c.num_kv_heads * c.head_dim) * static_cast<size_t>(page_size) *
         dtype_size(dtype);
}

size_t KvCache::bytes_per_page() const {
  return 2 * static_cast<size_t>(num_layers_ * num_kv_heads_ * head_dim_) * static_cast<size_t>(page_size_) *
         dtype_size(dtype_);
}

Tensor KvCache::pool_view(int64_t layer, int kv) const {
  LSERVE_CHECK(layer >= 0 && layer < num_layers_);
  const int64_t n = allocator_.num_pages();
  const size_t one_pool = bytes_per_page() / static_cast<size_t>(2 * num_layers_) * static_cast<size_t>(n);
  Tensor t{static_cast<char*>(storage_->data()) + (static_cast<size_t>(layer) * 2 + kv) * one_pool, dtype_,
           Shape{n, num_kv_heads_, page_size_, head_dim_}, device_};
  return t;
}

std::string KvCache::summary() const {
  return fmt::format("KV cache: {} pages x {} tokens ({} tokens), {:.1f} MiB {} ({} KiB per page), {} used",
                     allocator_.num_pages(), page_size_, static_cast<int64_t>(allocator_.num_pages()) * page_size_,
                     total_bytes() / 1048576.0, dtype_name(dtype_), bytes_per_page() / 1024, allocator_.num_used());
}

}  // namespace lserve
