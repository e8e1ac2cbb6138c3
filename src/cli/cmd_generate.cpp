// `lserve generate`: one prompt in, the continuation streamed to stdout, then the speed
// (prefill and decode tokens/s) and peak memory on stderr.
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/mapped_file.h"
#include "engine/generator.h"

namespace lserve::cli {

namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt;
  std::string prompt_file;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool no_bos = false;
  int64_t prefill_chunk = 2048;
};

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

void run_generate(GenerateOptions& o, const CLI::App& cmd) {
  if (o.prompt.empty() == o.prompt_file.empty()) fail("give exactly one of --prompt and --prompt-file");
  const std::string text = o.prompt_file.empty() ? o.prompt : read_text_file(o.prompt_file);

  LoadedModel m = load_model(o.model);
  if (!m.tokenizer) fail("{}: no tokenizer.json; generate needs a tokenizer", m.dir.string());

  GenerationRequest req;
  req.prompt = m.tokenizer->encode(text, /*add_special_tokens=*/!o.no_bos);
  req.max_tokens = o.max_tokens;
  req.stop = o.stop;
  req.ignore_eos = o.ignore_eos;
  req.eos_token_ids = m.generation.eos_token_ids;
  if (req.eos_token_ids.empty() && m.tokenizer->eos_id()) req.eos_token_ids.push_back(*m.tokenizer->eos_id());
  req.sampling = o.sampling;
  // The checkpoint's sampling defaults apply where the user gave no flag (as vLLM does).
  const auto& g = m.generation;
  if (g.do_sample) {
    if (!cmd.count("--temperature") && g.temperature) req.sampling.temperature = *g.temperature;
    if (!cmd.count("--top-p") && g.top_p) req.sampling.top_p = *g.top_p;
    if (!cmd.count("--top-k") && g.top_k) req.sampling.top_k = *g.top_k;
  }
  if (!cmd.count("--repetition-penalty") && g.repetition_penalty) req.sampling.repetition_penalty = *g.repetition_penalty;
  req.sampling.validate();

  const int64_t need = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (need > m.model->max_context())
    fail("prompt ({} tokens) + --max-tokens ({}) exceeds the max context of {} tokens", req.prompt.size(),
         req.max_tokens, m.model->max_context());
  resolve_auto_policy(o.model, m, static_cast<int64_t>(req.prompt.size()));
  auto cache = make_kv_cache(m, o.model, need, 1, o.prefill_chunk);
  Generator gen(*m.model, *cache, &*m.tokenizer, o.prefill_chunk, &o.model.sparsity);
  gen.set_overlap_steps(o.model.overlap_steps);
  spdlog::info("{}", o.model.sparsity.summary());
  spdlog::info("prompt: {} tokens; generating up to {} ({})", req.prompt.size(), req.max_tokens,
               req.sampling.greedy() ? "greedy" : fmt::format("temperature {}", req.sampling.temperature));

  GenerationResult r = gen.run(req, [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const double prefill_tps = r.prefill_seconds > 0 ? static_cast<double>(r.prompt_tokens) / r.prefill_seconds : 0;
  const double decode_tps = r.decode_seconds > 0 ? static_cast<double>(r.decode_steps) / r.decode_seconds : 0;
  std::fprintf(stderr,
               "\n[lserve] prompt %lld tokens, prefill %.3f s (%.1f tokens/s) | generated %zu tokens, "
               "decode %.1f tokens/s (%.2f ms/token) | finish: %s | peak memory %.0f MiB\n"
               "[lserve] %s | KV tokens read per head per decode step: %.0f (of %lld in context at the end) | KV held %.2f MiB\n",
               static_cast<long long>(r.prompt_tokens), r.prefill_seconds, prefill_tps, r.tokens.size(), decode_tps,
               r.decode_steps ? 1000.0 * r.decode_seconds / static_cast<double>(r.decode_steps) : 0.0,
               std::string(finish_reason_name(r.finish_reason)).c_str(), peak_rss_mib(),
               std::string(policy_name(o.model.sparsity.policy)).c_str(), r.mean_kv_tokens_read,
               static_cast<long long>(r.prompt_tokens + static_cast<int64_t>(r.tokens.size())),
               static_cast<double>(r.kv_bytes) / 1048576.0);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate a continuation of one prompt");
  add_model_options(cmd, o->model);
  cmd->add_option("--prompt,-p", o->prompt, "prompt text");
  cmd->add_option("--prompt-file,-f", o->prompt_file, "read the prompt from a file");
  cmd->add_option("--max-tokens,-n", o->max_tokens, "tokens to generate at most")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy");
  cmd->add_option("--top-k", o->sampling.top_k, "keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", o->sampling.top_p, "nucleus sampling mass (1 = off)");
  cmd->add_option("--min-p", o->sampling.min_p, "drop tokens below min_p x the best probability");
  cmd->add_option("--repetition-penalty", o->sampling.repetition_penalty, "HF-style repetition penalty (1 = off)");
  cmd->add_option("--seed", o->sampling.seed, "sampling seed");
  cmd->add_option("--stop", o->stop, "stop string (repeatable)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating past end-of-sequence tokens");
  cmd->add_flag("--no-bos", o->no_bos, "do not add the tokenizer's special prefix tokens");
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "prompt tokens per forward pass")->check(CLI::PositiveNumber);
  cmd->callback([o, cmd] {
    finish_sparsity(o->model);
    run_generate(*o, *cmd);
  });
}

}  // namespace lserve::cli
