// Helpers shared by the unit tests: temporary folders, fixture paths, random data.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace lserve::test {

inline std::filesystem::path source_dir() { return LSERVE_SOURCE_DIR; }
inline std::filesystem::path fixture_models_dir() { return source_dir() / "tests" / "fixtures" / "models"; }
// The model folders shipped under models/ that hold `file` (config.json, reference.safetensors).
inline std::vector<std::filesystem::path> bundled_model_dirs(const std::string& file) {
  std::vector<std::filesystem::path> dirs;
  for (const char* name : {"tiny-llama", "lserve-tiny-16k"})
    if (std::filesystem::exists(source_dir() / "models" / name / file)) dirs.push_back(source_dir() / "models" / name);
  return dirs;
}

// Every model folder with HF reference logits (reference.safetensors): the fixtures under
// tests/fixtures/models in name order, then the bundled models.
inline std::vector<std::filesystem::path> reference_model_dirs() {
  std::vector<std::filesystem::path> dirs;
  if (std::filesystem::exists(fixture_models_dir()))
    for (const auto& e : std::filesystem::directory_iterator(fixture_models_dir()))
      if (std::filesystem::exists(e.path() / "reference.safetensors")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : bundled_model_dirs("reference.safetensors")) dirs.push_back(d);
  return dirs;
}

// A parameterized test's name for a model folder (gtest names allow no '-').
inline std::string model_test_name(const std::filesystem::path& dir) {
  std::string n = dir.filename().string();
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// The smallest shape worth paging: 2 layers, 4 query heads over 2 KV heads of dim 8.
inline ModelConfig tiny_kv_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.hidden_size = 32;
  return c;
}

// A fresh temporary folder, removed when the object goes.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("lserve-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& bytes) const {
    auto p = path_ / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }

 private:
  std::filesystem::path path_;
};

inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace lserve::test
