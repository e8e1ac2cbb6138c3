// ModelConfig: the architecture of a Llama-family model, read from an HF config.json.
// Covers Llama 2/3/3.1, Mistral, Qwen2 and Qwen3 (the differences are flags, not subclasses).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lserve {

enum class Architecture { Llama, Mistral, Qwen2, Qwen3 };

std::string_view architecture_name(Architecture arch);

// Position-interpolation schemes that long-context checkpoints put in config.json.
struct RopeScaling {
  enum class Type { None, Linear, Llama3, Yarn, Dynamic };
  Type type = Type::None;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // yarn's mscale on cos/sin, computed if absent
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;
};

struct ModelConfig {
  Architecture arch = Architecture::Llama;
  std::string architecture_string;  // as written, e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool qk_norm = false;         // per-head RMSNorm on q and k before RoPE (Qwen3)
  std::optional<int64_t> sliding_window;  // Mistral v0.1; null/absent on later models
  DType torch_dtype = DType::BF16;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t group_size() const { return num_heads / num_kv_heads; }
  // Parameters of the whole model (weights), for reporting and dummy weights.
  int64_t num_parameters() const;

  // Throws Error naming `source` for missing fields, unknown architectures, inconsistent shapes.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::filesystem::path& config_json);
  std::string summary() const;  // one line for logs
};

// The per-frequency inverse wavelengths RoPE rotates by, after any scaling, and the factor
// applied to cos/sin (yarn's attention factor; 1 otherwise). inv_freq has head_dim / 2 entries.
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_scale = 1.0f;
};
RopeTable compute_rope(const ModelConfig& config);

}  // namespace lserve
