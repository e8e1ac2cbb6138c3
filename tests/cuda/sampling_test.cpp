// Sampling on the GPU (Backend::sample, backend/cuda/sampling.h) against a plain host reference
// of the same semantics that sorts the vocabulary: greedy rows must give the host's argmax
// (lowest id on ties, NaN ignored); every sampled row must give the token the reference picks
// with the same uniform (read back from the device), and over many draws the frequencies must
// follow the filtered distribution; rows a draw cannot weigh (an infinite logit, a temperature
// whose inverse overflows) give the argmax. Fresh random logits each run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "backend/cuda/sampling.h"
#include "cuda_test_util.h"

namespace lserve {
namespace {

float clean(float l) { return std::isnan(l) ? -INFINITY : l; }
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
uint64_t fixed_mass(float e) { return static_cast<uint64_t>(std::ldexp(e, cuda::kSamplingMassBits)); }

// The semantics of sampling.h, by sorting. Returns the kept ids and their masses, in id order.
struct Kept {
  std::vector<int32_t> ids;
  std::vector<uint64_t> mass;
  int32_t greedy = -1;  // set when the row needs no draw
};

Kept reference_kept(const float* l, int64_t V, const DeviceSampling& p) {
  Kept k;
  float best = -INFINITY;
  int64_t best_i = 0;
  for (int64_t i = 0; i < V; ++i)
    if (clean(l[i]) > best) best = clean(l[i]), best_i = i;
  if (best == -INFINITY || best == INFINITY || !(p.temperature > 0.0f) || p.top_k == 1 ||
      !std::isfinite(1.0f / p.temperature)) {
    k.greedy = static_cast<int32_t>(best == -INFINITY ? 0 : best_i);
    return k;
  }
  const float inv_t = 1.0f / p.temperature;
  std::vector<float> e(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) e[static_cast<size_t>(i)] = std::exp((clean(l[i]) - best) * inv_t);
  std::vector<float> sorted = e;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  uint32_t floor_bits = 0;
  if (p.top_k > 0 && p.top_k < V) floor_bits = bits_of(sorted[static_cast<size_t>(p.top_k - 1)]);
  auto mass_above = [&](uint32_t fb) {
    uint64_t m = 0;
    for (float x : e)
      if (bits_of(x) >= fb) m += fixed_mass(x);
    return m;
  };
  const uint64_t z = mass_above(floor_bits);
  if (p.min_p > 0.0f) floor_bits = std::max(floor_bits, bits_of(std::min(p.min_p, 1.0f)));
  if (p.top_p < 1.0f) {
    uint64_t target = static_cast<uint64_t>(static_cast<double>(p.top_p) * static_cast<double>(z));
    if (target == 0) target = 1;
    if (mass_above(floor_bits) >= target) {
      uint64_t acc = 0;
      for (float x : sorted) {
        if (bits_of(x) < floor_bits) break;
        acc += fixed_mass(x);
        if (acc >= target) {
          floor_bits = std::max(floor_bits, bits_of(x));
          break;
        }
      }
    }
  }
  for (int64_t i = 0; i < V; ++i) {
    if (bits_of(e[static_cast<size_t>(i)]) < floor_bits) continue;
    k.ids.push_back(static_cast<int32_t>(i));
    k.mass.push_back(fixed_mass(e[static_cast<size_t>(i)]));
  }
  return k;
}

int32_t reference_draw(const Kept& k, double uniform) {
  if (k.greedy >= 0) return k.greedy;
  const uint64_t total = std::accumulate(k.mass.begin(), k.mass.end(), uint64_t{0});
  uint64_t u = static_cast<uint64_t>(uniform * static_cast<double>(total));
  if (u >= total) u = total - 1;
  uint64_t acc = 0;
  for (size_t i = 0; i < k.ids.size(); ++i)
    if ((acc += k.mass[i]) > u) return k.ids[i];
  return k.ids.back();
}

class CudaSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    LSERVE_SKIP_WITHOUT_GPU();
    seed_ = test::fresh_seed();
    rng_.seed(seed_);
    gpu_ = make_cuda_backend(0);
  }

  // The tokens the GPU draws for rows of `logits` ([R, V]) under `rows`, and the uniforms used.
  std::vector<int32_t> draw(const std::vector<float>& logits, int64_t V, const std::vector<DeviceSampling>& rows,
                            std::vector<double>* uniforms = nullptr) {
    const auto R = static_cast<int64_t>(rows.size());
    test::Owned l = test::put_raw(*gpu_, DType::F32, Shape{R, V}, logits);
    test::Owned t = test::poisoned(*gpu_, DType::I32, Shape{R});
    gpu_->set_sampling(rows);
    gpu_->sample(l.t, t.t);
    std::vector<int32_t> tokens(static_cast<size_t>(R));
    gpu_->download(t.t, tokens.data());
    if (uniforms) {
      test::Owned params = test::put_raw(*gpu_, DType::U8, Shape{static_cast<int64_t>(rows.size() * sizeof(DeviceSampling))},
                                         std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(rows.data()),
                                                              reinterpret_cast<const uint8_t*>(rows.data() + rows.size())));
      test::Owned u = test::make_tensor(*gpu_, DType::F64, Shape{R});
      cuda::sampling_uniforms(static_cast<const cuda::SamplingRow*>(params.t.data), R, static_cast<double*>(u.t.data),
                              cuda_stream_of(*gpu_));
      uniforms->resize(static_cast<size_t>(R));
      gpu_->download(u.t, uniforms->data());
    }
    return tokens;
  }

  std::vector<float> random_logits(int64_t R, int64_t V, float scale) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> l(static_cast<size_t>(R * V));
    for (float& x : l) x = normal(rng_);
    return l;
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::unique_ptr<Backend> gpu_;
};

TEST_F(CudaSampling, GreedyIsTheArgmax) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  for (const int64_t V : {1, 7, 1000, 128256}) {
    const int64_t R = 9;
    auto logits = random_logits(R, V, 3.0f);
    // Ties (the lower id wins), NaN (ignored), -inf, and a row of nothing but -inf.
    if (V > 5) {
      logits[static_cast<size_t>(1 * V + 2)] = logits[static_cast<size_t>(1 * V + 4)] = 100.0f;
      logits[static_cast<size_t>(2 * V + 0)] = NAN;
      logits[static_cast<size_t>(2 * V + 3)] = INFINITY;
    }
    std::fill(logits.begin() + 3 * V, logits.begin() + 4 * V, -INFINITY);
    std::vector<DeviceSampling> rows(static_cast<size_t>(R));
    rows[5].temperature = 0.7f, rows[5].top_k = 1;  // top-k 1 is greedy too
    rows[2].temperature = 0.8f;                      // an infinite logit: nothing to weigh, its argmax
    rows[6].temperature = 1e-39f;                    // 1 / t overflows: the argmax too
    const auto got = draw(logits, V, rows);
    for (int64_t r = 0; r < R; ++r) {
      const int32_t want = reference_draw(reference_kept(logits.data() + r * V, V, rows[static_cast<size_t>(r)]), 0.5);
      EXPECT_EQ(got[static_cast<size_t>(r)], want) << "vocab " << V << " row " << r;
    }
    if (V > 5) {
      EXPECT_EQ(got[1], 2) << "ties go to the lowest id";
    }
  }
}

TEST_F(CudaSampling, DrawsWhatTheReferenceDrawsWithTheSameUniform) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  const std::vector<DeviceSampling> kinds = {
      {1.0f, 0, 1.0f, 0.0f, 1, 0},     {0.7f, 40, 1.0f, 0.0f, 2, 0},  {1.3f, 0, 0.9f, 0.0f, 3, 0},
      {0.8f, 0, 1.0f, 0.05f, 4, 0},    {0.9f, 50, 0.95f, 0.02f, 5, 0}, {2.0f, 3, 0.5f, 0.0f, 6, 0},
      {1.0f, 100000, 0.3f, 0.0f, 7, 0}, {0.5f, 0, 0.999f, 0.3f, 8, 0},
  };
  int64_t compared = 0, mismatches = 0;
  for (const int64_t V : {32, 5000, 151936}) {
    const int64_t R = 48;
    const auto logits = random_logits(R, V, V > 1000 ? 2.5f : 1.5f);
    std::vector<DeviceSampling> rows;
    for (int64_t r = 0; r < R; ++r) {
      DeviceSampling d = kinds[static_cast<size_t>(r) % kinds.size()];
      d.seed = rng_();
      d.counter = static_cast<uint64_t>(r);
      rows.push_back(d);
    }
    std::vector<double> uniforms;
    const auto got = draw(logits, V, rows, &uniforms);
    for (int64_t r = 0; r < R; ++r) {
      const Kept k = reference_kept(logits.data() + r * V, V, rows[static_cast<size_t>(r)]);
      const int32_t want = reference_draw(k, uniforms[static_cast<size_t>(r)]);
      ++compared;
      if (got[static_cast<size_t>(r)] != want) {
        ++mismatches;
        ADD_FAILURE() << "vocab " << V << " row " << r << ": drew " << got[static_cast<size_t>(r)] << ", the reference "
                      << want << " (" << k.ids.size() << " kept)";
      }
    }
  }
  std::printf("  %lld draws compared, %lld differ\n", static_cast<long long>(compared),
              static_cast<long long>(mismatches));
}

TEST_F(CudaSampling, FrequenciesFollowTheFilteredDistribution) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  const int64_t V = 40, N = 40000;
  const auto one = random_logits(1, V, 1.5f);
  std::vector<float> logits;
  for (int64_t i = 0; i < N; ++i) logits.insert(logits.end(), one.begin(), one.end());
  DeviceSampling d{0.9f, 20, 0.9f, 0.01f, rng_(), 0};
  std::vector<DeviceSampling> rows(static_cast<size_t>(N), d);
  for (int64_t i = 0; i < N; ++i) rows[static_cast<size_t>(i)].counter = static_cast<uint64_t>(i);
  const auto got = draw(logits, V, rows);
  const Kept k = reference_kept(one.data(), V, d);
  const double total = static_cast<double>(std::accumulate(k.mass.begin(), k.mass.end(), uint64_t{0}));
  std::vector<int64_t> count(static_cast<size_t>(V), 0);
  for (int32_t t : got) {
    ASSERT_TRUE(t >= 0 && t < V);
    ++count[static_cast<size_t>(t)];
  }
  for (int64_t t = 0; t < V; ++t) {
    const auto it = std::find(k.ids.begin(), k.ids.end(), static_cast<int32_t>(t));
    if (it == k.ids.end()) {
      EXPECT_EQ(count[static_cast<size_t>(t)], 0) << "token " << t << " was filtered out";
      continue;
    }
    const double p = static_cast<double>(k.mass[static_cast<size_t>(it - k.ids.begin())]) / total;
    const double sigma = std::sqrt(p * (1 - p) / static_cast<double>(N));
    EXPECT_NEAR(static_cast<double>(count[static_cast<size_t>(t)]) / static_cast<double>(N), p, 5 * sigma + 1e-4)
        << "token " << t;
  }
  // The same (seed, counter) draws the same token; the whole batch again gives the same tokens.
  EXPECT_EQ(draw(logits, V, rows), got);
}

}  // namespace
}  // namespace lserve
