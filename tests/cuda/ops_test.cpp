// Every CUDA backend op against the CPU backend's op on fresh random inputs (see
// cuda_test_util.h for the method). Shapes cover the vector and scalar paths of each kernel
// (row lengths that are and are not multiples of 8), aliasing outputs where the contract allows
// it, and the dtypes prepare_weight takes.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "cuda_test_util.h"

namespace lserve {
namespace {

using test::compare;
using test::fetch;
using test::poisoned;
using test::prepare;
using test::put;
using test::random_bf16;

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    LSERVE_SKIP_WITHOUT_GPU();
    seed_ = test::fresh_seed();
    rng_.seed(seed_);
    cpu_ = make_cpu_backend(2);
    gpu_ = make_cuda_backend(0);
  }
  ::testing::Message where() const { return ::testing::Message() << "seed " << seed_; }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::unique_ptr<Backend> cpu_, gpu_;
};

TEST_F(CudaOps, PrepareWeightRoundsToBf16) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    SCOPED_TRACE(where() << " dtype " << dtype_name(dt));
    auto v = test::random_floats(3 * 1001, rng_, 3.0f);
    if (dt == DType::F16)  // what an f16 checkpoint can hold
      for (auto& x : v) x = f16_to_f32(f32_to_f16(x));
    const test::Weight w = prepare(*gpu_, Shape{3, 1001}, v, dt);
    EXPECT_EQ(w.t.dtype, DType::BF16);
    EXPECT_EQ(w.t.device, Device::Cuda);
    const auto got = fetch(*gpu_, w.t);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], test::round_bf16(v[i])) << "element " << i;
  }
}

TEST_F(CudaOps, RmsNorm) {
  for (int64_t H : {64, 100, 4096}) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE(where() << " H " << H << (alias ? " in place" : ""));
      const int64_t T = std::uniform_int_distribution<int64_t>(1, 40)(rng_);
      const auto x = random_bf16(static_cast<size_t>(T * H), rng_, 2.0f);
      auto wv = random_bf16(static_cast<size_t>(H), rng_, 0.3f);
      for (auto& w : wv) w = test::round_bf16(1.0f + w);
      auto cx = put(*cpu_, Shape{T, H}, x), cout = test::make_tensor(*cpu_, DType::F32, Shape{T, H});
      const auto cw = prepare(*cpu_, Shape{H}, wv), gw = prepare(*gpu_, Shape{H}, wv, DType::BF16);
      cpu_->rms_norm(cx.t, cw.t, 1e-5f, cout.t);
      auto gx = put(*gpu_, Shape{T, H}, x);
      auto gout = alias ? gx : poisoned(*gpu_, DType::BF16, Shape{T, H});
      gpu_->rms_norm(gx.t, gw.t, 1e-5f, gout.t);
      EXPECT_BF16_CLOSE(fetch(*gpu_, gout.t), fetch(*cpu_, cout.t));
    }
  }
}

TEST_F(CudaOps, AddRmsNorm) {
  for (int64_t H : {64, 100, 2048}) {
    SCOPED_TRACE(where() << " H " << H);
    const int64_t T = std::uniform_int_distribution<int64_t>(1, 40)(rng_);
    const auto r = random_bf16(static_cast<size_t>(T * H), rng_, 2.0f), x = random_bf16(r.size(), rng_, 1.0f);
    const auto wv = random_bf16(static_cast<size_t>(H), rng_, 1.0f);
    auto cr = put(*cpu_, Shape{T, H}, r), cx = put(*cpu_, Shape{T, H}, x);
    auto cout = test::make_tensor(*cpu_, DType::F32, Shape{T, H});
    const auto cw = prepare(*cpu_, Shape{H}, wv), gw = prepare(*gpu_, Shape{H}, wv, DType::BF16);
    cpu_->add_rms_norm(cr.t, cx.t, cw.t, 1e-6f, cout.t);
    auto gr = put(*gpu_, Shape{T, H}, r), gx = put(*gpu_, Shape{T, H}, x);
    auto gout = poisoned(*gpu_, DType::BF16, Shape{T, H});
    gpu_->add_rms_norm(gr.t, gx.t, gw.t, 1e-6f, gout.t);
    EXPECT_BF16_CLOSE(fetch(*gpu_, gr.t), fetch(*cpu_, cr.t));
    EXPECT_BF16_CLOSE(fetch(*gpu_, gout.t), fetch(*cpu_, cout.t));
  }
}

TEST_F(CudaOps, Linear) {
  struct Shape3 {
    int64_t T, K, N;
  };
  for (const Shape3 s : {Shape3{1, 64, 48}, Shape3{7, 256, 512}, Shape3{64, 100, 1000}, Shape3{200, 512, 768},
                         Shape3{3, 4096, 4096}}) {
    for (int variant = 0; variant < 3; ++variant) {  // plain bf16 out, with bias, f32 out
      const bool bias = variant == 1, out_f32 = variant == 2;
      SCOPED_TRACE(where() << " T " << s.T << " K " << s.K << " N " << s.N << " variant " << variant);
      const auto x = random_bf16(static_cast<size_t>(s.T * s.K), rng_);
      const auto wv = random_bf16(static_cast<size_t>(s.N * s.K), rng_, 0.05f);
      const auto bv = random_bf16(static_cast<size_t>(s.N), rng_, 0.5f);
      auto cx = put(*cpu_, Shape{s.T, s.K}, x);
      auto cout = test::make_tensor(*cpu_, DType::F32, Shape{s.T, s.N});
      const auto cw = prepare(*cpu_, Shape{s.N, s.K}, wv), cb = prepare(*cpu_, Shape{s.N}, bv);
      cpu_->linear(cx.t, cw.t, bias ? cb.t : Tensor{}, cout.t);
      // The GPU weight comes from f32 (the conversion path); the bias from bf16.
      const auto gw = prepare(*gpu_, Shape{s.N, s.K}, wv, DType::F32), gb = prepare(*gpu_, Shape{s.N}, bv, DType::BF16);
      auto gx = put(*gpu_, Shape{s.T, s.K}, x);
      auto gout = poisoned(*gpu_, out_f32 ? DType::F32 : DType::BF16, Shape{s.T, s.N});
      gpu_->linear(gx.t, gw.t, bias ? gb.t : Tensor{}, gout.t);
      EXPECT_BF16_CLOSE(fetch(*gpu_, gout.t), fetch(*cpu_, cout.t));
    }
  }
}

// A linear, the residual add and the norm after it (o_proj, down_proj): at one row the skinny
// kernel's last block runs the norm; other shapes (more rows, a row count not a multiple of 8)
// fall back to the two ops. Either way the CPU's three ops, and bit for bit what the GPU
// gives with the norm as its own kernel. Launches in a row share the stream's arrival counter,
// so each must leave it at zero for the next: three in a row per case.
TEST_F(CudaOps, LinearAddRmsNorm) {
  CudaBackendOptions apart_options;
  apart_options.fused_linear_norm = false;
  auto apart = make_cuda_backend(apart_options);
  struct Case {
    int64_t T, K, N;
  };
  for (const Case c : {Case{1, 4096, 4096}, Case{1, 14336, 4096}, Case{1, 64, 48}, Case{1, 256, 1000},
                       Case{1, 256, 1002}, Case{2, 256, 1000}}) {
    const auto wv = random_bf16(static_cast<size_t>(c.N * c.K), rng_, 0.05f);
    const auto nv = random_bf16(static_cast<size_t>(c.N), rng_, 1.0f);
    const auto cw = prepare(*cpu_, Shape{c.N, c.K}, wv), cn = prepare(*cpu_, Shape{c.N}, nv);
    const auto gw = prepare(*gpu_, Shape{c.N, c.K}, wv, DType::BF16), gn = prepare(*gpu_, Shape{c.N}, nv, DType::BF16);
    const auto aw = prepare(*apart, Shape{c.N, c.K}, wv, DType::BF16), an = prepare(*apart, Shape{c.N}, nv, DType::BF16);
    for (int launch = 0; launch < 3; ++launch) {
      SCOPED_TRACE(where() << " T " << c.T << " K " << c.K << " N " << c.N << " launch " << launch);
      const auto x = random_bf16(static_cast<size_t>(c.T * c.K), rng_);
      const auto r = random_bf16(static_cast<size_t>(c.T * c.N), rng_, 2.0f);
      auto cx = put(*cpu_, Shape{c.T, c.K}, x), cr = put(*cpu_, Shape{c.T, c.N}, r);
      auto cprod = test::make_tensor(*cpu_, DType::F32, Shape{c.T, c.N});
      auto cout = test::make_tensor(*cpu_, DType::F32, Shape{c.T, c.N});
      cpu_->linear(cx.t, cw.t, Tensor{}, cprod.t);
      cpu_->add_rms_norm(cr.t, cprod.t, cn.t, 1e-5f, cout.t);

      auto gx = put(*gpu_, Shape{c.T, c.K}, x), gr = put(*gpu_, Shape{c.T, c.N}, r);
      auto gprod = poisoned(*gpu_, DType::BF16, Shape{c.T, c.N}), gout = poisoned(*gpu_, DType::BF16, Shape{c.T, c.N});
      gpu_->linear_add_rms_norm(gx.t, gw.t, gprod.t, gr.t, gn.t, 1e-5f, gout.t);
      auto ax = put(*apart, Shape{c.T, c.K}, x), ar = put(*apart, Shape{c.T, c.N}, r);
      auto aprod = poisoned(*apart, DType::BF16, Shape{c.T, c.N}), aout = poisoned(*apart, DType::BF16, Shape{c.T, c.N});
      apart->linear_add_rms_norm(ax.t, aw.t, aprod.t, ar.t, an.t, 1e-5f, aout.t);

      const auto prod = fetch(*gpu_, gprod.t), residual = fetch(*gpu_, gr.t), out = fetch(*gpu_, gout.t);
      EXPECT_BF16_CLOSE(prod, fetch(*cpu_, cprod.t));
      EXPECT_BF16_CLOSE(residual, fetch(*cpu_, cr.t));
      EXPECT_BF16_CLOSE(out, fetch(*cpu_, cout.t));
      EXPECT_EQ(prod, fetch(*apart, aprod.t));
      EXPECT_EQ(residual, fetch(*apart, ar.t));
      EXPECT_EQ(out, fetch(*apart, aout.t));
    }
  }
}

// q, k and v in one op: decode-sized batches run as one skinny launch, the rest (more rows,
// K not a multiple of 8, an odd row count) fall back to cuBLASLt; either way each output is
// the CPU's linear.
TEST_F(CudaOps, LinearGroup) {
  struct Case {
    int64_t T, K;
    std::vector<int64_t> rows;
  };
  for (const Case& c : {Case{1, 64, {64, 32, 32}}, Case{3, 4096, {512, 128, 128}}, Case{8, 256, {2, 30, 1030}},
                        Case{5, 136, {96}}, Case{2, 64, {48, 16}}, Case{12, 64, {64, 32, 32}},
                        Case{4, 100, {64, 32, 32}}, Case{1, 64, {64, 31, 32}}}) {
    SCOPED_TRACE(where() << " T " << c.T << " K " << c.K << " targets " << c.rows.size());
    const auto x = random_bf16(static_cast<size_t>(c.T * c.K), rng_);
    auto cx = put(*cpu_, Shape{c.T, c.K}, x), gx = put(*gpu_, Shape{c.T, c.K}, x);
    std::vector<test::Weight> cw, cb, gw, gb;
    std::vector<test::Owned> cout, gout;
    for (size_t i = 0; i < c.rows.size(); ++i) {
      const int64_t N = c.rows[i];
      const auto wv = random_bf16(static_cast<size_t>(N * c.K), rng_, 0.05f);
      const auto bv = random_bf16(static_cast<size_t>(N), rng_, 0.5f);
      cw.push_back(prepare(*cpu_, Shape{N, c.K}, wv));
      cb.push_back(prepare(*cpu_, Shape{N}, bv));
      gw.push_back(prepare(*gpu_, Shape{N, c.K}, wv, DType::BF16));
      gb.push_back(prepare(*gpu_, Shape{N}, bv, DType::BF16));
      cout.push_back(test::make_tensor(*cpu_, DType::F32, Shape{c.T, N}));
      gout.push_back(poisoned(*gpu_, DType::BF16, Shape{c.T, N}));
    }
    const Tensor none;
    std::vector<Backend::LinearOut> gouts;
    for (size_t i = 0; i < c.rows.size(); ++i) {
      const bool bias = i != 1;  // targets with and without a bias in one launch
      cpu_->linear(cx.t, cw[i].t, bias ? cb[i].t : none, cout[i].t);
      gouts.push_back({&gw[i].t, bias ? &gb[i].t : &none, gout[i].t});
    }
    gpu_->linear_group(gx.t, gouts);
    for (size_t i = 0; i < c.rows.size(); ++i) {
      SCOPED_TRACE(::testing::Message() << "target " << i);
      EXPECT_BF16_CLOSE(fetch(*gpu_, gout[i].t), fetch(*cpu_, cout[i].t));
    }
  }
}

// silu(x @ gate^T) * (x @ up^T): the fused skinny kernel for up to 8 rows, the unfused ops
// beyond, both against the CPU's two linears and silu_mul.
TEST_F(CudaOps, GatedLinear) {
  struct Case {
    int64_t T, K, F;
  };
  for (const Case c : {Case{1, 64, 128}, Case{5, 256, 100}, Case{8, 4096, 1408}, Case{9, 64, 128}, Case{2, 60, 64},
                       Case{1, 1024, 14336}}) {
    SCOPED_TRACE(where() << " T " << c.T << " K " << c.K << " F " << c.F);
    const auto x = random_bf16(static_cast<size_t>(c.T * c.K), rng_);
    const auto g = random_bf16(static_cast<size_t>(c.F * c.K), rng_, 0.1f), u = random_bf16(g.size(), rng_, 0.1f);
    auto cx = put(*cpu_, Shape{c.T, c.K}, x), gx = put(*gpu_, Shape{c.T, c.K}, x);
    const auto cg = prepare(*cpu_, Shape{c.F, c.K}, g), cu = prepare(*cpu_, Shape{c.F, c.K}, u);
    const auto gg = prepare(*gpu_, Shape{c.F, c.K}, g, DType::BF16), gu = prepare(*gpu_, Shape{c.F, c.K}, u, DType::BF16);
    auto cgo = test::make_tensor(*cpu_, DType::F32, Shape{c.T, c.F}), cuo = test::make_tensor(*cpu_, DType::F32, Shape{c.T, c.F});
    cpu_->linear(cx.t, cg.t, Tensor{}, cgo.t);
    cpu_->linear(cx.t, cu.t, Tensor{}, cuo.t);
    cpu_->silu_mul(cgo.t, cuo.t, cgo.t);
    auto ggo = poisoned(*gpu_, DType::BF16, Shape{c.T, c.F}), guo = poisoned(*gpu_, DType::BF16, Shape{c.T, c.F});
    gpu_->gated_linear(gx.t, gg.t, gu.t, ggo.t, guo.t, ggo.t);
    EXPECT_BF16_CLOSE(fetch(*gpu_, ggo.t), fetch(*cpu_, cgo.t));
  }
}

TEST_F(CudaOps, HeadRmsNorm) {
  for (int64_t D : {16, 64, 128}) {
    SCOPED_TRACE(where() << " head_dim " << D);
    const int64_t T = std::uniform_int_distribution<int64_t>(1, 30)(rng_), heads = 5;
    const auto x = random_bf16(static_cast<size_t>(T * heads * D), rng_, 2.0f);
    const auto wv = random_bf16(static_cast<size_t>(D), rng_, 1.0f);
    auto cx = put(*cpu_, Shape{T, heads * D}, x), gx = put(*gpu_, Shape{T, heads * D}, x);
    const auto cw = prepare(*cpu_, Shape{D}, wv), gw = prepare(*gpu_, Shape{D}, wv, DType::BF16);
    cpu_->head_rms_norm(cx.t, D, cw.t, 1e-6f);
    gpu_->head_rms_norm(gx.t, D, gw.t, 1e-6f);
    EXPECT_BF16_CLOSE(fetch(*gpu_, gx.t), fetch(*cpu_, cx.t));
  }
}

TEST_F(CudaOps, Rope) {
  for (int64_t D : {16, 64, 128}) {
    SCOPED_TRACE(where() << " head_dim " << D);
    const int64_t T = std::uniform_int_distribution<int64_t>(1, 50)(rng_), hq = 6, hk = 2, max_pos = 5000;
    const std::vector<float> table = test::rope_table(max_pos, D);
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (auto& p : pos) p = std::uniform_int_distribution<int32_t>(0, max_pos - 1)(rng_);
    const auto q = random_bf16(static_cast<size_t>(T * hq * D), rng_), k = random_bf16(static_cast<size_t>(T * hk * D), rng_);
    auto cq = put(*cpu_, Shape{T, hq * D}, q), ck = put(*cpu_, Shape{T, hk * D}, k);
    auto ctab = test::put_raw(*cpu_, DType::F32, Shape{max_pos, D}, table);
    auto cpos = test::put_raw(*cpu_, DType::I32, Shape{T}, pos);
    cpu_->rope(cq.t, ck.t, cpos.t, ctab.t, D);
    auto gq = put(*gpu_, Shape{T, hq * D}, q), gk = put(*gpu_, Shape{T, hk * D}, k);
    auto gtab = test::put_raw(*gpu_, DType::F32, Shape{max_pos, D}, table);
    auto gpos = test::put_raw(*gpu_, DType::I32, Shape{T}, pos);
    gpu_->rope(gq.t, gk.t, gpos.t, gtab.t, D);
    EXPECT_BF16_CLOSE(fetch(*gpu_, gq.t), fetch(*cpu_, cq.t));
    EXPECT_BF16_CLOSE(fetch(*gpu_, gk.t), fetch(*cpu_, ck.t));
  }
}

TEST_F(CudaOps, SiluMul) {
  for (int64_t F : {128, 100, 14336}) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE(where() << " F " << F << (alias ? " in place" : ""));
      const int64_t T = std::uniform_int_distribution<int64_t>(1, 20)(rng_);
      const auto g = random_bf16(static_cast<size_t>(T * F), rng_, 3.0f), u = random_bf16(g.size(), rng_);
      auto cg = put(*cpu_, Shape{T, F}, g), cu = put(*cpu_, Shape{T, F}, u);
      auto cout = test::make_tensor(*cpu_, DType::F32, Shape{T, F});
      cpu_->silu_mul(cg.t, cu.t, cout.t);
      auto gg = put(*gpu_, Shape{T, F}, g), gu = put(*gpu_, Shape{T, F}, u);
      auto gout = alias ? gg : poisoned(*gpu_, DType::BF16, Shape{T, F});
      gpu_->silu_mul(gg.t, gu.t, gout.t);
      EXPECT_BF16_CLOSE(fetch(*gpu_, gout.t), fetch(*cpu_, cout.t));
    }
  }
}

TEST_F(CudaOps, EmbeddingAndGatherRowsAreExact) {
  for (int64_t H : {64, 100}) {
    SCOPED_TRACE(where() << " H " << H);
    const int64_t V = 300, T = 17;
    const auto table = random_bf16(static_cast<size_t>(V * H), rng_);
    std::vector<int32_t> ids(static_cast<size_t>(T));
    for (auto& id : ids) id = std::uniform_int_distribution<int32_t>(0, V - 1)(rng_);
    const auto ctable = prepare(*cpu_, Shape{V, H}, table), gtable = prepare(*gpu_, Shape{V, H}, table, DType::BF16);
    test::Owned cids{nullptr, Tensor{ids.data(), DType::I32, Shape{T}, Device::Cpu}};
    auto cout = test::make_tensor(*cpu_, DType::F32, Shape{T, H});
    cpu_->embedding(cids.t, ctable.t, cout.t);
    const auto want = fetch(*cpu_, cout.t);
    // ids on the host (checked there) and on the device.
    auto gout = poisoned(*gpu_, DType::BF16, Shape{T, H});
    gpu_->embedding(cids.t, gtable.t, gout.t);
    EXPECT_EQ(fetch(*gpu_, gout.t), want);
    auto gids = test::put_raw(*gpu_, DType::I32, Shape{T}, ids);
    auto gout2 = poisoned(*gpu_, DType::BF16, Shape{T, H});
    gpu_->embedding(gids.t, gtable.t, gout2.t);
    EXPECT_EQ(fetch(*gpu_, gout2.t), want);

    std::vector<int32_t> rows = {static_cast<int32_t>(T - 1), 0, 5, 5};
    auto gsel = poisoned(*gpu_, DType::BF16, Shape{4, H});
    gpu_->gather_rows(gout.t, rows, gsel.t);
    const auto sel = fetch(*gpu_, gsel.t);
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t h = 0; h < H; ++h)
        ASSERT_EQ(sel[i * static_cast<size_t>(H) + static_cast<size_t>(h)], want[static_cast<size_t>(rows[i] * H + h)]);
  }
}

TEST_F(CudaOps, EmbeddingRejectsHostIdsOutsideTheVocabulary) {
  const auto table = random_bf16(10 * 64, rng_);
  const auto gtable = prepare(*gpu_, Shape{10, 64}, table, DType::BF16);
  std::vector<int32_t> ids = {3, 10};
  Tensor cids{ids.data(), DType::I32, Shape{2}, Device::Cpu};
  auto gout = poisoned(*gpu_, DType::BF16, Shape{2, 64});
  EXPECT_THROW(gpu_->embedding(cids, gtable.t, gout.t), Error);
}

}  // namespace
}  // namespace lserve
