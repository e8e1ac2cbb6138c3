#include "backend/cpu/cpu_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sparse/page_selector.h"
#include "sparse/sparsity_config.h"

namespace lserve {

namespace {

// Batch invariance: a query row's output must be bitwise the same whatever tile it lands in (a
// prefill chunk may start and end anywhere) and whatever else is in the batch. Every row
// therefore follows one order: its page list is cut into segments (below), each segment runs its
// own online softmax from scratch, and the segments merge left to right. Within a page a row's
// scores, max, exp-sum and output accumulate in key order, touching no other row; pages of the
// list that a row cannot see (past its position, outside its Lambda window) leave its state
// bitwise unchanged. A tile of few queries runs its segments as parallel work items merged
// afterwards (flash-decoding); a larger tile runs them one after another in one item; the
// arithmetic is the same.
//   segments: every kSplitTokens / page_size pages by page index (page p is in segment
//   p / that), so they do not depend on where the tile starts; a decode row's list of selected
//   pages, which only that row reads, is cut every kSplitTokens / page_size list entries.
constexpr int64_t kQueryTile = 32;       // query tokens per work item in prefill
constexpr int64_t kSplitTokens = 1024;   // keys per segment (see above)
constexpr int32_t kMaxSplitTileLen = 4;  // tiles of at most this many queries run segments in parallel
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kNoWindow = std::numeric_limits<int64_t>::max() / 4;

struct Window {
  int64_t sink = 0, local = kNoWindow;  // local = kNoWindow: plain causal attention
};

Window window_for(HeadKind kind, bool decoding, const AttentionBatch& batch) {
  if (kind != HeadKind::Streaming || !batch.sparsity) return {};
  const StreamingWindow& w = decoding ? batch.sparsity->decode_window : batch.sparsity->prefill_window;
  return {w.sink, w.local};
}

// One unit of work: query heads [head0, head0 + num_heads) of one KV head, query rows
// [q_begin, q_end), over pages list[0 .. count) of the sequence's table in pool `kind`.
struct WorkItem {
  int32_t seq;
  HeadKind kind;
  int32_t pool_head;
  int32_t head0, num_heads;
  int32_t q_begin, q_end;
  size_t list_offset, list_count;  // into the shared page-list vector
  Window window;
  bool selected;    // the list is a page selection: segments cut by list position
  int32_t partial;  // index of this item's partial state, or -1 if it writes out directly
};

// Softmax state of `rows` query rows: running max, running sum, unnormalized output.
struct PartialState {
  std::vector<float> m, l, o;
  void reset(int64_t rows, int64_t head_dim) {
    m.assign(static_cast<size_t>(rows), kNegInf);
    l.assign(static_cast<size_t>(rows), 0.0f);
    o.assign(static_cast<size_t>(rows * head_dim), 0.0f);
  }
};

int64_t segment_pages(int64_t page_size) { return std::max<int64_t>(1, kSplitTokens / page_size); }

// The segment of entry `li` of the page list that starts at `offset` (see the top).
int64_t segment_of(const std::vector<int32_t>& lists, size_t offset, size_t li, bool selected, int64_t pages) {
  return selected ? static_cast<int64_t>(li) / pages : lists[offset + li] / pages;
}

// Merges a segment's partial state into the accumulator (rows that saw nothing are skipped; into
// an accumulator that saw nothing, a merge is an exact copy).
void merge_into(PartialState& acc, const PartialState& part, int64_t head_dim) {
  for (size_t r = 0; r < acc.m.size(); ++r) {
    if (part.l[r] == 0.0f) continue;
    const float m = std::max(acc.m[r], part.m[r]);
    const float ca = std::exp(acc.m[r] - m), cp = std::exp(part.m[r] - m);
    acc.l[r] = acc.l[r] * ca + part.l[r] * cp;
    acc.m[r] = m;
    for (int64_t d = 0; d < head_dim; ++d) {
      const size_t i = r * static_cast<size_t>(head_dim) + static_cast<size_t>(d);
      acc.o[i] = acc.o[i] * ca + part.o[i] * cp;
    }
  }
}

const int32_t* page_table(const AttentionBatch& batch, HeadKind kind, int32_t b) {
  return kind == HeadKind::Retrieval ? batch.page_indices.data() + batch.page_indptr[b]
                                     : batch.streaming_page_indices.data() + batch.streaming_page_indptr[b];
}

// Scratch of one thread.
struct ItemScratch {
  PartialState segment;  // the segment being walked
  std::vector<float> kt, scores, qbuf;
};

// Runs one work item into `out` (rows ordered head-major: row = g * tile_len + i): each segment
// of its pages into scratch.segment, merged into `out` in order.
void run_item(const CpuAttentionArgs& a, const AttentionBatch& batch, const WorkItem& w,
              const std::vector<int32_t>& lists, PartialState& out, ItemScratch& scratch) {
  const int64_t D = a.head_dim, P = a.page_size;
  const int64_t tile_len = w.q_end - w.q_begin;
  const int64_t rows = w.num_heads * tile_len;
  const int32_t seq_len = batch.seq_lens[w.seq];
  const int64_t first_pos = seq_len - batch.query_len(w.seq) + (w.q_begin - batch.query_start[w.seq]);
  const int32_t* table = page_table(batch, w.kind, w.seq);
  const int k = static_cast<int>(w.kind);
  const int64_t pool_heads = a.pool_heads[k];

  PartialState& st = scratch.segment;
  std::vector<float>& kt = scratch.kt;
  std::vector<float>& scores = scratch.scores;
  std::vector<float>& qbuf = scratch.qbuf;
  out.reset(rows, D);
  st.reset(rows, D);
  qbuf.resize(static_cast<size_t>(rows * D));  // the tile's queries, pre-scaled, [rows, D]
  for (int64_t g = 0; g < w.num_heads; ++g)
    for (int64_t i = 0; i < tile_len; ++i) {
      const float* src = a.q + ((w.q_begin + i) * a.num_heads + w.head0 + g) * D;
      float* dst = qbuf.data() + (g * tile_len + i) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * a.scale;
    }
  kt.resize(static_cast<size_t>(D * P));
  scores.resize(static_cast<size_t>(rows * P));

  const int64_t seg_pages = segment_pages(P);
  int64_t segment = -1;
  bool merged_any = false;
  auto finish_segment = [&] {
    if (!merged_any) {
      std::swap(out, st);  // merging into the empty `out` would copy it exactly
      merged_any = true;
      st.reset(rows, D);
    } else {
      merge_into(out, st, D);
      st.reset(rows, D);
    }
  };
  for (size_t li = 0; li < w.list_count; ++li) {
    const int64_t seg = segment_of(lists, w.list_offset, li, w.selected, seg_pages);
    if (seg != segment) {
      if (segment >= 0) finish_segment();
      segment = seg;
    }
    const int64_t pi = lists[w.list_offset + li];
    const int64_t page_first = pi * P;
    const int64_t valid = std::min<int64_t>(P, seq_len - page_first);  // keys present in this page
    const int64_t page = table[pi];
    const float* kp = a.k[k] + ((page * pool_heads + w.pool_head) * P) * D;
    const float* vp = a.v[k] + ((page * pool_heads + w.pool_head) * P) * D;
    for (int64_t j = 0; j < valid; ++j)  // K^T of the page, so scores vectorize across keys
      for (int64_t d = 0; d < D; ++d) kt[d * P + j] = kp[j * D + d];

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t qpos = first_pos + r % tile_len;
      const int64_t n = std::clamp<int64_t>(qpos - page_first + 1, 0, valid);  // causal end
      if (n <= 0) continue;
      float* s = scores.data() + r * P;
      const float* q = qbuf.data() + r * D;
      std::fill(s, s + n, 0.0f);
      for (int64_t d = 0; d < D; ++d) {
        const float qd = q[d];
        const float* kd = kt.data() + d * P;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) s[j] += qd * kd[j];
      }
      // Lambda mask: keys past the sink and before the local band are invisible.
      const int64_t band_lo = qpos - w.window.local + 1;
      if (page_first + n > w.window.sink && page_first < band_lo) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t pos = page_first + j;
          if (pos >= w.window.sink && pos < band_lo) s[j] = kNegInf;
        }
      }
      float mx = st.m[r];
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
      if (mx == kNegInf) continue;  // nothing visible to this row in this page
      const float correction = std::exp(st.m[r] - mx);  // exp(-inf) = 0 on the first page
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      st.l[r] = st.l[r] * correction + sum;
      st.m[r] = mx;
      float* o = st.o.data() + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] *= correction;
      for (int64_t j = 0; j < n; ++j) {
        const float p = s[j];
        if (p == 0.0f) continue;
        const float* vv = vp + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * vv[d];
      }
    }
  }
  if (segment >= 0) finish_segment();
}

void write_out(const CpuAttentionArgs& a, const WorkItem& w, const PartialState& st) {
  const int64_t D = a.head_dim, tile_len = w.q_end - w.q_begin;
  for (int64_t g = 0; g < w.num_heads; ++g)
    for (int64_t i = 0; i < tile_len; ++i) {
      const int64_t r = g * tile_len + i;
      float* dst = a.out + ((w.q_begin + i) * a.num_heads + w.head0 + g) * D;
      const float inv = st.l[r] > 0 ? 1.0f / st.l[r] : 0.0f;
      for (int64_t d = 0; d < D; ++d) dst[d] = st.o[static_cast<size_t>(r * D + d)] * inv;
    }
}

// ---- page selection (retrieval heads of decoding sequences) ----

// Granularity is the batch's (the cache's), whatever policy a sequence runs.
int64_t selection_units(const CpuAttentionArgs& a, const AttentionBatch& batch) {
  return batch.sparsity->granularity == SelectionGranularity::KvHead ? a.num_kv_heads : a.num_heads;
}

// Whether sequence b's retrieval heads select pages this step (its own policy, if it has one).
bool uses_selection(const AttentionBatch& batch, int32_t b) {
  const SparsityConfig* s = batch.sparsity_of(b);
  return s && s->selects_pages() && batch.decoding[static_cast<size_t>(b)] &&
         batch.sequences[static_cast<size_t>(b)] != nullptr;
}

bool any_selection(const AttentionBatch& batch) {
  for (int32_t b = 0; b < batch.num_seqs(); ++b)
    if (!batch.decoding.empty() && uses_selection(batch, b)) return true;
  return false;
}

void run_selection(const CpuAttentionArgs& a, const AttentionBatch& batch) {
  struct Job {
    int32_t seq, unit, kv_head, head0, num_heads;
  };
  std::vector<Job> jobs;
  for (int32_t b = 0; b < batch.num_seqs(); ++b) {
    if (!uses_selection(batch, b)) continue;
    SequenceKv& seq = *batch.sequences[static_cast<size_t>(b)];
    const SparsityConfig& s = *batch.sparsity_of(b);
    const int64_t units = selection_units(a, batch);
    if (seq.selections.size() < static_cast<size_t>((a.layer + 1) * units))
      seq.selections.resize(static_cast<size_t>((a.layer + 1) * units));
    if (!context_needs_selection(s, batch.seq_lens[b])) continue;
    const int64_t G = a.num_heads / a.num_kv_heads;
    for (int64_t u = 0; u < units; ++u) {
      const int64_t kvh = s.granularity == SelectionGranularity::KvHead ? u : u / G;
      if (a.slots[kvh].kind != HeadKind::Retrieval) continue;
      const PageSelection& sel = seq.selections[static_cast<size_t>(a.layer * units + u)];
      if (sel.decode_step >= 0 && seq.decode_steps - sel.decode_step < s.selector_interval) continue;  // reuse
      const bool per_kv = s.granularity == SelectionGranularity::KvHead;
      jobs.push_back({b, static_cast<int32_t>(u), static_cast<int32_t>(kvh), static_cast<int32_t>(per_kv ? kvh * G : u),
                      static_cast<int32_t>(per_kv ? G : 1)});
    }
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    const SparsityConfig& s = *batch.sparsity_of(j.seq);
    SequenceKv& seq = *batch.sequences[static_cast<size_t>(j.seq)];
    const int32_t seq_len = batch.seq_lens[j.seq];
    const int64_t num_pages = (seq_len + a.page_size - 1) / a.page_size;
    const int32_t row = batch.query_start[j.seq];  // the sequence's one decode query
    SelectorInputs in{a.q + (row * a.num_heads + j.head0) * a.head_dim,
                      j.num_heads,
                      a.head_dim,
                      a.key_min,
                      a.key_max,
                      a.pool_heads[0],
                      a.slots[j.kv_head].index,
                      std::span<const int32_t>(page_table(batch, HeadKind::Retrieval, j.seq), static_cast<size_t>(num_pages)),
                      seq_len,
                      a.page_size,
                      a.logical_page_size,
                      a.scale};
    const auto mass = page_mass(score_pages(in), a.scale);
    const BudgetRule rule = budget_rule(s);  // s.page_size is the cache's (a.page_size)
    const int64_t units = selection_units(a, batch);
    PageSelection& sel = seq.selections[static_cast<size_t>(a.layer * units + j.unit)];
    sel.pages = pick_pages(mass, rule);
    sel.decode_step = seq.decode_steps;
    sel.num_pages_then = num_pages;
  }
}

// ---- work list ----

// Pages of the sequence a query tile [first_pos, last_pos] must visit, given the head's kind.
void append_page_list(const CpuAttentionArgs& a, HeadKind kind, const Window& win, const PageSelection* sel, int64_t first_pos, int64_t last_pos,
                      std::vector<int32_t>& out) {
  const int64_t P = a.page_size;
  const int64_t last_page = last_pos / P;
  if (sel && sel->decode_step >= 0) {
    for (int32_t p : sel->pages)
      if (p <= last_page) out.push_back(p);
    for (int64_t p = std::max<int64_t>(sel->num_pages_then, 0); p <= last_page; ++p)
      if (sel->pages.empty() || p > sel->pages.back()) out.push_back(static_cast<int32_t>(p));
    return;
  }
  if (kind == HeadKind::Streaming) {
    const int64_t sink_pages = (win.sink + P - 1) / P;
    const int64_t band_first = std::max<int64_t>(0, first_pos - win.local + 1) / P;
    for (int64_t p = 0; p <= last_page; ++p)
      if (p < sink_pages || p >= band_first) out.push_back(static_cast<int32_t>(p));
    return;
  }
  for (int64_t p = 0; p <= last_page; ++p) out.push_back(static_cast<int32_t>(p));
}

// Keys visible to one query at `qpos` among the listed pages (for the statistics).
int64_t visible_keys(const std::vector<int32_t>& lists, size_t offset, size_t count, int64_t qpos, const Window& w,
                     int64_t P) {
  int64_t n = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t first = lists[offset + i] * P, last = std::min(first + P - 1, qpos);
    if (last < first) continue;
    const int64_t band_lo = qpos - w.local + 1;
    for (int64_t pos = first; pos <= last; ++pos) n += pos < w.sink || pos >= band_lo;
  }
  return n;
}

}  // namespace

CpuAttentionArgs dense_attention_args(const float* q, const float* k, const float* v, float* out, int64_t num_heads,
                                      int64_t num_kv_heads, int64_t head_dim, int64_t page_size, float scale,
                                      std::vector<HeadSlot>& slots) {
  slots.clear();
  for (int64_t h = 0; h < num_kv_heads; ++h) slots.push_back({HeadKind::Retrieval, static_cast<int32_t>(h)});
  CpuAttentionArgs a{};
  a.q = q;
  a.out = out;
  a.num_heads = num_heads;
  a.num_kv_heads = num_kv_heads;
  a.head_dim = head_dim;
  a.page_size = page_size;
  a.scale = scale;
  a.k[0] = k;
  a.v[0] = v;
  a.pool_heads[0] = num_kv_heads;
  a.slots = slots.data();
  return a;
}

bool key_visible(HeadKind kind, int64_t query, int64_t key, bool decoding, const AttentionBatch& batch) {
  if (key > query || key < 0) return false;
  const Window w = window_for(kind, decoding, batch);
  return key < w.sink || key >= query - w.local + 1;
}

void cpu_paged_attention(const CpuAttentionArgs& a, const AttentionBatch& batch) {
  if (any_selection(batch)) run_selection(a, batch);

  const int64_t G = a.num_heads / a.num_kv_heads;
  std::vector<WorkItem> items;
  std::vector<std::vector<int32_t>> groups;  // items that share one output tile
  std::vector<int32_t> lists;
  for (int32_t b = 0; b < batch.num_seqs(); ++b) {
    const int32_t qlen = batch.query_len(b);
    const bool decoding = !batch.decoding.empty() && batch.decoding[static_cast<size_t>(b)];
    SequenceKv* seq = batch.sequences.empty() ? nullptr : batch.sequences[static_cast<size_t>(b)];
    const bool selecting = uses_selection(batch, b) && context_needs_selection(*batch.sparsity_of(b), batch.seq_lens[b]);
    const bool per_query_head = selecting && batch.sparsity->granularity == SelectionGranularity::QueryHead;
    for (int32_t kvh = 0; kvh < a.num_kv_heads; ++kvh) {
      const HeadSlot slot = a.slots[kvh];
      const Window win = window_for(slot.kind, decoding, batch);
      // Retrieval heads under selection with one selection per query head get one item each.
      const bool split_heads = per_query_head && slot.kind == HeadKind::Retrieval;
      for (int32_t hs = 0; hs < (split_heads ? G : 1); ++hs) {
        const int32_t head0 = static_cast<int32_t>(kvh * G + hs), nheads = split_heads ? 1 : static_cast<int32_t>(G);
        const PageSelection* sel = nullptr;
        if (selecting && slot.kind == HeadKind::Retrieval) {
          const int64_t unit = split_heads ? head0 : kvh;
          sel = &seq->selections[static_cast<size_t>(a.layer * selection_units(a, batch) + unit)];
        }
        for (int32_t t0 = 0; t0 < qlen; t0 += kQueryTile) {
          const int32_t t1 = std::min<int32_t>(qlen, t0 + static_cast<int32_t>(kQueryTile));
          const int32_t q_begin = batch.query_start[b] + t0, q_end = batch.query_start[b] + t1;
          const int64_t first_pos = batch.seq_lens[b] - qlen + t0, last_pos = batch.seq_lens[b] - qlen + t1 - 1;
          const size_t offset = lists.size();
          append_page_list(a, slot.kind, win, sel, first_pos, last_pos, lists);
          const size_t count = lists.size() - offset;
          if (seq && qlen == 1) {
            seq->kv_tokens_read += nheads * visible_keys(lists, offset, count, last_pos, win, a.page_size);
            seq->kv_head_reads += nheads;
          }
          const bool selected = sel && sel->decode_step >= 0;
          const WorkItem base{b, slot.kind, slot.index, head0, nheads, q_begin, q_end, offset, count, win, selected, -1};
          // Few queries: one item per segment, merged in order afterwards.
          std::vector<size_t> starts;  // list positions where a segment starts
          for (size_t li = 0; t1 - t0 <= kMaxSplitTileLen && li < count; ++li)
            if (li == 0 || segment_of(lists, offset, li, selected, segment_pages(a.page_size)) !=
                               segment_of(lists, offset, li - 1, selected, segment_pages(a.page_size)))
              starts.push_back(li);
          if (starts.size() <= 1) {
            items.push_back(base);
            continue;
          }
          std::vector<int32_t> group;
          for (size_t s = 0; s < starts.size(); ++s) {
            WorkItem w = base;
            w.list_offset = offset + starts[s];
            w.list_count = (s + 1 < starts.size() ? starts[s + 1] : count) - starts[s];
            w.partial = static_cast<int32_t>(items.size());
            group.push_back(w.partial);
            items.push_back(w);
          }
          groups.push_back(std::move(group));
        }
      }
    }
  }

  std::vector<PartialState> partials(items.size());
#pragma omp parallel
  {
    ItemScratch scratch;
    PartialState local;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < items.size(); ++i) {
      const WorkItem& w = items[i];
      if (w.partial < 0) {
        run_item(a, batch, w, lists, local, scratch);
        write_out(a, w, local);
      } else {
        run_item(a, batch, w, lists, partials[i], scratch);
      }
    }
#pragma omp for schedule(static)
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const auto& g = groups[gi];
      PartialState& acc = partials[static_cast<size_t>(g[0])];
      for (size_t s = 1; s < g.size(); ++s) merge_into(acc, partials[static_cast<size_t>(g[s])], a.head_dim);
      write_out(a, items[static_cast<size_t>(g[0])], acc);
    }
  }
}

void reference_paged_attention(const CpuAttentionArgs& a, const AttentionBatch& batch) {
  const int64_t D = a.head_dim, P = a.page_size, G = a.num_heads / a.num_kv_heads;
  for (int32_t b = 0; b < batch.num_seqs(); ++b) {
    const bool decoding = !batch.decoding.empty() && batch.decoding[static_cast<size_t>(b)];
    const SequenceKv* seq = batch.sequences.empty() ? nullptr : batch.sequences[static_cast<size_t>(b)];
    const int32_t seq_len = batch.seq_lens[b];
    for (int32_t t = batch.query_start[b]; t < batch.query_start[b + 1]; ++t) {
      const int64_t qpos = seq_len - batch.query_len(b) + (t - batch.query_start[b]);
      for (int64_t h = 0; h < a.num_heads; ++h) {
        const int64_t kvh = h / G;
        const HeadSlot slot = a.slots[kvh];
        const int k = static_cast<int>(slot.kind);
        const int32_t* table = page_table(batch, slot.kind, b);
        // The explicit mask: causal + Lambda window, then (selection) only the selected pages.
        std::vector<char> visible(static_cast<size_t>(qpos + 1));
        for (int64_t pos = 0; pos <= qpos; ++pos) visible[static_cast<size_t>(pos)] = key_visible(slot.kind, qpos, pos, decoding, batch);
        if (seq && slot.kind == HeadKind::Retrieval && batch.sparsity_of(b) && batch.sparsity_of(b)->selects_pages() && decoding &&
            !seq->selections.empty()) {
          const int64_t units = selection_units(a, batch);
          const int64_t unit = batch.sparsity->granularity == SelectionGranularity::KvHead ? kvh : h;
          const size_t idx = static_cast<size_t>(a.layer * units + unit);
          if (idx < seq->selections.size() && seq->selections[idx].decode_step >= 0) {
            const PageSelection& sel = seq->selections[idx];
            for (int64_t pos = 0; pos <= qpos; ++pos) {
              const int64_t page = pos / P;
              const bool chosen = std::binary_search(sel.pages.begin(), sel.pages.end(), static_cast<int32_t>(page)) ||
                                  page >= sel.num_pages_then;
              if (!chosen) visible[static_cast<size_t>(pos)] = 0;
            }
          }
        }
        const float* q = a.q + (t * a.num_heads + h) * D;
        std::vector<double> s(static_cast<size_t>(qpos + 1), 0.0);
        double mx = -1e300;
        for (int64_t pos = 0; pos <= qpos; ++pos) {
          if (!visible[static_cast<size_t>(pos)]) continue;
          const float* key = a.k[k] + ((table[pos / P] * a.pool_heads[k] + slot.index) * P + pos % P) * D;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * key[d];
          s[static_cast<size_t>(pos)] = dot * a.scale;
          mx = std::max(mx, s[static_cast<size_t>(pos)]);
        }
        double sum = 0;
        for (int64_t pos = 0; pos <= qpos; ++pos)
          if (visible[static_cast<size_t>(pos)]) sum += (s[static_cast<size_t>(pos)] = std::exp(s[static_cast<size_t>(pos)] - mx));
        float* o = a.out + (t * a.num_heads + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t pos = 0; pos <= qpos; ++pos) {
            if (!visible[static_cast<size_t>(pos)]) continue;
            const float* v = a.v[k] + ((table[pos / P] * a.pool_heads[k] + slot.index) * P + pos % P) * D;
            acc += s[static_cast<size_t>(pos)] * v[d];
          }
          o[d] = static_cast<float>(acc / sum);
        }
      }
    }
  }
}

}  // namespace lserve
