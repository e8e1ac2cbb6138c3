#include "model/weights.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <functional>

#include "model/parameter_layout.h"
#include "model/safetensors.h"

namespace lserve {

namespace {

bool is_float(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

}  // namespace

void for_each_parameter(const ModelConfig& c, ModelWeights& w, const ParameterVisitor& visit) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  visit("model.embed_tokens.weight", Shape{c.vocab_size, H}, &w.embed_tokens);
  w.layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w.layers[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    visit(p + "input_layernorm.weight", Shape{H}, &l.input_norm);
    visit(p + "self_attn.q_proj.weight", Shape{c.q_dim(), H}, &l.q_proj);
    visit(p + "self_attn.k_proj.weight", Shape{c.kv_dim(), H}, &l.k_proj);
    visit(p + "self_attn.v_proj.weight", Shape{c.kv_dim(), H}, &l.v_proj);
    if (c.attention_bias) {
      visit(p + "self_attn.q_proj.bias", Shape{c.q_dim()}, &l.q_bias);
      visit(p + "self_attn.k_proj.bias", Shape{c.kv_dim()}, &l.k_bias);
      visit(p + "self_attn.v_proj.bias", Shape{c.kv_dim()}, &l.v_bias);
    }
    if (c.qk_norm) {
      visit(p + "self_attn.q_norm.weight", Shape{D}, &l.q_norm);
      visit(p + "self_attn.k_norm.weight", Shape{D}, &l.k_norm);
    }
    visit(p + "self_attn.o_proj.weight", Shape{H, c.q_dim()}, &l.o_proj);
    visit(p + "post_attention_layernorm.weight", Shape{H}, &l.post_attention_norm);
    visit(p + "mlp.gate_proj.weight", Shape{F, H}, &l.gate_proj);
    visit(p + "mlp.up_proj.weight", Shape{F, H}, &l.up_proj);
    visit(p + "mlp.down_proj.weight", Shape{H, F}, &l.down_proj);
  }
  visit("model.norm.weight", Shape{H}, &w.final_norm);
  if (!c.tie_word_embeddings) visit("lm_head.weight", Shape{c.vocab_size, H}, &w.lm_head);
}

Tensor prepare_into(Backend& backend, const Tensor& host, ModelWeights& w) {
  std::shared_ptr<DeviceMemory> keep;
  Tensor t = backend.prepare_weight(host, &keep);
  if (keep) {
    w.resident_bytes += keep->size();
    w.memory.push_back(std::move(keep));
  }
  return t;
}

ModelWeights load_weights(const ModelConfig& config, const std::filesystem::path& model_dir, Backend& backend) {
  const auto start = std::chrono::steady_clock::now();
  ModelWeights w;
  w.files = std::make_shared<WeightFiles>(WeightFiles::open(model_dir));
  const int64_t total = 2 + config.num_layers + (config.tie_word_embeddings ? 0 : 1);
  int64_t done = 0;
  auto last_report = start;
  for_each_parameter(config, w, [&](const std::string& name, Shape expected, Tensor* out) {
    const SafetensorsEntry& e = w.files->get(name);
    if (!is_float(e.dtype))
      fail("{}: tensor '{}' has dtype {}; weights must be F32, F16 or BF16", w.files->file_of(name), name,
           dtype_name(e.dtype));
    if (!(e.shape == expected))
      fail("{}: tensor '{}' has shape {}, but config.json implies {}", w.files->file_of(name), name,
           e.shape.str(), expected.str());
    Tensor host{const_cast<uint8_t*>(e.data), e.dtype, e.shape, Device::Cpu};
    *out = prepare_into(backend, host, w);
    w.file_bytes += e.nbytes;
    // Progress: one line per second of loading, counted in layers.
    if (name.ends_with("down_proj.weight") || name == "model.embed_tokens.weight" || name.ends_with("norm.weight")) {
      if (name.ends_with("down_proj.weight") || name == "model.embed_tokens.weight") ++done;
      const auto now = std::chrono::steady_clock::now();
      if (now - last_report > std::chrono::seconds(1)) {
        spdlog::info("loading weights: {}/{} parts, {:.0f} MiB", done, total, w.file_bytes / 1048576.0);
        last_report = now;
      }
    }
  });
  if (config.tie_word_embeddings) w.lm_head = w.embed_tokens;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("loaded {:.1f} MiB of weights in {:.2f} s ({:.1f} MiB resident after conversion)",
               w.file_bytes / 1048576.0, secs, w.resident_bytes / 1048576.0);
  return w;
}

}  // namespace lserve
