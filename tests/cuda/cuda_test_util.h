// Helpers of the CUDA backend tests: skipping without a GPU, fresh random seeds, bf16 rounding
// on the host, tensors on either backend, poisoned GPU outputs, and the relative error measure.
//
// The comparisons follow llama.cpp's test-backend-ops: the CPU backend (f32) computes each op on
// the very values the GPU sees (inputs rounded to bf16 first), and the GPU result must be within
// ||gpu - cpu|| / ||cpu|| < 1e-2, bf16's rounding (2^-9 relative per value) with room for
// accumulation. GPU outputs start as NaN (all bits set), so an element the op forgets to write
// fails the finiteness check.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/dtype.h"
#include "test_util.h"

namespace lserve::test {

#define LSERVE_SKIP_WITHOUT_GPU()                                                          \
  do {                                                                                     \
    if (::lserve::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU visible";          \
  } while (0)

inline constexpr double kBf16Tolerance = 1e-2;

// A seed drawn fresh for every run (printed by SCOPED_TRACE on failure, to replay it).
inline uint32_t fresh_seed() { return std::random_device{}(); }

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }
inline std::vector<float> bf16_rounded(std::vector<float> v) {
  for (auto& x : v) x = round_bf16(x);
  return v;
}
inline std::vector<float> random_bf16(size_t n, std::mt19937& rng, float scale = 1.0f) {
  return bf16_rounded(random_floats(n, rng, scale));
}

// A RoPE table as the model builds one ([max_pos, head_dim] f32: cos | sin, base 10000).
inline std::vector<float> rope_table(int64_t max_pos, int64_t head_dim) {
  std::vector<float> table(static_cast<size_t>(max_pos * head_dim));
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < head_dim / 2; ++i) {
      const double a =
          static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      table[static_cast<size_t>(p * head_dim + i)] = static_cast<float>(std::cos(a));
      table[static_cast<size_t>(p * head_dim + head_dim / 2 + i)] = static_cast<float>(std::sin(a));
    }
  return table;
}

// A tensor together with the memory that holds it.
struct Owned {
  std::shared_ptr<DeviceMemory> memory;
  Tensor t;
};

inline Owned make_tensor(Backend& b, DType dtype, Shape shape) {
  auto mem = b.allocate(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
  Tensor t = mem->view(dtype, shape, b.device());
  return {std::move(mem), t};
}

// The values on `b` in its compute dtype (f32 on the CPU, bf16 on the GPU).
inline Owned put(Backend& b, Shape shape, const std::vector<float>& v) {
  Owned o = make_tensor(b, b.compute_dtype(), shape);
  if (b.compute_dtype() == DType::F32) {
    b.upload(o.t, v.data());
  } else {
    std::vector<uint16_t> bits(v.size());
    for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16(v[i]);
    b.upload(o.t, bits.data());
  }
  return o;
}

template <typename T>
inline Owned put_raw(Backend& b, DType dtype, Shape shape, const std::vector<T>& v) {
  Owned o = make_tensor(b, dtype, shape);
  b.upload(o.t, v.data());
  return o;
}

// A GPU output whose every element starts as NaN.
inline Owned poisoned(Backend& b, DType dtype, Shape shape) {
  Owned o = make_tensor(b, dtype, shape);
  std::vector<uint8_t> ones(o.t.nbytes(), 0xff);
  b.upload(o.t, ones.data());
  return o;
}

inline std::vector<float> fetch(Backend& b, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F32) {
    b.download(t, out.data());
  } else {
    std::vector<uint16_t> bits(out.size());
    b.download(t, bits.data());
    convert_to_f32(bits.data(), t.dtype, out.data(), out.size());
  }
  return out;
}

// A weight as the model would hand it over: host values of `dtype`, prepared by the backend.
// The host copy stays alive in `host` (the CPU backend uses f32 weights in place).
struct Weight {
  std::shared_ptr<HostMemory> host;
  std::shared_ptr<DeviceMemory> keep;
  Tensor t;
};
inline Weight prepare(Backend& b, Shape shape, const std::vector<float>& v, DType dtype = DType::F32) {
  Weight w;
  w.host = std::make_shared<HostMemory>(v.size() * dtype_size(dtype));
  Tensor h{w.host->data(), dtype, shape, Device::Cpu};
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::F32) h.as<float>()[i] = v[i];
    else if (dtype == DType::BF16) h.as<uint16_t>()[i] = f32_to_bf16(v[i]);
    else h.as<uint16_t>()[i] = f32_to_f16(v[i]);
  }
  w.t = b.prepare_weight(h, &w.keep);
  return w;
}

struct Diff {
  double rel = 0;           // ||got - want|| / ||want||
  int64_t nonfinite = 0;    // elements of got that are NaN or inf (unwritten or broken)
};
inline Diff compare(const std::vector<float>& got, const std::vector<float>& want) {
  Diff d;
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++d.nonfinite;
      continue;
    }
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  d.rel = std::sqrt(num / std::max(den, 1e-300));
  return d;
}

#define EXPECT_BF16_CLOSE(got, want)                                                        \
  do {                                                                                      \
    const ::lserve::test::Diff d_ = ::lserve::test::compare((got), (want));                \
    EXPECT_EQ(d_.nonfinite, 0) << "elements not written (still NaN) or not finite";        \
    EXPECT_LT(d_.rel, ::lserve::test::kBf16Tolerance) << "relative error vs the f32 CPU op"; \
  } while (0)

}  // namespace lserve::test
