#include "model/model_config.h"

#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "core/mapped_file.h"

namespace lserve {

using nlohmann::json;

std::string_view architecture_name(Architecture arch) {
  switch (arch) {
    case Architecture::Llama: return "llama";
    case Architecture::Mistral: return "mistral";
    case Architecture::Qwen2: return "qwen2";
    case Architecture::Qwen3: return "qwen3";
  }
  return "?";
}

namespace {

// Reads a field, accepting null as absent; throws with the field's name on a wrong type.
template <typename T>
std::optional<T> get_opt(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", source, key, it->dump());
  }
}

template <typename T>
T get_req(const json& j, const char* key, const std::string& source) {
  auto v = get_opt<T>(j, key, source);
  if (!v) fail("{}: missing field '{}'", source, key);
  return *v;
}

Architecture parse_architecture(const json& j, const std::string& source, std::string* name) {
  std::string arch;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() &&
                                         (*it)[0].is_string()) {
    arch = (*it)[0].get<std::string>();
  } else if (auto mt = get_opt<std::string>(j, "model_type", source)) {
    arch = *mt;
  } else {
    fail("{}: neither 'architectures' nor 'model_type' says what the model is", source);
  }
  *name = arch;
  if (arch == "LlamaForCausalLM" || arch == "llama") return Architecture::Llama;
  if (arch == "MistralForCausalLM" || arch == "mistral") return Architecture::Mistral;
  if (arch == "Qwen2ForCausalLM" || arch == "qwen2") return Architecture::Qwen2;
  if (arch == "Qwen3ForCausalLM" || arch == "qwen3") return Architecture::Qwen3;
  fail("{}: unsupported architecture '{}' (supported: LlamaForCausalLM, MistralForCausalLM, "
       "Qwen2ForCausalLM, Qwen3ForCausalLM)",
       source, arch);
}

// HF writes RoPE settings two ways: `rope_scaling` (+ top-level `rope_theta`) in checkpoints
// made before transformers 5, and `rope_parameters` (holding rope_theta too) since.
void parse_rope(const json& j, const std::string& source, ModelConfig* c) {
  const json* params = nullptr;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (auto it = j.find(key); it != j.end() && !it->is_null()) {
      if (!it->is_object()) fail("{}: '{}' must be an object", source, key);
      params = &*it;
      break;
    }
  }
  if (auto theta = get_opt<double>(j, "rope_theta", source)) c->rope_theta = *theta;
  if (!params) return;
  const json& p = *params;
  if (auto theta = get_opt<double>(p, "rope_theta", source)) c->rope_theta = *theta;
  if (auto prf = get_opt<double>(p, "partial_rotary_factor", source); prf && *prf != 1.0)
    fail("{}: partial_rotary_factor {} is not supported", source, *prf);

  std::string type = get_opt<std::string>(p, "rope_type", source)
                         .value_or(get_opt<std::string>(p, "type", source).value_or("default"));
  RopeScaling& s = c->rope_scaling;
  auto factor = get_opt<double>(p, "factor", source);
  if (type == "default") {
    s.type = RopeScaling::Type::None;
    return;
  }
  if (type == "linear") {
    s.type = RopeScaling::Type::Linear;
    s.factor = factor.value_or(1.0);
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::Llama3;
    s.factor = get_req<double>(p, "factor", source);
    s.low_freq_factor = get_req<double>(p, "low_freq_factor", source);
    s.high_freq_factor = get_req<double>(p, "high_freq_factor", source);
    s.original_max_position_embeddings = get_req<int64_t>(p, "original_max_position_embeddings", source);
    if (s.high_freq_factor <= s.low_freq_factor)
      fail("{}: llama3 rope scaling needs high_freq_factor > low_freq_factor", source);
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::Yarn;
    s.original_max_position_embeddings =
        get_opt<int64_t>(p, "original_max_position_embeddings", source).value_or(c->max_position_embeddings);
    // Without a factor, yarn's factor is the ratio of the new to the original window.
    s.factor = factor.value_or(static_cast<double>(c->max_position_embeddings) /
                               static_cast<double>(s.original_max_position_embeddings));
    if (auto v = get_opt<double>(p, "beta_fast", source); v && *v != 0) s.beta_fast = *v;
    if (auto v = get_opt<double>(p, "beta_slow", source); v && *v != 0) s.beta_slow = *v;
    s.attention_factor = get_opt<double>(p, "attention_factor", source);
    s.mscale = get_opt<double>(p, "mscale", source);
    s.mscale_all_dim = get_opt<double>(p, "mscale_all_dim", source);
    s.truncate = get_opt<bool>(p, "truncate", source).value_or(true);
  } else if (type == "dynamic") {
    // Dynamic NTK changes the frequencies with the sequence length, which makes cached keys
    // inconsistent; no checkpoint of the supported families needs it.
    fail("{}: rope scaling type 'dynamic' is not supported (keys in a KV cache would go stale)", source);
  } else {
    fail("{}: unsupported rope scaling type '{}' (supported: linear, llama3, yarn)", source, type);
  }
  if (s.factor <= 0) fail("{}: rope scaling factor must be positive", source);
}

std::vector<int64_t> parse_token_ids(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  if (it->is_array()) {
    std::vector<int64_t> ids;
    for (const auto& v : *it) {
      if (!v.is_number_integer()) fail("{}: '{}' must hold integers", source, key);
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  fail("{}: '{}' must be an integer or a list of integers", source, key);
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: not a JSON object", source);
  // Multimodal wrappers nest the language model's config; we accept only text models here.
  ModelConfig c;
  c.arch = parse_architecture(j, source, &c.architecture_string);
  c.vocab_size = get_req<int64_t>(j, "vocab_size", source);
  c.hidden_size = get_req<int64_t>(j, "hidden_size", source);
  c.intermediate_size = get_req<int64_t>(j, "intermediate_size", source);
  c.num_layers = get_req<int64_t>(j, "num_hidden_layers", source);
  c.num_heads = get_req<int64_t>(j, "num_attention_heads", source);
  c.num_kv_heads = get_opt<int64_t>(j, "num_key_value_heads", source).value_or(c.num_heads);
  if (c.num_heads <= 0 || c.hidden_size <= 0 || c.vocab_size <= 0 || c.num_layers <= 0 ||
      c.intermediate_size <= 0 || c.num_kv_heads <= 0)
    fail("{}: sizes must be positive", source);
  c.head_dim = get_opt<int64_t>(j, "head_dim", source).value_or(c.hidden_size / c.num_heads);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) fail("{}: head_dim {} must be positive and even", source, c.head_dim);
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source, c.num_heads,
         c.num_kv_heads);
  c.rms_norm_eps = get_opt<double>(j, "rms_norm_eps", source).value_or(1e-6);
  c.max_position_embeddings = get_opt<int64_t>(j, "max_position_embeddings", source).value_or(4096);
  c.tie_word_embeddings = get_opt<bool>(j, "tie_word_embeddings", source).value_or(false);
  c.attention_bias = get_opt<bool>(j, "attention_bias", source).value_or(c.arch == Architecture::Qwen2);
  c.qk_norm = c.arch == Architecture::Qwen3;
  if (c.arch == Architecture::Mistral) {
    c.sliding_window = get_opt<int64_t>(j, "sliding_window", source);
  } else if (get_opt<bool>(j, "use_sliding_window", source).value_or(false)) {
    c.sliding_window = get_opt<int64_t>(j, "sliding_window", source);
  }
  parse_rope(j, source, &c);
  auto dt = get_opt<std::string>(j, "torch_dtype", source);
  if (!dt) dt = get_opt<std::string>(j, "dtype", source);  // transformers 5 renamed the field
  if (dt) {
    if (*dt == "float32") c.torch_dtype = DType::F32;
    else if (*dt == "float16") c.torch_dtype = DType::F16;
    else if (*dt == "bfloat16") c.torch_dtype = DType::BF16;
  }
  if (auto bos = get_opt<int64_t>(j, "bos_token_id", source)) c.bos_token_id = *bos;
  c.eos_token_ids = parse_token_ids(j, "eos_token_id", source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  const std::string text = read_text_file(config_json);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", config_json.string(), e.what());
  }
  return from_json(j, config_json.string());
}

int64_t ModelConfig::num_parameters() const {
  const int64_t attn = hidden_size * (q_dim() + 2 * kv_dim()) + q_dim() * hidden_size +
                       (attention_bias ? q_dim() + 2 * kv_dim() : 0) + (qk_norm ? 2 * head_dim : 0);
  const int64_t mlp = 3 * hidden_size * intermediate_size;
  const int64_t per_layer = attn + mlp + 2 * hidden_size;
  const int64_t embed = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_layers * per_layer + embed + hidden_size;
}

std::string ModelConfig::summary() const {
  return fmt::format("{} ({}): {} layers, hidden {}, heads {}/{} kv, head_dim {}, ffn {}, vocab {}, "
                     "{:.1f}M params, max_pos {}",
                     architecture_string, architecture_name(arch), num_layers, hidden_size, num_heads,
                     num_kv_heads, head_dim, intermediate_size, vocab_size, num_parameters() / 1e6,
                     max_position_embeddings);
}

RopeTable compute_rope(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  const int64_t half = dim / 2;
  const RopeScaling& s = c.rope_scaling;
  RopeTable table;
  table.inv_freq.resize(static_cast<size_t>(half));
  // HF computes the base frequencies in f32; doing the same keeps logits bit-close at long range.
  std::vector<float> base(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    base[i] = 1.0f / std::pow(static_cast<float>(c.rope_theta), exponent);
  }
  switch (s.type) {
    case RopeScaling::Type::None:
    case RopeScaling::Type::Dynamic:
      table.inv_freq = base;
      break;
    case RopeScaling::Type::Linear:
      for (int64_t i = 0; i < half; ++i) table.inv_freq[i] = base[i] / static_cast<float>(s.factor);
      break;
    case RopeScaling::Type::Llama3: {
      // Long wavelengths are interpolated by `factor`, short ones kept, the band between blended.
      const double old_len = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / s.low_freq_factor;
      const double high_freq_wavelen = old_len / s.high_freq_factor;
      for (int64_t i = 0; i < half; ++i) {
        const double f = base[i];
        const double wavelen = 2 * std::numbers::pi / f;
        double out;
        if (wavelen < high_freq_wavelen) {
          out = f;
        } else if (wavelen > low_freq_wavelen) {
          out = f / s.factor;
        } else {
          const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          out = (1 - smooth) * f / s.factor + smooth * f;
        }
        table.inv_freq[i] = static_cast<float>(out);
      }
      break;
    }
    case RopeScaling::Type::Yarn: {
      auto get_mscale = [](double scale, double mscale) {
        return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
      };
      double attention_factor;
      if (s.attention_factor) {
        attention_factor = *s.attention_factor;
      } else if (s.mscale && s.mscale_all_dim && *s.mscale != 0 && *s.mscale_all_dim != 0) {
        attention_factor = get_mscale(s.factor, *s.mscale) / get_mscale(s.factor, *s.mscale_all_dim);
      } else {
        attention_factor = get_mscale(s.factor, 1.0);
      }
      const double theta = c.rope_theta;
      const double orig = static_cast<double>(s.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return (static_cast<double>(dim) * std::log(orig / (rotations * 2 * std::numbers::pi))) /
               (2 * std::log(theta));
      };
      double low = correction_dim(s.beta_fast);
      double high = correction_dim(s.beta_slow);
      if (s.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // avoid a zero-width ramp
      for (int64_t i = 0; i < half; ++i) {
        const float ramp = std::clamp(static_cast<float>((static_cast<double>(i) - low) / (high - low)), 0.0f, 1.0f);
        const float extrapolation = 1.0f - ramp;
        const float interp = base[i] / static_cast<float>(s.factor);
        table.inv_freq[i] = interp * (1.0f - extrapolation) + base[i] * extrapolation;
      }
      table.attention_scale = static_cast<float>(attention_factor);
      break;
    }
  }
  return table;
}

}  // namespace lserve
