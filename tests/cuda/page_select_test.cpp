// The GPU page selector (backend/cuda/page_select.h) against the host's (sparse/page_selector.h)
// on long contexts: up to 16000 pages (every kernel striding over its chunks), pages whose
// summaries are identical (exact ties, broken by the lower index), PSA stopping on its mass and
// on its bound, a budget of more candidates than the pick sorts in shared memory, budgets and
// contexts past the sorted-lists merge (the radix select instead), a budget of two pages,
// groups of 1 to 16 heads, a partial last page whose unused rows would win if read, one-token
// logical pages, a job that keeps every page, and an inactive job. The lists and counts must be
// the host's exactly, nothing may be written past a list, and the counters must end at zero.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "backend/cuda/page_select.h"
#include "cuda_test_util.h"
#include "sparse/page_selector.h"

namespace lserve {
namespace {

template <class T>
T* device_copy(const std::vector<T>& v) {
  void* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, std::max<size_t>(v.size(), 1) * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(d);
}

std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

struct JobCase {
  const char* name;
  int32_t heads, head0, pool_index, num_pages, tail_tokens;  // tail_tokens: tokens in the last page
  BudgetRule rule;  // mass_threshold < 0: halfway between keeping the top 100 other pages and 101
  bool duplicate_pages;  // the page table repeats physical pages: exact ties
  bool active = true;
  int32_t q_row = 0;
};

// One launch of the selector over `cases` (jobs of one batch) on a random pool of key summaries
// with page_size P and logical pages LP; every list and count must be the host selector's.
// Each case reads its own pages of the pool (in random order), so one case's unused rows are
// no other case's data.
void expect_host_picks(int32_t P, int32_t LP, const std::vector<JobCase>& cases, std::mt19937& rng) {
  constexpr int32_t kHeads = 16, kRows = 2, D = 128, pool_heads = 3;
  const int32_t per_page = P / LP;
  int32_t pool_pages = 0;
  for (const JobCase& c : cases) pool_pages += c.duplicate_pages ? std::min(c.num_pages, 97) : c.num_pages;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Key summaries of a pool: per (page, head, logical row) a min and a max per channel.
  const size_t rows = static_cast<size_t>(pool_pages) * pool_heads * per_page;
  std::vector<float> kmin(rows * D), kmax(rows * D);
  {
    const auto a = test::random_bf16(kmin.size(), rng, 2.0f), b = test::random_bf16(kmin.size(), rng, 2.0f);
    for (size_t i = 0; i < kmin.size(); ++i) kmin[i] = std::min(a[i], b[i]), kmax[i] = std::max(a[i], b[i]);
  }
  const std::vector<float> q = test::random_bf16(static_cast<size_t>(kRows) * kHeads * D, rng, 1.5f);

  // Page tables first; the logical rows past each sequence's last token (which no selector may
  // read) get summaries that would win every score if read.
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> ids(static_cast<size_t>(pool_pages));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  for (const JobCase& c : cases) {
    const size_t own = static_cast<size_t>(c.duplicate_pages ? std::min(c.num_pages, 97) : c.num_pages);
    std::vector<int32_t> pages(static_cast<size_t>(c.num_pages));
    for (int32_t i = 0; i < c.num_pages; ++i) pages[static_cast<size_t>(i)] = ids[next + static_cast<size_t>(i) % own];
    next += own;
    if (!c.duplicate_pages)  // (a repeated page is read whole where it is not the last one)
      for (int32_t lp = (c.tail_tokens + LP - 1) / LP; lp < per_page; ++lp) {
        const size_t row = (static_cast<size_t>(pages.back()) * pool_heads + static_cast<size_t>(c.pool_index)) * per_page + lp;
        for (int32_t ch = 0; ch < D; ++ch) kmin[row * D + ch] = -64.0f, kmax[row * D + ch] = 64.0f;
      }
    tables.push_back(std::move(pages));
  }

  std::vector<int32_t> page_table;
  std::vector<cuda::SelectJob> jobs;
  std::vector<std::vector<int32_t>> want;
  int32_t out_at = 0;
  size_t scratch_at = 0;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const JobCase& c = cases[ci];
    const std::vector<int32_t>& pages = tables[ci];
    const int32_t tokens = (c.num_pages - 1) * P + c.tail_tokens;
    SelectorInputs in{q.data() + (static_cast<size_t>(c.q_row) * kHeads + static_cast<size_t>(c.head0)) * D,
                      c.heads, D, kmin.data(), kmax.data(), pool_heads, c.pool_index, pages, tokens, P, LP, scale};
    const std::vector<double> mass = page_mass(score_pages(in), scale);
    BudgetRule rule = c.rule;
    if (rule.mass_threshold < 0) {  // far from both sums: the GPU's totals round differently
      std::vector<double> order(mass.begin() + 1, mass.end() - 1);
      std::stable_sort(order.begin(), order.end(), std::greater<>());
      rule.mass_threshold = mass.front() + mass.back() + order[100] / 2;
      for (int t = 0; t < 100; ++t) rule.mass_threshold += order[static_cast<size_t>(t)];
    }
    want.push_back(pick_pages(mass, rule));
    cuda::SelectJob j{};
    j.q_row = c.q_row;
    j.head0 = c.head0;
    j.num_heads = c.heads;
    j.pool_index = c.pool_index;
    j.pages_begin = static_cast<int32_t>(page_table.size());
    j.num_pages = c.num_pages;
    j.num_tokens = tokens;
    j.max_pages = static_cast<int32_t>(rule.max_pages);
    j.min_pages = static_cast<int32_t>(rule.min_pages);
    j.mass_threshold = rule.mass_threshold;
    j.out = out_at;
    j.count_index = static_cast<int32_t>(jobs.size());
    j.scratch = static_cast<int32_t>(scratch_at / 16);
    j.active = c.active ? 1 : 0;
    jobs.push_back(j);
    page_table.insert(page_table.end(), pages.begin(), pages.end());
    out_at += c.num_pages;
    scratch_at += cuda::select_scratch_bytes(c.heads, c.num_pages, per_page, j.max_pages);
  }

  const auto qb = to_bf16(q), kminb = to_bf16(kmin), kmaxb = to_bf16(kmax);
  auto* dq = device_copy(qb);
  auto* dkmin = device_copy(kminb);
  auto* dkmax = device_copy(kmaxb);
  auto* dtable = device_copy(page_table);
  auto* djobs = device_copy(jobs);
  auto* dout = device_copy(std::vector<int32_t>(static_cast<size_t>(out_at), -7));
  auto* dcounts = device_copy(std::vector<int32_t>(jobs.size(), -7));
  auto* dscratch = device_copy(std::vector<unsigned char>(scratch_at, 0xff));  // NaN-filled: unread
  auto* darrivals = device_copy(std::vector<uint32_t>(jobs.size(), 0));

  cuda::SelectParams p{};
  p.q = dq;
  p.num_heads = kHeads;
  p.head_dim = D;
  int32_t longest = 0;
  for (const cuda::SelectJob& j : jobs) p.max_job_heads = std::max(p.max_job_heads, j.num_heads);
  for (const cuda::SelectJob& j : jobs) longest = std::max(longest, j.num_pages);
  // The grid of a recording made at a quarter of the longest context: its blocks stride.
  p.grid_pages = cuda::select_grid_pages(longest / 4);
  p.key_min = dkmin;
  p.key_max = dkmax;
  p.pool_heads = pool_heads;
  p.page_size = P;
  p.logical_page_size = LP;
  p.scale = scale;
  p.page_indices = dtable;
  p.out_pages = dout;
  p.out_counts = dcounts;
  p.scratch = dscratch;
  p.arrivals = darrivals;
  cuda::select_pages(p, djobs, static_cast<int32_t>(jobs.size()), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint32_t> arrivals(jobs.size(), 7);
  ASSERT_EQ(cudaMemcpy(arrivals.data(), darrivals, arrivals.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(arrivals, std::vector<uint32_t>(jobs.size(), 0)) << "the selector must leave its counters zero";

  std::vector<int32_t> out(static_cast<size_t>(out_at)), counts(jobs.size());
  ASSERT_EQ(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(counts.data(), dcounts, counts.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    const cuda::SelectJob& j = jobs[i];
    const int32_t written = cases[i].active ? counts[i] : 0;
    if (!cases[i].active) {
      EXPECT_EQ(counts[i], -7) << "an inactive job wrote its count";
    } else {
      ASSERT_EQ(counts[i], static_cast<int32_t>(want[i].size()));
      if (cases[i].rule.mass_threshold < 0) {
        EXPECT_EQ(want[i].size(), 103u) << "PSA should stop on its mass";
      }
      const std::vector<int32_t> got(out.begin() + j.out, out.begin() + j.out + counts[i]);
      EXPECT_EQ(got, want[i]);
    }
    for (int32_t e = written; e < j.num_pages; ++e)
      ASSERT_EQ(out[static_cast<size_t>(j.out + e)], -7) << "a write past the list, at entry " << e;
  }
  for (void* d : {static_cast<void*>(dq), static_cast<void*>(dkmin), static_cast<void*>(dkmax),
                  static_cast<void*>(dtable), static_cast<void*>(djobs), static_cast<void*>(dout),
                  static_cast<void*>(dcounts), static_cast<void*>(dscratch), static_cast<void*>(darrivals)})
    cudaFree(d);
}

class CudaPageSelect : public ::testing::Test {
 protected:
  void SetUp() override {
    LSERVE_SKIP_WITHOUT_GPU();
    seed_ = test::fresh_seed();
    rng_.seed(seed_);
  }
  // Cases on a pool of P-token pages scored on LP-token logical pages; failures name the seed.
  void check(int32_t P, int32_t LP, const std::vector<JobCase>& cases) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed_);
    expect_host_picks(P, LP, cases, rng_);
  }
  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

TEST_F(CudaPageSelect, LongContextsMatchTheHostSelector) {
  check(64, 16, {
      {"16000 pages (1M tokens): every kernel strides over its chunks", 2, 0, 0, 16000, 40, {64, 0, 0.0}, false},
      {"budget 64 pages, 4 heads, 5000 pages", 4, 0, 0, 5000, 17, {64, 0, 0.0}, false, true, 1},
      {"one head (per query head), 3100 pages", 1, 7, 2, 3100, 64, {64, 0, 0.0}, false},
      {"a whole group of 16 heads", 16, 0, 1, 2000, 3, {48, 0, 0.0}, false, true, 1},
      {"ties: repeated pages", 2, 4, 1, 2500, 1, {40, 0, 0.0}, true},
      {"psa: stops on its mass, 8..300 pages", 4, 8, 1, 4000, 33, {300, 8, -1.0}, false},
      {"psa: the upper bound binds", 2, 12, 0, 1200, 5, {20, 4, 0.999}, true},
      {"2600 of 3000 pages: the sort in scratch", 2, 2, 2, 3000, 48, {2600, 0, 0.0}, false},
      {"100 of 16000 pages: more chunk lists than the merge holds", 4, 0, 1, 16000, 9, {102, 0, 0.0}, false},
      {"a budget of two pages: the first and the last", 4, 4, 0, 700, 20, {2, 0, 0.0}, false},
      {"short: keeps every page", 4, 0, 0, 50, 10, {64, 0, 0.0}, false},
      {"inactive", 4, 4, 1, 900, 64, {64, 0, 0.0}, false, false},
  });
}

// 64 logical pages of one token per page: a score chunk is a single page.
TEST_F(CudaPageSelect, OneTokenLogicalPagesMatchTheHostSelector) {
  check(64, 1, {
      {"budget 32 of 600 pages", 4, 4, 2, 600, 37, {32, 0, 0.0}, false},
      {"psa of 400 pages", 2, 0, 0, 400, 1, {200, 4, -1.0}, false, true, 1},
  });
}

}  // namespace
}  // namespace lserve
