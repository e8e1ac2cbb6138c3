#include "kv/prefix_cache.h"

#include <xxhash.h>

#include <algorithm>

namespace lserve {

PrefixCache::PrefixCache(KvCache& cache, uint64_t salt)
    : cache_(cache),
      salt_(salt),
      has_retrieval_(cache.has_pool(HeadKind::Retrieval)),
      has_streaming_(cache.has_pool(HeadKind::Streaming)) {
  auto& ret = cache_.allocator(HeadKind::Retrieval);
  auto& str = cache_.allocator(HeadKind::Streaming);
  retrieval_hash_.resize(static_cast<size_t>(ret.num_pages()));
  retrieval_indexed_.resize(static_cast<size_t>(ret.num_pages()));
  streaming_hash_.resize(static_cast<size_t>(str.num_pages()));
  streaming_indexed_.resize(static_cast<size_t>(str.num_pages()));
  ret.set_evict_callback([this](PageId p) { forget_retrieval(p); });
  str.set_evict_callback([this](PageId p) { forget_streaming(p); });
}

PrefixCache::~PrefixCache() {
  cache_.allocator(HeadKind::Retrieval).set_evict_callback({});
  cache_.allocator(HeadKind::Streaming).set_evict_callback({});
}

std::vector<uint64_t> PrefixCache::page_hashes(std::span<const int32_t> tokens) const {
  const auto P = static_cast<size_t>(cache_.page_size());
  std::vector<uint64_t> hashes;
  uint64_t h = salt_;
  for (size_t begin = 0; begin + P <= tokens.size(); begin += P) {
    h = XXH3_64bits_withSeed(tokens.data() + begin, P * sizeof(int32_t), h);
    hashes.push_back(h);
  }
  return hashes;
}

bool PrefixCache::streaming_page_needed(int64_t page, int64_t prefix_pages, const StreamingWindow& keep) const {
  // The complement of KvCache::trim_streaming's rule at next_query_pos = prefix_pages * P.
  const int64_t P = cache_.page_size();
  const int64_t first = page * P, last = first + P - 1;
  const int64_t oldest_local = prefix_pages * P - keep.local + 1;
  return first < keep.sink || last >= oldest_local;
}

int64_t PrefixCache::attach(SequenceKv& kv, std::span<const uint64_t> hashes, int64_t prompt_len,
                            const StreamingWindow& keep) {
  LSERVE_CHECK(kv.retrieval.pages.empty() && kv.streaming.pages.empty(), "attach to a sequence that holds pages");
  const int64_t P = cache_.page_size();
  // Longest run of indexed pages, leaving at least one prompt token to compute.
  int64_t k = 0;
  const int64_t limit = std::min<int64_t>(static_cast<int64_t>(hashes.size()), (prompt_len - 1) / P);
  std::vector<const Entry*> entries;
  while (k < limit) {
    auto it = index_.find(hashes[static_cast<size_t>(k)]);
    if (it == index_.end()) break;
    entries.push_back(&it->second);
    ++k;
  }
  // Shorten until every streaming page the prefill can still see is cached.
  if (has_streaming_) {
    auto usable = [&](int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        if (streaming_page_needed(i, n, keep) && entries[static_cast<size_t>(i)]->streaming == kNoPage) return false;
      return true;
    };
    while (k > 0 && !usable(k)) --k;
  }
  auto& ret = cache_.allocator(HeadKind::Retrieval);
  auto& str = cache_.allocator(HeadKind::Streaming);
  for (int64_t i = 0; i < k; ++i) {
    const Entry& e = *entries[static_cast<size_t>(i)];
    if (has_retrieval_) {
      ret.retain(e.retrieval);
      kv.retrieval.pages.push_back(e.retrieval);
    }
    if (has_streaming_) {
      if (streaming_page_needed(i, k, keep)) {
        str.retain(e.streaming);
        kv.streaming.pages.push_back(e.streaming);
        ++kv.live_streaming_pages;
      } else {
        kv.streaming.pages.push_back(kNoPage);
      }
    }
  }
  kv.retrieval.num_tokens = kv.streaming.num_tokens = k * P;
  return k * P;
}

void PrefixCache::insert(const SequenceKv& kv, std::span<const uint64_t> hashes, int64_t num_pages) {
  LSERVE_CHECK(num_pages <= static_cast<int64_t>(hashes.size()) && num_pages * cache_.page_size() <= kv.num_tokens(),
               "indexing {} pages of a sequence of {} tokens", num_pages, kv.num_tokens());
  auto& ret = cache_.allocator(HeadKind::Retrieval);
  auto& str = cache_.allocator(HeadKind::Streaming);
  for (int64_t i = 0; i < num_pages; ++i) {
    const uint64_t h = hashes[static_cast<size_t>(i)];
    const PageId rp = has_retrieval_ ? kv.retrieval.pages[static_cast<size_t>(i)] : kNoPage;
    const PageId sp = has_streaming_ ? kv.streaming.pages[static_cast<size_t>(i)] : kNoPage;
    auto [it, fresh] = index_.try_emplace(h);
    Entry& e = it->second;
    if (fresh) {
      if (has_retrieval_) {
        e.retrieval = rp;
        ret.set_cached(rp, true);
        retrieval_hash_[static_cast<size_t>(rp)] = h;
        retrieval_indexed_[static_cast<size_t>(rp)] = 1;
      }
    } else if (has_retrieval_ && e.retrieval != rp) {
      continue;  // another copy of this prefix page is indexed; ours stays private
    }
    // The streaming copy may have been evicted since; a live one of ours can fill the gap.
    if (has_streaming_ && e.streaming == kNoPage && sp != kNoPage && !streaming_indexed_[static_cast<size_t>(sp)]) {
      e.streaming = sp;
      str.set_cached(sp, true);
      streaming_hash_[static_cast<size_t>(sp)] = h;
      streaming_indexed_[static_cast<size_t>(sp)] = 1;
    }
    if (!has_retrieval_ && e.streaming == kNoPage) index_.erase(it);  // all-streaming model, nothing to keep
  }
}

void PrefixCache::forget_retrieval(PageId page) {
  auto& flag = retrieval_indexed_[static_cast<size_t>(page)];
  if (!flag) return;
  flag = 0;
  auto it = index_.find(retrieval_hash_[static_cast<size_t>(page)]);
  if (it == index_.end()) return;
  // Without its retrieval page the entry is useless; its streaming page becomes plain free.
  const PageId sp = it->second.streaming;
  index_.erase(it);
  if (sp != kNoPage) {
    streaming_indexed_[static_cast<size_t>(sp)] = 0;
    cache_.allocator(HeadKind::Streaming).set_cached(sp, false);
  }
}

void PrefixCache::forget_streaming(PageId page) {
  auto& flag = streaming_indexed_[static_cast<size_t>(page)];
  if (!flag) return;
  flag = 0;
  auto it = index_.find(streaming_hash_[static_cast<size_t>(page)]);
  if (it == index_.end()) return;
  it->second.streaming = kNoPage;
  if (!has_retrieval_) index_.erase(it);
}

}  // namespace lserve
