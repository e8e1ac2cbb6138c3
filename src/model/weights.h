// ModelWeights: every parameter of a Llama-family model, in the backend's layout, loaded from
// an HF folder (checked against the config: names, shapes, dtypes) or made up at random for
// speed tests of shapes we have no files for (--load-format dummy).
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"

namespace lserve {

class WeightFiles;

struct LayerWeights {
  Tensor input_norm;                  // [H]
  Tensor q_proj, k_proj, v_proj;      // [Hq*D, H], [Hkv*D, H], [Hkv*D, H]
  Tensor q_bias, k_bias, v_bias;      // [Hq*D], [Hkv*D], [Hkv*D] or empty (Qwen2 only)
  Tensor q_norm, k_norm;              // [D] or empty (Qwen3 only)
  Tensor o_proj;                      // [H, Hq*D]
  Tensor post_attention_norm;         // [H]
  Tensor gate_proj, up_proj;          // [F, H]
  Tensor down_proj;                   // [H, F]
};

struct ModelWeights {
  Tensor embed_tokens;  // [V, H]
  Tensor final_norm;    // [H]
  Tensor lm_head;       // [V, H]; the embedding table itself when tied
  std::vector<LayerWeights> layers;

  size_t file_bytes = 0;      // bytes of the weights as stored
  size_t resident_bytes = 0;  // bytes the backend allocated for them (0 when used in place)
  // Keep-alives: the mapped files (for in-place views) and backend allocations.
  std::shared_ptr<WeightFiles> files;
  std::vector<std::shared_ptr<DeviceMemory>> memory;
};

enum class LoadFormat { Auto, Dummy };

// Loads the weights of `config` from model_dir's safetensors. Throws Error naming the file and
// tensor on anything missing or mis-shaped.
ModelWeights load_weights(const ModelConfig& config, const std::filesystem::path& model_dir, Backend& backend);

// Hands a host weight to the backend and records any memory it allocated in `w`.
Tensor prepare_into(Backend& backend, const Tensor& host, ModelWeights& w);

// Random weights (uniform, std 0.02; norms 1) of the config's shapes, stored as bf16 first so
// that they take the same preparation path as real bf16 weights. Deterministic in `seed`.
ModelWeights make_dummy_weights(const ModelConfig& config, Backend& backend, uint64_t seed);

}  // namespace lserve
