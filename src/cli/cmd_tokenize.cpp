// `lserve tokenize`: all of stdin (UTF-8 text) -> its token ids as one JSON array and a newline;
// with --decode, a JSON array of ids on stdin -> exactly the text they decode to. --jsonl does
// many in one run: one JSON string (or id array) per input line, one result per output line.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "model/tokenizer.h"

namespace lserve::cli {

namespace {

struct TokenizeOptions {
  std::string tokenizer;
  bool decode = false;
  bool jsonl = false;
  bool add_special_tokens = false;
  bool skip_special_tokens = false;
};

// --tokenizer names the folder that holds tokenizer.json (a model folder is one); the file
// itself is accepted too.
std::filesystem::path tokenizer_dir(const std::string& arg) {
  const std::filesystem::path path(arg);
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) return path.has_parent_path() ? path.parent_path() : ".";
  return path;
}

std::vector<int32_t> parse_ids(const nlohmann::json& j, std::string_view where) {
  if (!j.is_array()) fail("{}: expected a JSON array of token ids", where);
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > std::numeric_limits<int32_t>::max())
      fail("{}: element {} ({}) is not a token id", where, i, v.dump());
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

nlohmann::json parse_json(const std::string& text, std::string_view where) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", where, e.what());
  }
}

void run_whole(const Tokenizer& tokenizer, const TokenizeOptions& o) {
  std::string input;
  char buffer[1 << 16];
  while (std::cin.read(buffer, sizeof buffer) || std::cin.gcount() > 0)
    input.append(buffer, static_cast<size_t>(std::cin.gcount()));
  if (std::cin.bad()) fail("cannot read standard input");
  if (o.decode) {
    const auto ids = parse_ids(parse_json(input, "stdin"), "stdin");
    const std::string text = tokenizer.decode(ids, o.skip_special_tokens);
    std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
  } else {
    std::cout << nlohmann::json(tokenizer.encode(input, o.add_special_tokens)).dump() << '\n';
  }
}

void run_jsonl(const Tokenizer& tokenizer, const TokenizeOptions& o) {
  std::string line;
  for (size_t number = 1; std::getline(std::cin, line); ++number) {
    const std::string where = "stdin line " + std::to_string(number);
    const nlohmann::json input = parse_json(line, where);
    if (o.decode) {
      std::cout << nlohmann::json(tokenizer.decode(parse_ids(input, where), o.skip_special_tokens)).dump() << '\n';
    } else {
      if (!input.is_string()) fail("{}: expected a JSON string", where);
      std::cout << nlohmann::json(tokenizer.encode(input.get_ref<const std::string&>(), o.add_special_tokens)).dump()
                << '\n';
    }
  }
  if (std::cin.bad()) fail("cannot read standard input");
}

void run_tokenize(const TokenizeOptions& o) {
  const Tokenizer tokenizer = Tokenizer::from_dir(tokenizer_dir(o.tokenizer));
  if (o.jsonl) {
    run_jsonl(tokenizer, o);
  } else {
    run_whole(tokenizer, o);
  }
  std::cout.flush();
  if (!std::cout) fail("cannot write standard output");
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "text on stdin -> token ids (JSON), or back with --decode");
  cmd->add_option("--tokenizer,-t", o->tokenizer, "folder with tokenizer.json (a model folder)")->required();
  cmd->add_flag("--decode,-d", o->decode, "read a JSON array of ids, print the text");
  cmd->add_flag("--jsonl", o->jsonl, "one JSON string (or id array with --decode) per line in and out");
  cmd->add_flag("--add-special-tokens", o->add_special_tokens, "apply the post-processor (e.g. add BOS)");
  cmd->add_flag("--skip-special-tokens", o->skip_special_tokens, "leave special tokens out when decoding");
  cmd->callback([o] { run_tokenize(*o); });
}

}  // namespace lserve::cli
