// config.json parsing (both rope key spellings, every supported scaling) and RoPE frequencies.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "model/model_config.h"

namespace lserve {
namespace {

nlohmann::json base_config() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 4096})");
}

TEST(ModelConfig, ParsesLlama) {
  const auto c = ModelConfig::from_json(base_config(), "config.json");
  EXPECT_EQ(c.arch, Architecture::Llama);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.group_size(), 2);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_FALSE(c.attention_bias);
}

TEST(ModelConfig, QwenFlags) {
  auto j = base_config();
  j["architectures"] = {"Qwen2ForCausalLM"};
  EXPECT_TRUE(ModelConfig::from_json(j, "c").attention_bias);
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["head_dim"] = 32;
  const auto c = ModelConfig::from_json(j, "c");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);
}

TEST(ModelConfig, ReadsRopeScalingUnderEitherKey) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto j = base_config();
    j[key] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
              {"original_max_position_embeddings", 256}};
    if (std::string(key) == "rope_parameters") j[key]["rope_theta"] = 500000.0;
    const auto c = ModelConfig::from_json(j, "c");
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3) << key;
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 256);
  }
  auto j = base_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};  // the older "type" spelling
  EXPECT_EQ(ModelConfig::from_json(j, "c").rope_scaling.type, RopeScaling::Type::Linear);
}

TEST(ModelConfig, ClearErrors) {
  auto j = base_config();
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_THROW(ModelConfig::from_json(j, "c"), Error);
  j = base_config();
  j.erase("hidden_size");
  try {
    ModelConfig::from_json(j, "my/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "my/config.json: missing field 'hidden_size'");
  }
  j = base_config();
  j["num_key_value_heads"] = 3;
  EXPECT_THROW(ModelConfig::from_json(j, "c"), Error);
  j = base_config();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  EXPECT_THROW(ModelConfig::from_json(j, "c"), Error);
  j = base_config();
  j["hidden_size"] = "64";
  EXPECT_THROW(ModelConfig::from_json(j, "c"), Error);
}

TEST(Rope, Llama3KeepsHighFrequenciesAndScalesLowOnes) {
  auto j = base_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 256}};
  const auto c = ModelConfig::from_json(j, "c");
  const auto plain = compute_rope(ModelConfig::from_json(base_config(), "c"));
  const auto scaled = compute_rope(c);
  ASSERT_EQ(scaled.inv_freq.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    const double wavelen = 2 * std::numbers::pi / plain.inv_freq[i];
    if (wavelen < 256.0 / 4) {
      EXPECT_FLOAT_EQ(scaled.inv_freq[i], plain.inv_freq[i]);
    } else if (wavelen > 256.0) {
      EXPECT_FLOAT_EQ(scaled.inv_freq[i], plain.inv_freq[i] / 8);
    }
  }
  EXPECT_EQ(scaled.attention_scale, 1.0f);
}

TEST(Rope, YarnAttentionFactor) {
  auto j = base_config();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 1024}};
  const auto r = compute_rope(ModelConfig::from_json(j, "c"));
  EXPECT_NEAR(r.attention_scale, 0.1 * std::log(4.0) + 1.0, 1e-6);
  const auto plain = compute_rope(ModelConfig::from_json(base_config(), "c"));
  EXPECT_FLOAT_EQ(r.inv_freq[0], plain.inv_freq[0]);           // fastest rotation: extrapolated
  EXPECT_FLOAT_EQ(r.inv_freq[7], plain.inv_freq[7] / 4.0f);    // slowest: interpolated
}

}  // namespace
}  // namespace lserve
