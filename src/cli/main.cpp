// lserve: one binary, one subcommand per job (generate, tokenize, chat-template, serve, bench,
// eval, profile-heads). Errors from bad input end here as one line.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lserve: long-context LLM serving with unified block-sparse attention"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lserve 0.1.0");
  lserve::cli::add_generate_command(app);
  lserve::cli::add_tokenize_command(app);
  lserve::cli::add_bench_command(app);
  lserve::cli::add_chat_template_command(app);
  lserve::cli::add_serve_command(app);
  lserve::cli::add_eval_command(app);
  lserve::cli::add_profile_heads_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lserve::Error& e) {
    std::fprintf(stderr, "lserve: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lserve: unexpected error: %s\n", e.what());
    return 2;
  }
  return 0;
}
