// Random weights for any config (--load-format dummy): speed tests of large shapes without files.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "model/parameter_layout.h"
#include "model/weights.h"

namespace lserve {

namespace {

// SplitMix64: fast, and good enough for weights that only need to be non-degenerate.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() {  // in [-1, 1)
    return static_cast<float>(static_cast<double>(next() >> 11) * 0x1.0p-52 - 1.0);
  }
};

void fill(Tensor host_bf16, bool is_norm, uint64_t seed) {
  auto* p = host_bf16.as<uint16_t>();
  const int64_t n = host_bf16.numel();
  if (is_norm) {
    std::fill(p, p + n, f32_to_bf16(1.0f));
    return;
  }
  constexpr float kHalfWidth = 0.0346410f;  // uniform with std 0.02: half-width 0.02 * sqrt(3)
  constexpr int64_t kChunk = 1 << 16;
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < (n + kChunk - 1) / kChunk; ++chunk) {
    SplitMix64 rng{seed * 0x100000001b3ull + static_cast<uint64_t>(chunk)};
    const int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) p[i] = f32_to_bf16(rng.uniform() * kHalfWidth);
  }
}

}  // namespace

ModelWeights make_dummy_weights(const ModelConfig& config, Backend& backend, uint64_t seed) {
  ModelWeights w;
  uint64_t index = 0;
  for_each_parameter(config, w, [&](const std::string& name, Shape shape, Tensor* out) {
    HostBuffer host(static_cast<size_t>(shape.numel()) * 2);
    Tensor t = host.view(DType::BF16, shape);
    fill(t, name.find("norm") != std::string::npos, seed + ++index);
    std::shared_ptr<DeviceMemory> keep;
    *out = backend.prepare_weight(t, &keep);
    if (keep) {
      w.resident_bytes += keep->size();
      w.memory.push_back(std::move(keep));
    } else {  // used in place: keep the host buffer alive as the weight's storage
      auto owned = std::make_shared<HostMemory>(std::move(host));
      w.resident_bytes += owned->size();
      w.memory.push_back(std::move(owned));
    }
    w.file_bytes += t.nbytes();
  });
  if (config.tie_word_embeddings) w.lm_head = w.embed_tokens;
  spdlog::info("made {:.1f} MiB of dummy weights", w.file_bytes / 1048576.0);
  return w;
}

}  // namespace lserve
