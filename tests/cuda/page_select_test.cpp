// The GPU page selector (backend/cuda/page_select.h) against the host's (sparse/page_selector.h)
// on long contexts, kernel by kernel: thousands of pages spread over many blocks per job, pages
// whose summaries are identical (exact ties, broken by the lower index), PSA stopping before its
// budget, a budget of more candidates than the pick sorts in shared memory, a partial last page,
// a job that keeps every page, and an inactive job that must write nothing. The lists and counts
// must be the host's exactly.
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
};

TEST(CudaPageSelect, LongContextsMatchTheHostSelector) {
  LSERVE_SKIP_WITHOUT_GPU();
  const uint32_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  constexpr int32_t kHeads = 16, D = 128, P = 64, LP = 16, per_page = P / LP, pool_heads = 3, pool_pages = 6000;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Key summaries of a pool: per (page, head, logical row) a min and a max per channel.
  const size_t rows = static_cast<size_t>(pool_pages) * pool_heads * per_page;
  std::vector<float> kmin(rows * D), kmax(rows * D);
  {
    const auto a = test::random_bf16(kmin.size(), rng, 2.0f), b = test::random_bf16(kmin.size(), rng, 2.0f);
    for (size_t i = 0; i < kmin.size(); ++i) kmin[i] = std::min(a[i], b[i]), kmax[i] = std::max(a[i], b[i]);
  }
  const std::vector<float> q = test::random_bf16(static_cast<size_t>(kHeads) * D, rng, 1.5f);

  const std::vector<JobCase> cases = {
      {"budget 64 pages, 4 heads, 5000 pages", 4, 0, 0, 5000, 17, {64, 0, 0.0}, false},
      {"one head (per query head), 3100 pages", 1, 7, 2, 3100, 64, {64, 0, 0.0}, false},
      {"ties: repeated pages", 2, 4, 1, 2500, 1, {40, 0, 0.0}, true},
      {"psa: stops on its mass, 8..300 pages", 4, 8, 1, 4000, 33, {300, 8, -1.0}, false},
      {"psa: the upper bound binds", 2, 12, 0, 1200, 5, {20, 4, 0.999}, true},
      {"2600 of 3000 pages: the sort in scratch", 2, 2, 2, 3000, 48, {2600, 0, 0.0}, false},
      {"short: keeps every page", 4, 0, 0, 50, 10, {64, 0, 0.0}, false},
      {"inactive", 4, 4, 1, 900, 64, {64, 0, 0.0}, false, false},
  };

  std::vector<int32_t> page_table;
  std::vector<cuda::SelectJob> jobs;
  std::vector<std::vector<int32_t>> want;
  int32_t out_at = 0;
  size_t scratch_at = 0;
  for (const JobCase& c : cases) {
    std::vector<int32_t> pages(static_cast<size_t>(c.num_pages));
    std::vector<int32_t> ids(pool_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int32_t i = 0; i < c.num_pages; ++i)
      pages[static_cast<size_t>(i)] = c.duplicate_pages ? ids[static_cast<size_t>(i % 97)] : ids[static_cast<size_t>(i)];
    const int32_t tokens = (c.num_pages - 1) * P + c.tail_tokens;
    SelectorInputs in{q.data() + static_cast<size_t>(c.head0) * D, c.heads, D, kmin.data(), kmax.data(), pool_heads,
                      c.pool_index, pages, tokens, P, LP, scale};
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
    j.q_row = 0;
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

  cuda::SelectParams p{};
  p.q = dq;
  p.num_heads = kHeads;
  p.head_dim = D;
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
  cuda::select_pages(p, djobs, static_cast<int32_t>(jobs.size()), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  std::vector<int32_t> out(static_cast<size_t>(out_at)), counts(jobs.size());
  ASSERT_EQ(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(counts.data(), dcounts, counts.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    const cuda::SelectJob& j = jobs[i];
    if (!cases[i].active) {
      EXPECT_EQ(counts[i], -7) << "an inactive job wrote its count";
      EXPECT_EQ(out[static_cast<size_t>(j.out)], -7) << "an inactive job wrote its list";
      continue;
    }
    ASSERT_EQ(counts[i], static_cast<int32_t>(want[i].size()));
    const std::vector<int32_t> got(out.begin() + j.out, out.begin() + j.out + counts[i]);
    EXPECT_EQ(got, want[i]);
  }
  // The PSA case must have stopped on its mass, not its bound, to test that rule.
  EXPECT_EQ(want[3].size(), 103u);
  for (void* d : {static_cast<void*>(dq), static_cast<void*>(dkmin), static_cast<void*>(dkmax),
                  static_cast<void*>(dtable), static_cast<void*>(djobs), static_cast<void*>(dout),
                  static_cast<void*>(dcounts), static_cast<void*>(dscratch)})
    cudaFree(d);
}

}  // namespace
}  // namespace lserve
