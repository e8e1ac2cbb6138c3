// make_chat_renderer: the served model's chat template (chat_template.jinja, or the one in
// tokenizer_config.json / chat_template.json, found as Hugging Face finds it) as the function
// the API's request parser calls to turn messages into a prompt. Empty when the model has no
// template. Template errors (a raise_exception that rejects the conversation, a type error)
// throw ChatTemplateError, which the server answers with a 400.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <string>

namespace lserve::server {

using ChatRenderer = std::function<std::string(const nlohmann::json& messages, const nlohmann::json& options)>;

// Throws ChatTemplateError for a template that does not parse (refused at start-up, not at the
// first request) and Error for unreadable files.
ChatRenderer make_chat_renderer(const std::filesystem::path& model_dir);

}  // namespace lserve::server
