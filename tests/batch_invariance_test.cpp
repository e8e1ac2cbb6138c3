// Batch invariance of the CPU backend. Under continuous batching a request shares each forward
// pass with whatever else is scheduled, and its prompt is prefilled in chunks whose boundaries
// depend on that; greedy decoding gives the same tokens as the request run alone only if every
// token row's result is bitwise the same in all those cases. Checked bitwise (not within a
// tolerance) on:
//   (a) cpu_linear: a row alone, in batches of 1..300 rows, shuffled, on 1..3 threads; f32 and
//       bf16 weights with K and N that no tile divides; against the order fixed_order_dot.h
//       defines; and, within a rounding bound, against double precision;
//   (b) cpu_paged_attention: a prefill row in chunks of any size and start, and any row next to
//       other sequences' prefill chunks and decode rows, dense and with streaming heads;
//   (c) LlamaModel on every fixture model: logits of a sequence alone in one chunk vs prefilled
//       in other chunk sizes vs batched with sequences of other lengths, then its decode steps.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <span>

#include "backend/attention_batch.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_attention.h"
#include "backend/cpu/cpu_linear.h"
#include "backend/cpu/fixed_order_dot.h"
#include "engine/batch_plan.h"
#include "fixture_model.h"
#include "sparse/sparsity_config.h"
#include "test_util.h"

namespace lserve {
namespace {

// Index of the first element whose bits differ (sizes must match), or -1.
int64_t first_bit_difference(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return static_cast<int64_t>(i);
  return -1;
}

// Restores the OpenMP thread count a test changes.
struct ThreadCountGuard {
  int saved = omp_get_max_threads();
  ~ThreadCountGuard() { omp_set_num_threads(saved); }
};

// ---- (a) linear ----

struct LinearProblem {
  int64_t K, N;
  DType dtype;
  std::vector<float> wf;      // the weights' values (bf16-representable when dtype is bf16)
  std::vector<uint16_t> wb;   // their bf16 bits
  Tensor w() { return dtype == DType::F32 ? Tensor{wf.data(), DType::F32, Shape{N, K}} : Tensor{wb.data(), DType::BF16, Shape{N, K}}; }

  LinearProblem(int64_t k, int64_t n, DType d, std::mt19937& rng) : K(k), N(n), dtype(d) {
    wf = test::random_floats(static_cast<size_t>(N * K), rng, 0.05f);
    wb.resize(wf.size());
    if (dtype == DType::BF16)
      for (size_t i = 0; i < wf.size(); ++i) wf[i] = bf16_to_f32(wb[i] = f32_to_bf16(wf[i]));
  }
  std::vector<float> run(std::span<const float> x) {
    const auto T = static_cast<int64_t>(x.size()) / K;
    std::vector<float> out(static_cast<size_t>(T * N), std::nanf(""));
    cpu_linear(Tensor{const_cast<float*>(x.data()), DType::F32, Shape{T, K}}, w(), Tensor{out.data(), DType::F32, Shape{T, N}});
    return out;
  }
  float reference(const float* x, int64_t n) {
    return dtype == DType::F32 ? fixed_order_dot(x, wf.data() + n * K, K) : fixed_order_dot(x, wb.data() + n * K, K);
  }
};

TEST(BatchInvariantLinear, RowsAreBitwiseTheSameAloneInAnyBatchAndOnAnyThreadCount) {
  constexpr int64_t kRows = 300;
  ThreadCountGuard guard;
  std::mt19937 rng(11);
  for (DType dtype : {DType::F32, DType::BF16})
    for (auto [K, N] : {std::pair<int64_t, int64_t>{37, 45}, {515, 101}, {2051, 29}}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " K " << K << " N " << N);
      LinearProblem p(K, N, dtype, rng);
      const auto x = test::random_floats(static_cast<size_t>(kRows * K), rng);
      auto row = [&](int64_t t) { return std::span<const float>(x).subspan(static_cast<size_t>(t * K), static_cast<size_t>(K)); };

      // Each row alone: exactly the order fixed_order_dot.h defines.
      std::vector<float> alone(static_cast<size_t>(kRows * N));
      for (int64_t t = 0; t < kRows; ++t) {
        const auto out = p.run(row(t));
        std::copy(out.begin(), out.end(), alone.begin() + t * N);
        for (int64_t n = 0; n < N; ++n)
          ASSERT_EQ(std::bit_cast<uint32_t>(out[static_cast<size_t>(n)]), std::bit_cast<uint32_t>(p.reference(row(t).data(), n)))
              << "row " << t << " column " << n << " differs from fixed_order_dot";
      }
      auto expect_rows = [&](const std::vector<float>& out, const std::vector<int64_t>& rows, const std::string& what) {
        for (size_t i = 0; i < rows.size(); ++i) {
          const auto got = std::span<const float>(out).subspan(i * static_cast<size_t>(N), static_cast<size_t>(N));
          const auto want = std::span<const float>(alone).subspan(static_cast<size_t>(rows[i] * N), static_cast<size_t>(N));
          ASSERT_EQ(first_bit_difference(got, want), -1) << what << ": batch row " << i << " (row " << rows[i] << ")";
        }
      };

      for (int64_t T : {1, 2, 3, 7, 8, 9, 31, 64, 300}) {
        SCOPED_TRACE(::testing::Message() << "T " << T);
        std::vector<int64_t> first(static_cast<size_t>(T));
        std::iota(first.begin(), first.end(), 0);
        expect_rows(p.run(std::span<const float>(x).first(static_cast<size_t>(T * K))), first, "in order");

        // T rows drawn from all of them, in a random order.
        std::vector<int64_t> pick(static_cast<size_t>(kRows));
        std::iota(pick.begin(), pick.end(), 0);
        std::shuffle(pick.begin(), pick.end(), rng);
        pick.resize(static_cast<size_t>(T));
        std::vector<float> xs;
        for (int64_t t : pick) xs.insert(xs.end(), row(t).begin(), row(t).end());
        expect_rows(p.run(xs), pick, "shuffled");
      }
      for (int threads : {1, 3}) {
        omp_set_num_threads(threads);
        std::vector<int64_t> rows(64);
        std::iota(rows.begin(), rows.end(), 7);
        expect_rows(p.run(std::span<const float>(x).subspan(static_cast<size_t>(7 * K), static_cast<size_t>(64 * K))), rows,
                    std::to_string(threads) + " threads");
      }
      omp_set_num_threads(guard.saved);
    }
}

// Against double precision. Every lane is a chain of ceil(K / 8) fused multiply-adds and the tree
// adds 3 more roundings, so |error| <= gamma_m * sum_k |x_k w_k| with m = ceil(K / 8) + 3 and
// gamma_m = m u / (1 - m u), u = 2^-24 (Higham, Accuracy and Stability, 3.1): a proof, not a fit.
TEST(BatchInvariantLinear, WithinTheRoundingBoundOfDoublePrecision) {
  std::mt19937 rng(5);
  for (DType dtype : {DType::F32, DType::BF16})
    for (auto [T, K, N] : {std::tuple<int64_t, int64_t, int64_t>{1, 4099, 19}, {9, 515, 101}, {70, 64, 45}, {5, 3, 7}}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " T " << T << " K " << K << " N " << N);
      LinearProblem p(K, N, dtype, rng);
      const auto x = test::random_floats(static_cast<size_t>(T * K), rng);
      const auto out = p.run(x);
      const double m = static_cast<double>((K + kDotLanes - 1) / kDotLanes + 3), u = std::ldexp(1.0, -24);
      const double gamma = m * u / (1 - m * u);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double prod = static_cast<double>(x[static_cast<size_t>(t * K + k)]) * p.wf[static_cast<size_t>(n * K + k)];
            ref += prod;
            mag += std::abs(prod);
          }
          ASSERT_LE(std::abs(out[static_cast<size_t>(t * N + n)] - ref), gamma * mag) << "t " << t << " n " << n;
        }
    }
}

// ---- (b) attention ----

// Sequences whose K and V are all in the pools from the start, so a step may compute any rows
// of any of them; every (sequence, position) has its own fixed queries.
class AttentionRig {
 public:
  static constexpr int64_t H = 4, Hk = 2, D = 32, P = 16;

  // streaming: KV head 1 is a streaming head (its own pool) under the Lambda windows below.
  AttentionRig(bool streaming, std::vector<int32_t> lengths, uint32_t seed) : streaming_(streaming), rng_(seed) {
    sparsity_.policy = AttentionPolicy::Streaming;
    sparsity_.page_size = static_cast<int32_t>(P);
    sparsity_.prefill_window = {20, 300};  // neither a page multiple
    sparsity_.decode_window = {9, 100};
    slots_ = streaming ? std::vector<HeadSlot>{{HeadKind::Retrieval, 0}, {HeadKind::Streaming, 0}}
                       : std::vector<HeadSlot>{{HeadKind::Retrieval, 0}, {HeadKind::Retrieval, 1}};
    pool_heads_[0] = streaming ? 1 : 2;
    pool_heads_[1] = streaming ? 1 : 0;
    int32_t pages = 0;
    for (int32_t len : lengths) pages += (len + static_cast<int32_t>(P) - 1) / static_cast<int32_t>(P);
    std::vector<int32_t> order(static_cast<size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);  // pages scattered in the pools
    size_t next = 0;
    for (int32_t len : lengths) {
      Seq s;
      s.len = len;
      for (int32_t p = 0; p < (len + P - 1) / P; ++p) s.pages.push_back(order[next++]);
      s.q = test::random_floats(static_cast<size_t>(len * H * D), rng_);
      seqs_.push_back(std::move(s));
    }
    for (int i = 0; i < 2; ++i) {
      k_[i] = test::random_floats(static_cast<size_t>(pages * pool_heads_[i] * P * D), rng_);
      v_[i] = test::random_floats(k_[i].size(), rng_);
    }
  }

  int32_t length(size_t seq) const { return seqs_[seq].len; }

  // What one sequence computes in a step: its rows [start, start + len), as prefill or decode.
  struct Piece {
    size_t seq;
    int32_t start, len;
    bool decoding = false;
  };

  // Runs one step; returns each piece's output rows ([len, H * D]).
  std::vector<std::vector<float>> run(const std::vector<Piece>& pieces) const {
    AttentionBatch batch;
    batch.query_start = {0};
    batch.page_indptr = {0};
    if (streaming_) batch.streaming_page_indptr = {0};
    std::vector<float> q;
    for (const Piece& pc : pieces) {
      const Seq& s = seqs_[pc.seq];
      const int32_t seq_len = pc.start + pc.len;
      const auto pages = std::span(s.pages).first(static_cast<size_t>((seq_len + P - 1) / P));
      batch.query_start.push_back(batch.query_start.back() + pc.len);
      batch.seq_lens.push_back(seq_len);
      batch.page_indices.insert(batch.page_indices.end(), pages.begin(), pages.end());
      batch.page_indptr.push_back(static_cast<int32_t>(batch.page_indices.size()));
      if (streaming_) {
        batch.streaming_page_indices.insert(batch.streaming_page_indices.end(), pages.begin(), pages.end());
        batch.streaming_page_indptr.push_back(static_cast<int32_t>(batch.streaming_page_indices.size()));
      }
      batch.decoding.push_back(pc.decoding);
      q.insert(q.end(), s.q.begin() + pc.start * H * D, s.q.begin() + seq_len * H * D);
    }
    batch.sparsity = streaming_ ? &sparsity_ : nullptr;
    std::vector<float> out(q.size(), std::nanf(""));
    CpuAttentionArgs a{};
    a.q = q.data();
    a.out = out.data();
    a.num_heads = H;
    a.num_kv_heads = Hk;
    a.head_dim = D;
    a.page_size = P;
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (int i = 0; i < 2; ++i) {
      a.k[i] = k_[i].data();
      a.v[i] = v_[i].data();
      a.pool_heads[i] = pool_heads_[i];
    }
    a.slots = slots_.data();
    cpu_paged_attention(a, batch);
    std::vector<std::vector<float>> result;
    for (size_t i = 0; i < pieces.size(); ++i)
      result.emplace_back(out.begin() + batch.query_start[i] * H * D, out.begin() + batch.query_start[i + 1] * H * D);
    return result;
  }

 private:
  struct Seq {
    int32_t len;
    std::vector<int32_t> pages;
    std::vector<float> q;  // [len, H, D]
  };
  bool streaming_;
  std::mt19937 rng_;
  SparsityConfig sparsity_;
  std::vector<HeadSlot> slots_;
  int64_t pool_heads_[2];
  std::vector<float> k_[2], v_[2];
  std::vector<Seq> seqs_;
};

// Rows [first, first + count) of a [len, H * D] output.
std::span<const float> attention_rows(const std::vector<float>& out, int32_t first, int32_t count) {
  const auto row = static_cast<size_t>(AttentionRig::H * AttentionRig::D);
  return std::span<const float>(out).subspan(static_cast<size_t>(first) * row, static_cast<size_t>(count) * row);
}

class BatchInvariantAttention : public ::testing::TestWithParam<bool> {};  // streaming heads or not

// 1100 tokens of 16-token pages: 69 pages, two 1024-token segments; chunk sizes around the query
// tile (32) and the parallel-segment threshold (4).
TEST_P(BatchInvariantAttention, PrefillRowsAreBitwiseTheSameForAnyChunking) {
  const AttentionRig rig(GetParam(), {1100}, 3);
  const auto whole = rig.run({{0, 0, 1100}})[0];
  for (int32_t chunk : {1, 3, 4, 5, 31, 32, 33, 100, 517}) {
    for (int32_t start = 0; start < 1100; start += chunk) {
      if (chunk <= 5 && start >= 64 && start < 990) continue;  // tiny chunks: the ends and segment 1 suffice
      const int32_t n = std::min(chunk, 1100 - start);
      const auto out = rig.run({{0, start, n}})[0];
      ASSERT_EQ(first_bit_difference(out, attention_rows(whole, start, n)), -1) << "chunk " << chunk << " at " << start;
    }
  }
}

TEST_P(BatchInvariantAttention, RowsAreBitwiseTheSameNextToOtherSequences) {
  const AttentionRig rig(GetParam(), {1100, 700, 333}, 4);
  std::vector<std::vector<float>> whole;  // each sequence prefilled alone in one chunk
  for (size_t s = 0; s < 3; ++s) whole.push_back(rig.run({{s, 0, rig.length(s)}})[0]);
  std::mt19937 rng(9);
  for (int trial = 0; trial < 24; ++trial) {
    // Each sequence contributes a prefill chunk, a decode row, or nothing; in a random order.
    std::vector<AttentionRig::Piece> pieces;
    for (size_t s = 0; s < 3; ++s) {
      const int32_t len = rig.length(s);
      const auto kind = rng() % 3;
      if (kind == 0) continue;
      const int32_t start = static_cast<int32_t>(rng() % static_cast<uint32_t>(len));
      const int32_t lens[] = {1, 2, 4, 5, 33, 200};  // few rows run segments in parallel, more in one item
      const int32_t n = kind == 1 ? std::min(len - start, lens[rng() % 6]) : 1;
      pieces.push_back({s, start, n, kind == 2});
    }
    std::shuffle(pieces.begin(), pieces.end(), rng);
    if (pieces.empty()) continue;
    const auto outs = rig.run(pieces);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const auto& pc = pieces[i];
      SCOPED_TRACE(::testing::Message() << "trial " << trial << " sequence " << pc.seq << " rows [" << pc.start << ", "
                                        << pc.start + pc.len << ")" << (pc.decoding ? " decoding" : ""));
      // A decode row is compared with itself alone (decode windows differ from prefill ones).
      const auto want = pc.decoding ? rig.run({pc})[0] : std::vector<float>(attention_rows(whole[pc.seq], pc.start, pc.len).begin(),
                                                                            attention_rows(whole[pc.seq], pc.start, pc.len).end());
      ASSERT_EQ(first_bit_difference(outs[i], want), -1);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, BatchInvariantAttention, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "streaming" : "dense"; });

// ---- (c) the whole model ----

std::vector<std::filesystem::path> fixture_dirs() {
  std::vector<std::filesystem::path> dirs;
  if (std::filesystem::exists(test::fixture_models_dir()))
    for (const auto& e : std::filesystem::directory_iterator(test::fixture_models_dir()))
      if (std::filesystem::exists(e.path() / "config.json")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : test::bundled_model_dirs("config.json")) dirs.push_back(d);
  return dirs;
}

// A sequence's tokens and, once computed, the logits of every one of them ([tokens, vocab]).
struct ModelSequence {
  std::vector<int32_t> tokens;  // prompt then the tokens fed in decode steps
  int32_t prompt_len;
  SequenceKv kv;
  std::vector<float> logits;
};

class BatchInvariantModel : public ::testing::TestWithParam<std::filesystem::path> {
 protected:
  struct Piece {
    ModelSequence* seq;
    int32_t len;
    bool decoding = false;
  };

  // One forward step over the pieces (each continues its sequence); appends their logits.
  void step(test::FixtureModel& f, const std::vector<Piece>& pieces) {
    std::vector<StepChunk> chunks;
    std::vector<int32_t> tokens;
    for (const Piece& pc : pieces) {
      const int64_t start = pc.seq->kv.num_tokens();
      f.cache.reserve(pc.seq->kv, start + pc.len);
      chunks.push_back({&pc.seq->kv, start, pc.len, pc.decoding, nullptr});
      tokens.insert(tokens.end(), pc.seq->tokens.begin() + start, pc.seq->tokens.begin() + start + pc.len);
    }
    const AttentionBatch batch = plan_step(f.cache, chunks, nullptr);
    std::vector<int32_t> rows(tokens.size());
    std::iota(rows.begin(), rows.end(), 0);
    const int64_t V = f.config.vocab_size;
    std::vector<float> logits(rows.size() * static_cast<size_t>(V));
    f.model.forward(tokens, batch, f.cache, rows, logits.data());
    size_t row = 0;
    for (const Piece& pc : pieces) {
      pc.seq->logits.insert(pc.seq->logits.end(), logits.begin() + static_cast<int64_t>(row) * V,
                            logits.begin() + static_cast<int64_t>(row + static_cast<size_t>(pc.len)) * V);
      row += static_cast<size_t>(pc.len);
      if (pc.decoding) ++pc.seq->kv.decode_steps;
    }
  }
};

// Three sequences of other lengths. Each alone, prompt in one chunk then 3 decode steps, is the
// reference; then every prompt is prefilled alone in chunks of 1, 7, 64 and 100 tokens; then all
// three run together, chunks of different sizes in changing order, decode rows next to prefill
// chunks. Every logit of every token must keep its bits.
TEST_P(BatchInvariantModel, LogitsAreBitwiseTheSameAloneChunkedAndBatched) {
  auto backend = make_cpu_backend(0);
  test::FixtureModel f(GetParam(), *backend);
  const int64_t V = f.config.vocab_size;
  std::mt19937 rng(21);
  auto make = [&](int32_t prompt_len) {
    ModelSequence s;
    s.prompt_len = prompt_len;
    for (int32_t i = 0; i < prompt_len + 3; ++i) s.tokens.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(V)));
    return s;
  };
  std::vector<ModelSequence> seqs;
  for (int32_t len : {150, 90, 61}) seqs.push_back(make(len));

  auto run_alone = [&](ModelSequence& s, int32_t chunk) {
    for (int32_t start = 0; start < s.prompt_len; start += chunk) step(f, {{&s, std::min(chunk, s.prompt_len - start)}});
    for (int i = 0; i < 3; ++i) step(f, {{&s, 1, true}});
    f.cache.release(s.kv);
  };
  auto expect_same = [&](ModelSequence& s, const std::vector<float>& want, const std::string& what) {
    const int64_t diff = first_bit_difference(s.logits, want);
    EXPECT_EQ(diff, -1) << what << ": token " << diff / V << " of " << s.tokens.size();
    s.logits.clear();
  };

  std::vector<std::vector<float>> reference;
  for (auto& s : seqs) {
    run_alone(s, s.prompt_len);
    reference.push_back(std::move(s.logits));
    s.logits.clear();
  }
  for (size_t i = 0; i < seqs.size(); ++i)
    for (int32_t chunk : {1, 7, 64, 100}) {
      run_alone(seqs[i], chunk);
      expect_same(seqs[i], reference[i], "sequence " + std::to_string(i) + " alone in chunks of " + std::to_string(chunk));
    }

  ModelSequence &a = seqs[0], &b = seqs[1], &c = seqs[2];  // prompts of 150, 90, 61
  step(f, {{&b, 50}, {&a, 70}});
  step(f, {{&a, 80}, {&c, 61}, {&b, 33}});
  step(f, {{&c, 1, true}, {&b, 7}, {&a, 1, true}});  // b's prompt is done
  step(f, {{&a, 1, true}, {&b, 1, true}});
  step(f, {{&b, 1, true}, {&c, 1, true}, {&a, 1, true}});
  step(f, {{&c, 1, true}, {&b, 1, true}});
  for (size_t i = 0; i < seqs.size(); ++i) {
    expect_same(seqs[i], reference[i], "sequence " + std::to_string(i) + " batched");
    f.cache.release(seqs[i].kv);
  }
  EXPECT_EQ(f.cache.allocator().num_used(), 0) << "pages leaked";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchInvariantModel, ::testing::ValuesIn(fixture_dirs()), [](const auto& param_info) {
  std::string n = param_info.param.filename().string();
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(BatchInvariantModel);

}  // namespace
}  // namespace lserve
