#include "model/generation_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"

namespace lserve {

GenerationConfig GenerationConfig::from_dir(const std::filesystem::path& dir) {
  GenerationConfig g;
  const auto path = dir / "generation_config.json";
  if (!std::filesystem::exists(path)) return g;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
    if (!j.is_object()) fail("{}: not a JSON object", path.string());
    if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
      if (it->is_array()) {
        for (const auto& v : *it) g.eos_token_ids.push_back(v.get<int32_t>());
      } else {
        g.eos_token_ids.push_back(it->get<int32_t>());
      }
    }
    auto opt = [&](const char* key, auto& out) {
      if (auto it = j.find(key); it != j.end() && !it->is_null()) out = it->get<typename std::decay_t<decltype(out)>::value_type>();
    };
    opt("bos_token_id", g.bos_token_id);
    opt("temperature", g.temperature);
    opt("top_p", g.top_p);
    opt("top_k", g.top_k);
    opt("min_p", g.min_p);
    opt("repetition_penalty", g.repetition_penalty);
    if (auto it = j.find("do_sample"); it != j.end() && it->is_boolean()) g.do_sample = it->get<bool>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", path.string(), e.what());
  }
  return g;
}

}  // namespace lserve
