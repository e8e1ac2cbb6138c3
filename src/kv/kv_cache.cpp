#include "kv/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>

#include "model/model_config.h"

namespace lserve {

namespace {
std::vector<std::vector<HeadSlot>> make_slots(const HeadPattern& p) {
  std::vector<std::vector<HeadSlot>> slots(static_cast<size_t>(p.num_layers()));
  for (int64_t l = 0; l < p.num_layers(); ++l) {
    int32_t next[2] = {0, 0};
    for (int64_t h = 0; h < p.num_kv_heads(); ++h) {
      const HeadKind k = p.kind(l, h);
      slots[static_cast<size_t>(l)].push_back({k, next[static_cast<int>(k)]++});
    }
  }
  return slots;
}
}  // namespace

KvCache::KvCache(const ModelConfig& config, const KvCacheOptions& options, Backend& backend)
    : KvCache(config, HeadPattern::all_retrieval(config.num_layers, config.num_kv_heads), options, backend) {}

namespace {
std::atomic<uint64_t> next_cache_id{1};
}  // namespace

KvCache::KvCache(const ModelConfig& config, const HeadPattern& pattern, const KvCacheOptions& o, Backend& backend)
    : id_(next_cache_id.fetch_add(1, std::memory_order_relaxed)),
      page_size_(o.page_size),
      logical_page_size_(o.logical_page_size),
      num_layers_(config.num_layers),
      num_kv_heads_(config.num_kv_heads),
      head_dim_(config.head_dim),
      dtype_(backend.compute_dtype()),
      device_(backend.device()),
      pattern_(pattern),
      slots_(make_slots(pattern)) {
  LSERVE_CHECK(page_size_ > 0);
  if (logical_page_size_ < 0 || (logical_page_size_ > 0 && page_size_ % logical_page_size_ != 0))
    fail("logical page size {} must divide the page size {}", logical_page_size_, page_size_);
  pattern_.validate(num_layers_, num_kv_heads_);
  retrieval_.kind = HeadKind::Retrieval;
  streaming_.kind = HeadKind::Streaming;
  for (Pool* p : {&retrieval_, &streaming_}) {
    for (int64_t l = 0; l < num_layers_; ++l) {
      const int64_t n = p->kind == HeadKind::Streaming ? pattern_.num_streaming(l) : num_kv_heads_ - pattern_.num_streaming(l);
      p->heads.push_back(n);
      p->bytes_per_page += layer_bytes_per_page(*p, l);
    }
  }
  // The streaming pool holds a bounded window per sequence; the retrieval pool the rest.
  int64_t streaming_pages = 0, retrieval_pages = 0;
  if (o.retrieval_pages > 0 || o.streaming_pages > 0) {
    retrieval_pages = retrieval_.bytes_per_page ? o.retrieval_pages : 0;
    streaming_pages = streaming_.bytes_per_page ? o.streaming_pages : 0;
  } else {
    if (streaming_.bytes_per_page > 0) {
      LSERVE_CHECK(o.streaming_pages_per_sequence > 0, "streaming heads need streaming_pages_per_sequence");
      // At most three quarters of the memory, so retrieval heads keep room to grow.
      streaming_pages = std::min<int64_t>(o.max_sequences * o.streaming_pages_per_sequence,
                                          static_cast<int64_t>(o.memory_bytes / 4 * 3 / streaming_.bytes_per_page));
    }
    if (retrieval_.bytes_per_page > 0) {
      const size_t left = o.memory_bytes - static_cast<size_t>(streaming_pages) * streaming_.bytes_per_page;
      retrieval_pages = static_cast<int64_t>(left / retrieval_.bytes_per_page);
    }
  }
  if (streaming_.bytes_per_page > 0 && streaming_pages < std::max<int64_t>(o.streaming_pages_per_sequence, 1))
    fail("KV cache memory of {} bytes cannot hold one sequence's streaming window ({} pages of {} bytes)",
         o.memory_bytes, o.streaming_pages_per_sequence, streaming_.bytes_per_page);
  if (retrieval_.bytes_per_page > 0 && retrieval_pages == 0)
    fail("KV cache memory of {} bytes holds not even one page ({} bytes per {}-token page)", o.memory_bytes,
         retrieval_.bytes_per_page, page_size_);
  if (retrieval_pages > INT32_MAX || streaming_pages > INT32_MAX) fail("KV cache of that many pages is too large");
  init_pool(retrieval_, retrieval_pages, backend);
  init_pool(streaming_, streaming_pages, backend);
}

size_t KvCache::layer_bytes_per_page(const Pool& p, int64_t layer) const {
  const int64_t heads = p.heads[static_cast<size_t>(layer)];
  const int64_t summaries = p.kind == HeadKind::Retrieval && logical_page_size_ > 0 ? 2 * (page_size_ / logical_page_size_) : 0;
  return static_cast<size_t>(heads * (2 * page_size_ + summaries) * head_dim_) * dtype_size(dtype_);
}

void KvCache::init_pool(Pool& p, int64_t num_pages, Backend& backend) {
  size_t offset = 0;
  for (int64_t l = 0; l < num_layers_; ++l) {
    p.layer_offset.push_back(offset);
    offset += layer_bytes_per_page(p, l) * static_cast<size_t>(num_pages);
  }
  if (offset > 0) {
    try {
      p.storage = backend.allocate(offset);
    } catch (const Error& e) {  // name what did not fit, and how big it was
      fail("the KV cache's {} pool ({} pages of {} tokens, {:.1f} GiB) does not fit: {}",
           p.kind == HeadKind::Retrieval ? "retrieval" : "streaming", num_pages, page_size_,
           static_cast<double>(offset) / static_cast<double>(1ull << 30), e.what());
    }
  }
  p.allocator = BlockAllocator(static_cast<int32_t>(num_pages));
}

int64_t KvCache::heads_in_pool(HeadKind kind, int64_t layer) const { return pool(kind).heads[static_cast<size_t>(layer)]; }

const BlockAllocator& KvCache::allocator(HeadKind kind) const { return pool(kind).allocator; }

Tensor KvCache::view(int64_t layer, HeadKind kind, int part) const {
  LSERVE_CHECK(layer >= 0 && layer < num_layers_);
  const Pool& p = pool(kind);
  const int64_t n = p.allocator.num_pages(), heads = p.heads[static_cast<size_t>(layer)];
  const int64_t rows = part < 2 ? page_size_ : (logical_page_size_ > 0 ? page_size_ / logical_page_size_ : 0);
  LSERVE_CHECK(part < 2 || (kind == HeadKind::Retrieval && rows > 0), "no key summaries in this cache");
  // Within a layer's block: K, V, then (retrieval pools) key_min, key_max.
  const size_t kv_part = static_cast<size_t>(n * heads * page_size_ * head_dim_) * dtype_size(dtype_);
  const size_t sum_part = static_cast<size_t>(n * heads * rows * head_dim_) * dtype_size(dtype_);
  const size_t offset = p.layer_offset[static_cast<size_t>(layer)] +
                        (part < 2 ? static_cast<size_t>(part) * kv_part : 2 * kv_part + static_cast<size_t>(part - 2) * sum_part);
  char* base = p.storage ? static_cast<char*>(p.storage->data()) : nullptr;
  return Tensor{base ? base + offset : nullptr, dtype_, Shape{n, heads, rows, head_dim_}, device_};
}

void KvCache::reserve(SequenceKv& seq, int64_t num_tokens) {
  const int64_t first_new = seq.retrieval.num_tokens;
  if (num_tokens <= first_new) return;
  const auto target = static_cast<size_t>(pages_for(num_tokens));
  const int64_t ret_needed = retrieval_.bytes_per_page ? static_cast<int64_t>(target) - static_cast<int64_t>(seq.retrieval.pages.size()) : 0;
  const int64_t str_needed = streaming_.bytes_per_page ? static_cast<int64_t>(target) - static_cast<int64_t>(seq.streaming.pages.size()) : 0;
  if (ret_needed > retrieval_.allocator.num_free())
    throw KvCacheFull(fmt::format("KV cache is full: {} more retrieval pages needed, {} of {} free", ret_needed,
                                  retrieval_.allocator.num_free(), retrieval_.allocator.num_pages()));
  if (str_needed > streaming_.allocator.num_free())
    throw KvCacheFull(fmt::format("KV cache is full: {} more streaming pages needed, {} of {} free", str_needed,
                                  streaming_.allocator.num_free(), streaming_.allocator.num_pages()));
  for (int64_t i = 0; i < ret_needed; ++i) seq.retrieval.pages.push_back(*retrieval_.allocator.allocate());
  for (int64_t i = 0; i < str_needed; ++i) seq.streaming.pages.push_back(*streaming_.allocator.allocate());
  seq.live_streaming_pages += std::max<int64_t>(str_needed, 0);
  seq.retrieval.num_tokens = seq.streaming.num_tokens = num_tokens;
}

void KvCache::trim_streaming(SequenceKv& seq, int64_t next_query_pos, const StreamingWindow& window) {
  const int64_t oldest_local = next_query_pos - window.local + 1;
  for (size_t i = 0; i < seq.streaming.pages.size(); ++i) {
    const int64_t first = static_cast<int64_t>(i) * page_size_, last = first + page_size_ - 1;
    if (first >= oldest_local) break;
    if (first >= window.sink && last < oldest_local && seq.streaming.pages[i] != kNoPage) {
      streaming_.allocator.release(seq.streaming.pages[i]);
      seq.streaming.pages[i] = kNoPage;
      --seq.live_streaming_pages;
    }
  }
}

void KvCache::release(SequenceKv& seq) {
  // Last page first: cached pages then become evictable tail first, so eviction shortens a
  // cached prefix from its end instead of breaking it at its start.
  for (auto p = seq.retrieval.pages.rbegin(); p != seq.retrieval.pages.rend(); ++p) retrieval_.allocator.release(*p);
  for (auto p = seq.streaming.pages.rbegin(); p != seq.streaming.pages.rend(); ++p)
    if (*p != kNoPage) streaming_.allocator.release(*p);
  seq = SequenceKv{};
}

size_t KvCache::bytes_per_page(HeadKind kind) const { return pool(kind).bytes_per_page; }

std::pair<size_t, size_t> KvCache::pool_page_bytes(const ModelConfig& c, const HeadPattern& pattern, int32_t page_size,
                                                   int32_t logical_page_size, DType dtype) {
  const int64_t summaries = logical_page_size > 0 ? 2 * (page_size / logical_page_size) : 0;
  const int64_t streaming = pattern.num_streaming(), retrieval = c.num_layers * c.num_kv_heads - streaming;
  return {static_cast<size_t>(retrieval * (2 * page_size + summaries) * c.head_dim) * dtype_size(dtype),
          static_cast<size_t>(streaming * 2 * page_size * c.head_dim) * dtype_size(dtype)};
}

size_t KvCache::bytes_per_page(const ModelConfig& c, int32_t page_size, DType dtype, int32_t logical_page_size) {
  const int64_t summaries = logical_page_size > 0 ? 2 * (page_size / logical_page_size) : 0;
  return static_cast<size_t>(c.num_layers * c.num_kv_heads * (2 * page_size + summaries) * c.head_dim) * dtype_size(dtype);
}

size_t KvCache::sequence_bytes(const SequenceKv& seq) const {
  return retrieval_.bytes_per_page * seq.retrieval.pages.size() +
         streaming_.bytes_per_page * static_cast<size_t>(seq.live_streaming_pages);
}

size_t KvCache::total_bytes() const {
  return retrieval_.bytes_per_page * static_cast<size_t>(retrieval_.allocator.num_pages()) +
         streaming_.bytes_per_page * static_cast<size_t>(streaming_.allocator.num_pages());
}

std::string KvCache::summary() const {
  std::string s = fmt::format("KV cache: {:.1f} MiB {}, {}-token pages; retrieval pool {} pages ({} KiB each, {} used)",
                              total_bytes() / 1048576.0, dtype_name(dtype_), page_size_, retrieval_.allocator.num_pages(),
                              retrieval_.bytes_per_page / 1024, retrieval_.allocator.num_used());
  if (streaming_.allocator.num_pages() > 0)
    s += fmt::format("; streaming pool {} pages ({} KiB each, {} used) for {} of {} KV heads",
                     streaming_.allocator.num_pages(), streaming_.bytes_per_page / 1024, streaming_.allocator.num_used(),
                     pattern_.num_streaming(), num_layers_ * num_kv_heads_);
  return s;
}

}  // namespace lserve
