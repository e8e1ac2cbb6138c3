#include "server/chat_renderer.h"

#include <memory>

#include "model/chat_template/chat_template.h"

namespace lserve::server {

ChatRenderer make_chat_renderer(const std::filesystem::path& model_dir) {
  auto found = ModelChatTemplates::from_dir(model_dir);
  if (!found) return {};
  auto templates = std::make_shared<const ModelChatTemplates>(std::move(*found));
  return [templates](const nlohmann::json& messages, const nlohmann::json& options) {
    const auto tools = options.find("tools");
    const bool has_tools = tools != options.end() && !tools->is_null();
    return templates->pick(has_tools).render(messages, options);
  };
}

}  // namespace lserve::server
