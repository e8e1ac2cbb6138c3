#include "backend/cpu/cpu_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lserve {

namespace {

constexpr int64_t kQueryTile = 32;       // query tokens per work item in prefill
constexpr int64_t kSplitTokens = 1024;   // keys per split of a decode tile
constexpr int32_t kMaxSplitTileLen = 4;  // tiles of at most this many queries are split
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One unit of work: rows = the group's query heads x the tile's tokens, over pages [p0, p1).
struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t q_begin, q_end;  // batch rows of the tile
  int32_t p0, p1;          // page range (indices into the sequence's page list)
  int32_t partial;         // index of this item's partial state, or -1 if it writes out directly
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

// Runs one work item into `st` (rows ordered head-major: row = g * tile_len + i).
void run_item(const CpuAttentionArgs& a, const AttentionBatch& batch, const WorkItem& w, PartialState& st,
              std::vector<float>& kt, std::vector<float>& scores, std::vector<float>& qbuf) {
  const int64_t D = a.head_dim, P = a.page_size, G = a.num_heads / a.num_kv_heads;
  const int64_t tile_len = w.q_end - w.q_begin;
  const int64_t rows = G * tile_len;
  const int32_t seq_len = batch.seq_lens[w.seq];
  const int32_t first_pos = seq_len - batch.query_len(w.seq) + (w.q_begin - batch.query_start[w.seq]);
  const int32_t* pages = batch.page_indices.data() + batch.page_indptr[w.seq];

  st.reset(rows, D);
  // Gather the tile's queries, pre-scaled, row-major [rows, D].
  qbuf.resize(static_cast<size_t>(rows * D));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t head = w.kv_head * G + g;
    for (int64_t i = 0; i < tile_len; ++i) {
      const float* src = a.q + ((w.q_begin + i) * a.num_heads + head) * D;
      float* dst = qbuf.data() + (g * tile_len + i) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * a.scale;
    }
  }
  kt.resize(static_cast<size_t>(D * P));
  scores.resize(static_cast<size_t>(rows * P));

  for (int32_t pi = w.p0; pi < w.p1; ++pi) {
    const int64_t page_first = static_cast<int64_t>(pi) * P;
    const int64_t valid = std::min<int64_t>(P, seq_len - page_first);  // keys present in this page
    const float* kp = a.k_pages + ((static_cast<int64_t>(pages[pi]) * a.num_kv_heads + w.kv_head) * P) * D;
    const float* vp = a.v_pages + ((static_cast<int64_t>(pages[pi]) * a.num_kv_heads + w.kv_head) * P) * D;
    // K^T of the page, so scores vectorize across keys.
    for (int64_t j = 0; j < valid; ++j)
      for (int64_t d = 0; d < D; ++d) kt[d * P + j] = kp[j * D + d];

    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r % tile_len;
      const int64_t qpos = first_pos + i;
      // Keys at positions > qpos are in the future: causal mask by shortening the row.
      const int64_t n = std::clamp<int64_t>(qpos - page_first + 1, 0, valid);
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
      float mx = st.m[r];
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
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
        const float* v = vp + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * v[d];
      }
    }
  }
}

void write_out(const CpuAttentionArgs& a, const WorkItem& w, const PartialState& st) {
  const int64_t D = a.head_dim, G = a.num_heads / a.num_kv_heads;
  const int64_t tile_len = w.q_end - w.q_begin;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t head = w.kv_head * G + g;
    for (int64_t i = 0; i < tile_len; ++i) {
      const int64_t r = g * tile_len + i;
      float* dst = a.out + ((w.q_begin + i) * a.num_heads + head) * D;
      const float inv = st.l[r] > 0 ? 1.0f / st.l[r] : 0.0f;
      for (int64_t d = 0; d < D; ++d) dst[d] = st.o[r * D + d] * inv;
    }
  }
}

// Merges the partial states of one tile's splits into the first.
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

}  // namespace

void cpu_paged_attention(const CpuAttentionArgs& a, const AttentionBatch& batch) {
  // Work list: tiles of each sequence's queries for each KV head. Tiles of a few queries
  // (decode) are split along their pages in fixed chunks, so a long context keeps every core
  // busy. The split depends only on the sequence itself, never on the rest of the batch or the
  // thread count: a request gets bit-identical attention whatever it is batched with.
  std::vector<WorkItem> items;
  std::vector<std::vector<int32_t>> groups;  // items that share one output tile
  for (int32_t b = 0; b < batch.num_seqs(); ++b) {
    const int32_t qlen = batch.query_len(b);
    for (int32_t kvh = 0; kvh < a.num_kv_heads; ++kvh) {
      for (int32_t t0 = 0; t0 < qlen; t0 += kQueryTile) {
        const int32_t t1 = std::min<int32_t>(qlen, t0 + kQueryTile);
        const int32_t q_begin = batch.query_start[b] + t0, q_end = batch.query_start[b] + t1;
        // Pages up to the one holding the tile's last query position.
        const int32_t last_pos = batch.seq_lens[b] - qlen + t1 - 1;
        const int32_t visible = last_pos / static_cast<int32_t>(a.page_size) + 1;
        const int32_t chunk = std::max<int32_t>(1, static_cast<int32_t>(kSplitTokens / a.page_size));
        const int32_t splits = t1 - t0 <= kMaxSplitTileLen ? (visible + chunk - 1) / chunk : 1;
        if (splits == 1) {
          items.push_back({b, kvh, q_begin, q_end, 0, visible, -1});
        } else {
          std::vector<int32_t> group;
          for (int32_t s = 0; s < splits; ++s) {
            const int32_t p0 = s * chunk, p1 = std::min(visible, (s + 1) * chunk);
            group.push_back(static_cast<int32_t>(items.size()));
            items.push_back({b, kvh, q_begin, q_end, p0, p1, static_cast<int32_t>(items.size())});
          }
          groups.push_back(std::move(group));
        }
      }
    }
  }
  std::vector<PartialState> partials(items.size());
#pragma omp parallel
  {
    std::vector<float> kt, scores, qbuf;
    PartialState local;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < items.size(); ++i) {
      const WorkItem& w = items[i];
      if (w.partial < 0) {
        run_item(a, batch, w, local, kt, scores, qbuf);
        write_out(a, w, local);
      } else {
        run_item(a, batch, w, partials[i], kt, scores, qbuf);
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
    const int32_t* pages = batch.page_indices.data() + batch.page_indptr[b];
    const int32_t seq_len = batch.seq_lens[b];
    for (int32_t t = batch.query_start[b]; t < batch.query_start[b + 1]; ++t) {
      const int32_t qpos = seq_len - batch.query_len(b) + (t - batch.query_start[b]);
      for (int64_t h = 0; h < a.num_heads; ++h) {
        const int64_t kvh = h / G;
        const float* q = a.q + (t * a.num_heads + h) * D;
        std::vector<double> s(static_cast<size_t>(qpos + 1));
        double mx = -1e300;
        for (int32_t pos = 0; pos <= qpos; ++pos) {
          const float* k = a.k_pages + ((pages[pos / P] * a.num_kv_heads + kvh) * P + pos % P) * D;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * k[d];
          s[static_cast<size_t>(pos)] = dot * a.scale;
          mx = std::max(mx, s[static_cast<size_t>(pos)]);
        }
        double sum = 0;
        for (auto& v : s) sum += (v = std::exp(v - mx));
        float* o = a.out + (t * a.num_heads + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int32_t pos = 0; pos <= qpos; ++pos) {
            const float* v = a.v_pages + ((pages[pos / P] * a.num_kv_heads + kvh) * P + pos % P) * D;
            acc += s[static_cast<size_t>(pos)] * v[d];
          }
          o[d] = static_cast<float>(acc / sum);
        }
      }
    }
  }
}

}  // namespace lserve
