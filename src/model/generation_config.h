// GenerationConfig: the defaults a checkpoint ships in generation_config.json (end-of-sequence
// ids, sampling defaults). Absent file or fields simply leave the defaults empty.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

namespace lserve {

struct GenerationConfig {
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> bos_token_id;
  bool do_sample = false;
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int32_t> top_k;

  // Reads dir/generation_config.json if present; throws Error naming the file if it is malformed.
  static GenerationConfig from_dir(const std::filesystem::path& dir);
};

}  // namespace lserve
