// ChatTemplate: the variables and helpers Hugging Face gives a chat template, and finding a model
// folder's templates (see chat_template.h).
#include "model/chat_template/chat_template.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include "model/chat_template/jinja_builtins.h"
#include "model/chat_template/jinja_interpreter.h"
#include "model/chat_template/jinja_parser.h"

namespace lserve {

namespace {

std::tm local_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&t, &tm);
  return tm;
}

// Python's time.strftime in the C locale, which is what datetime.now().strftime gives.
std::string format_time(const std::string& format, const std::tm& tm) {
  if (format.empty()) return "";
  std::string buf(format.size() * 4 + 64, '\0');
  for (int attempt = 0; attempt < 8; ++attempt) {
    const size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &tm);
    if (n > 0) return buf.substr(0, n);
    buf.resize(buf.size() * 4);
  }
  return "";
}

std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) fail("{}: cannot read", path.string());
  return ss.str();
}

nlohmann::ordered_json read_json(const std::filesystem::path& path) {
  const auto text = read_file(path);
  if (!text) return nullptr;
  try {
    return nlohmann::ordered_json::parse(*text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// A special token in tokenizer_config.json: a string, or an AddedToken object with "content".
std::optional<std::string> token_text(const nlohmann::ordered_json& t) {
  if (t.is_string()) return t.get<std::string>();
  if (t.is_object() && t.contains("content") && t["content"].is_string()) return t["content"].get<std::string>();
  return std::nullopt;
}

// What Hugging Face's special_tokens_map holds: the tokens that are set.
nlohmann::ordered_json special_tokens_of(const nlohmann::ordered_json& config) {
  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
  if (!config.is_object()) return tokens;
  for (const char* name : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!config.contains(name)) continue;
    if (auto text = token_text(config[name])) tokens[name] = *text;
  }
  if (config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array()) {
    nlohmann::ordered_json extra = nlohmann::ordered_json::array();
    for (const auto& t : config["additional_special_tokens"])
      if (auto text = token_text(t)) extra.push_back(*text);
    tokens["additional_special_tokens"] = std::move(extra);
  }
  return tokens;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string_view source, nlohmann::ordered_json special_tokens)
    : source_(source),
      body_(std::make_shared<const jinja::Body>(jinja::parse_template(source))),
      special_tokens_(std::move(special_tokens)),
      clock_(local_now) {
  if (!special_tokens_.is_object()) fail("chat template: special tokens must be a JSON object");
}

ChatTemplate::ChatTemplate(std::string_view source, std::optional<std::string> bos_token,
                           std::optional<std::string> eos_token)
    : ChatTemplate(source, [&] {
        nlohmann::ordered_json t = nlohmann::ordered_json::object();
        if (bos_token) t["bos_token"] = *bos_token;
        if (eos_token) t["eos_token"] = *eos_token;
        return t;
      }()) {}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& options) const {
  if (!messages.is_array()) fail("chat template: messages must be a JSON array");
  if (!options.is_object()) fail("chat template: options must be a JSON object");
  using jinja::Value;
  std::vector<std::pair<std::string, Value>> variables;
  for (const auto& [k, v] : special_tokens_.items()) variables.emplace_back(k, Value::from_json(v));
  variables.emplace_back("messages", Value::from_json(messages));
  variables.emplace_back("tools", Value::none());
  variables.emplace_back("documents", Value::none());
  variables.emplace_back("add_generation_prompt", Value(false));
  for (const auto& [k, v] : options.items()) {
    auto it = std::find_if(variables.begin(), variables.end(), [&](const auto& var) { return var.first == k; });
    if (it != variables.end()) it->second = Value::from_json(v);
    else variables.emplace_back(k, Value::from_json(v));
  }
  auto globals = jinja::builtin_globals();
  const ChatClock clock = clock_;
  globals.emplace_back("strftime_now", Value::callable("strftime_now", [clock](jinja::Interpreter&, jinja::CallArgs& args) {
    const auto a = jinja::bind_args("strftime_now", args, {"format"});
    if (!a[0].is_string()) throw jinja::TemplateError("strftime_now() expects a format string");
    return Value(format_time(a[0].str(), clock()));
  }));
  return jinja::Interpreter::render(*body_, globals, variables);
}

std::string ChatTemplate::render(const nlohmann::json& messages, const nlohmann::json& options) const {
  return render(nlohmann::ordered_json::parse(messages.dump()), nlohmann::ordered_json::parse(options.dump()));
}

nlohmann::ordered_json chat_special_tokens(const std::filesystem::path& dir) {
  return special_tokens_of(read_json(dir / "tokenizer_config.json"));
}

std::optional<ModelChatTemplates> ModelChatTemplates::from_dir(const std::filesystem::path& dir) {
  const nlohmann::ordered_json config = read_json(dir / "tokenizer_config.json");
  const nlohmann::ordered_json tokens = special_tokens_of(config);
  const std::string config_name = (dir / "tokenizer_config.json").string();

  std::optional<std::string> default_source;
  std::optional<std::string> tool_use_source;
  std::vector<std::string> names;
  if (auto jinja_file = read_file(dir / "chat_template.jinja")) {
    default_source = std::move(jinja_file);
    names.push_back("default");
  } else if (config.is_object() && config.contains("chat_template") && !config["chat_template"].is_null()) {
    const auto& ct = config["chat_template"];
    if (ct.is_string()) {
      default_source = ct.get<std::string>();
      names.push_back("default");
    } else if (ct.is_array()) {
      for (const auto& entry : ct) {
        if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
            !entry["template"].is_string())
          fail("{}: chat_template list entries must be {{\"name\": string, \"template\": string}}", config_name);
        const std::string name = entry["name"].get<std::string>();
        names.push_back(name);
        if (name == "default") default_source = entry["template"].get<std::string>();
        if (name == "tool_use") tool_use_source = entry["template"].get<std::string>();
      }
      if (!default_source) fail("{}: chat_template list has no template named \"default\"", config_name);
    } else {
      fail("{}: chat_template must be a string or a list of named templates", config_name);
    }
  } else {
    const nlohmann::ordered_json processor = read_json(dir / "chat_template.json");
    if (processor.is_object() && processor.contains("chat_template") && processor["chat_template"].is_string()) {
      default_source = processor["chat_template"].get<std::string>();
      names.push_back("default");
    }
  }
  if (!default_source) return std::nullopt;
  ModelChatTemplates out{ChatTemplate(*default_source, tokens), std::nullopt, std::move(names)};
  if (tool_use_source) out.tool_use.emplace(*tool_use_source, tokens);
  return out;
}

}  // namespace lserve
