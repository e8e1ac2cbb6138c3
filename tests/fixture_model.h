// A fixture model folder (tests/fixtures/models/*, models/tiny-llama) loaded on a backend, with
// a KV cache that holds its reference prompts and a generator over both. Shared by the CPU and
// GPU whole-model tests so they run the model the same way.
#pragma once

#include <algorithm>
#include <filesystem>

#include "engine/generator.h"
#include "model/llama_model.h"
#include "model/weights.h"

namespace lserve::test {

struct FixtureModel {
  ModelConfig config;
  LlamaModel model;
  KvCache cache;
  Generator gen;

  FixtureModel(const std::filesystem::path& dir, Backend& backend)
      : config(ModelConfig::from_file(dir / "config.json")),
        model(config, load_weights(config, dir, backend), backend,
              std::min<int64_t>(config.max_position_embeddings, 1024)),
        cache(config, cache_options(config, backend), backend),
        gen(model, cache, nullptr) {}

 private:
  // 16 pages of 64 tokens: the longest reference prompt plus its greedy continuation fits.
  static KvCacheOptions cache_options(const ModelConfig& config, const Backend& backend) {
    KvCacheOptions kv;
    kv.page_size = 64;
    kv.memory_bytes = KvCache::bytes_per_page(config, 64, backend.compute_dtype()) * 16;
    return kv;
  }
};

}  // namespace lserve::test
