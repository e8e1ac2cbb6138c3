// `lserve chat-template`: renders a conversation with a model's chat template and prints the
// prompt exactly (no newline added), as apply_chat_template(tokenize=False) would give it.
//
//   lserve chat-template --model DIR --messages chat.json [--add-generation-prompt]
//                        [--options '{"enable_thinking": false}'] [--now "2024-07-26 12:00:00"]
//
// chat.json holds the messages array, or an object with "messages" and options beside it
// (tools, documents, ...). --template FILE renders a .jinja file instead of the model's template.
// --jsonl renders many in one run (the comparison harness uses it): each stdin line is an object
// {"messages", "options"?, "template"?, "special_tokens"?}, each output line {"prompt": text} or
// {"error": message, "raised": true when the template called raise_exception}.
#include <nlohmann/json.hpp>

#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "model/chat_template/chat_template.h"

namespace lserve::cli {

namespace {

using ordered_json = nlohmann::ordered_json;

struct ChatTemplateOptions {
  std::string model;
  std::string template_file;
  std::string messages_file;
  std::string options_json;
  std::string now;
  bool add_generation_prompt = false;
  bool jsonl = false;
};

std::string read_all(std::istream& in, std::string_view what) {
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read {}", what);
  return ss.str();
}

ordered_json parse_json(const std::string& text, std::string_view where) {
  try {
    return ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", where, e.what());
  }
}

// --now "YYYY-MM-DD HH:MM:SS" (or with a T) -> the fixed time strftime_now() shows.
std::optional<ChatClock> fixed_clock(const std::string& now) {
  if (now.empty()) return std::nullopt;
  std::tm tm{};
  std::string text = now;
  if (text.size() > 10 && text[10] == 'T') text[10] = ' ';
  std::istringstream in(text);
  in >> std::get_time(&tm, "%Y-%m-%d %H:%M:%S");
  if (in.fail()) fail("--now: expected \"YYYY-MM-DD HH:MM:SS\", got \"{}\"", now);
  std::tm normalized = tm;
  normalized.tm_isdst = -1;
  std::mktime(&normalized);  // fills in the weekday and day of the year for %a, %j, ...
  return [normalized] { return normalized; };
}

struct Templates {
  std::optional<ModelChatTemplates> model;
  std::optional<ChatTemplate> file;

  const ChatTemplate& pick(bool has_tools) const { return file ? *file : model->pick(has_tools); }
};

Templates load_templates(const ChatTemplateOptions& o) {
  Templates t;
  std::filesystem::path dir = o.model.empty() ? default_model_dir() : std::filesystem::path(o.model);
  if (!o.template_file.empty()) {
    std::ifstream in(o.template_file, std::ios::binary);
    if (!in) fail("--template: cannot open {}", o.template_file);
    // The model folder, when given, still provides the special tokens.
    t.file.emplace(read_all(in, o.template_file), o.model.empty() ? ordered_json::object() : chat_special_tokens(dir));
    return t;
  }
  t.model = ModelChatTemplates::from_dir(dir);
  if (!t.model) fail("{}: the model folder has no chat template", dir.string());
  return t;
}

bool has_tools(const ordered_json& options) {
  return options.contains("tools") && options["tools"].is_array() && !options["tools"].empty();
}

void run_single(const ChatTemplateOptions& o, const std::optional<ChatClock>& clock) {
  Templates templates = load_templates(o);
  std::string text;
  if (o.messages_file.empty() || o.messages_file == "-") {
    text = read_all(std::cin, "standard input");
  } else {
    std::ifstream in(o.messages_file, std::ios::binary);
    if (!in) fail("--messages: cannot open {}", o.messages_file);
    text = read_all(in, o.messages_file);
  }
  ordered_json input = parse_json(text, o.messages_file.empty() ? "stdin" : o.messages_file);
  ordered_json options = ordered_json::object();
  ordered_json messages;
  if (input.is_object()) {
    if (!input.contains("messages")) fail("{}: expected a messages array or an object with \"messages\"", o.messages_file);
    messages = input["messages"];
    for (auto& [k, v] : input.items())
      if (k != "messages") options[k] = v;
  } else {
    messages = std::move(input);
  }
  if (o.add_generation_prompt) options["add_generation_prompt"] = true;
  if (!o.options_json.empty()) {
    const ordered_json extra = parse_json(o.options_json, "--options");
    if (!extra.is_object()) fail("--options: expected a JSON object");
    for (auto& [k, v] : extra.items()) options[k] = v;
  }
  ChatTemplate tmpl = templates.pick(has_tools(options));
  if (clock) tmpl.set_clock(*clock);
  std::cout << tmpl.render(messages, options);
}

void run_jsonl(const ChatTemplateOptions& o, const std::optional<ChatClock>& clock) {
  std::optional<Templates> templates;
  std::string line;
  for (size_t number = 1; std::getline(std::cin, line); ++number) {
    const std::string where = "stdin line " + std::to_string(number);
    const ordered_json req = parse_json(line, where);
    if (!req.is_object() || !req.contains("messages")) fail("{}: expected an object with \"messages\"", where);
    const ordered_json options = req.value("options", ordered_json::object());
    ordered_json result;
    try {
      std::optional<ChatTemplate> own;
      if (req.contains("template")) {
        own.emplace(req["template"].get<std::string>(), req.value("special_tokens", ordered_json::object()));
      } else if (!templates) {
        templates = load_templates(o);
      }
      ChatTemplate tmpl = own ? *own : templates->pick(has_tools(options));
      if (clock) tmpl.set_clock(*clock);
      result["prompt"] = tmpl.render(req["messages"], options);
    } catch (const ChatTemplateRaised& e) {
      result["error"] = e.what();
      result["raised"] = true;
    } catch (const Error& e) {
      result["error"] = e.what();
      result["raised"] = false;
    }
    std::cout << result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  }
  if (std::cin.bad()) fail("cannot read standard input");
}

}  // namespace

void add_chat_template_command(CLI::App& app) {
  auto o = std::make_shared<ChatTemplateOptions>();
  CLI::App* cmd = app.add_subcommand("chat-template", "render messages (JSON) into a prompt with the model's chat template");
  cmd->add_option("--model,-m", o->model, "HF model folder (default: the bundled models/lserve-tiny-16k)");
  cmd->add_option("--template", o->template_file, "a .jinja template file to use instead of the model's");
  cmd->add_option("--messages", o->messages_file, "JSON file: a messages array, or {\"messages\": [...], options...}; default stdin");
  cmd->add_flag("--add-generation-prompt", o->add_generation_prompt, "end with the assistant turn's header");
  cmd->add_option("--options", o->options_json, "JSON object of template variables (tools, enable_thinking, ...)");
  cmd->add_option("--now", o->now, "fixed time for strftime_now(), \"YYYY-MM-DD HH:MM:SS\"");
  cmd->add_flag("--jsonl", o->jsonl, "one JSON request per stdin line, one JSON result per output line");
  cmd->callback([o] {
    const auto clock = fixed_clock(o->now);
    if (o->jsonl) run_jsonl(*o, clock);
    else run_single(*o, clock);
    std::cout.flush();
    if (!std::cout) fail("cannot write standard output");
  });
}

}  // namespace lserve::cli
