// ChatTemplate: renders a conversation into the prompt text a model was trained on, from the
// Jinja chat template that ships with it, the way Hugging Face's apply_chat_template(tokenize=False)
// does: same Jinja semantics (jinja2 with trim_blocks and lstrip_blocks), same variables
// (messages, tools, documents, add_generation_prompt, the special tokens, extra options), same
// helpers (raise_exception, strftime_now, a tojson that keeps key order and non-ASCII text).
//
// The template is parsed once; render() is const and thread-safe.
#pragma once

#include <nlohmann/json.hpp>

#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/chat_template/jinja_error.h"

namespace lserve {

// Template failures: ChatTemplateError for a broken template or a render that fails (a type error,
// an undefined value used); ChatTemplateRaised when the template called raise_exception(msg) to
// reject the request, with what() exactly msg.
using ChatTemplateError = jinja::TemplateError;
using ChatTemplateRaised = jinja::RaisedException;

namespace jinja {
struct Node;
}

// What strftime_now() formats: the local time, broken down. Injectable so tests are deterministic.
using ChatClock = std::function<std::tm()>;

class ChatTemplate {
 public:
  // Parses `source`; throws ChatTemplateError "chat template line N: ..." on a syntax error or an
  // unknown filter or test. special_tokens are the template variables named after the tokenizer's
  // special tokens (bos_token, eos_token, ...): a JSON object of strings.
  explicit ChatTemplate(std::string_view source, nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());
  ChatTemplate(std::string_view source, std::optional<std::string> bos_token, std::optional<std::string> eos_token);

  // `messages`: an array of {role, content, ...}; content may be a string or a list of parts.
  // `options`: add_generation_prompt (default false), tools and documents (default None), and any
  // other key, each passed to the template as a variable (enable_thinking, custom date_string...),
  // overriding the special tokens, like apply_chat_template's **kwargs.
  // Use ordered_json so that tool schemas print with their keys in the order the client sent.
  std::string render(const nlohmann::ordered_json& messages,
                     const nlohmann::ordered_json& options = nlohmann::ordered_json::object()) const;
  // The same from nlohmann::json, whose objects are sorted by key (the order a template's tojson shows).
  std::string render(const nlohmann::json& messages, const nlohmann::json& options) const;

  void set_clock(ChatClock clock) { clock_ = std::move(clock); }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<const std::vector<std::unique_ptr<jinja::Node>>> body_;
  nlohmann::ordered_json special_tokens_;
  ChatClock clock_;
};

// The template variables named after the special tokens in dir/tokenizer_config.json (bos_token,
// eos_token, ...: the ones that are set, as Hugging Face's special_tokens_map); {} without the file.
nlohmann::ordered_json chat_special_tokens(const std::filesystem::path& dir);

// The chat templates of a model folder, found as Hugging Face finds them: chat_template.jinja if
// present, else tokenizer_config.json's "chat_template" (a string, or a list of {name, template}
// where "default" is the default and "tool_use" the one for requests with tools), else
// chat_template.json's "chat_template". Special tokens come from tokenizer_config.json.
struct ModelChatTemplates {
  ChatTemplate default_template;
  std::optional<ChatTemplate> tool_use;
  std::vector<std::string> names;  // every named template the folder offers

  // The template Hugging Face would pick: tool_use for a request with tools when there is one.
  const ChatTemplate& pick(bool has_tools) const {
    return has_tools && tool_use ? *tool_use : default_template;
  }

  // nullopt when the folder has no chat template; throws ChatTemplateError for a broken one and
  // Error for unreadable or malformed files.
  static std::optional<ModelChatTemplates> from_dir(const std::filesystem::path& dir);
};

}  // namespace lserve
