// The subcommands of the `lserve` binary; each registers itself (flags + callback) on the app.
// Callbacks throw lserve::Error for bad input; main() prints it as one line.
#pragma once

#include <CLI/CLI.hpp>

namespace lserve::cli {

void add_generate_command(CLI::App& app);  // cmd_generate.cpp
void add_tokenize_command(CLI::App& app);  // cmd_tokenize.cpp
void add_bench_command(CLI::App& app);     // cmd_bench.cpp
void add_chat_template_command(CLI::App& app);  // cmd_chat_template.cpp
void add_serve_command(CLI::App& app);     // cmd_serve.cpp
void add_eval_command(CLI::App& app);      // cmd_eval.cpp
void add_profile_heads_command(CLI::App& app);  // cmd_profile_heads.cpp
void add_bench_serve_command(CLI::App& bench);  // cmd_bench_serve.cpp: `bench serve`

}  // namespace lserve::cli
