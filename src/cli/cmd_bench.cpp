// `lserve bench`: prefill and decode speed of one sequence on synthetic tokens, for any model
// (a real folder, or --load-format dummy for shapes we have no weights for). Prints tokens/s
// and the time per decode step; results are written to the repo by hand with the command.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "engine/generator.h"

namespace lserve::cli {

namespace {

struct BenchOptions {
  ModelOptions model;
  std::vector<int64_t> prompt_tokens{512};
  int64_t decode_tokens = 64;
  int repeats = 3;
  int64_t prefill_chunk = 2048;
  bool json = false;
};

using Clock = std::chrono::steady_clock;

void run_bench(const BenchOptions& o) {
  LoadedModel m = load_model(o.model);
  const int64_t longest = *std::max_element(o.prompt_tokens.begin(), o.prompt_tokens.end());
  auto cache = make_kv_cache(m, o.model, longest + o.decode_tokens, 1, o.prefill_chunk);
  Generator gen(*m.model, *cache, nullptr, o.prefill_chunk, &o.model.sparsity);
  spdlog::info("{}", o.model.sparsity.summary());
  const ModelConfig& c = m.model->config();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size - 1));

  if (!o.json)
    std::printf("%-10s %-8s %14s %14s %14s\n", "prompt", "decode", "prefill tok/s", "decode tok/s", "ms/token");
  for (int64_t n : o.prompt_tokens) {
    std::vector<double> prefill, decode;
    for (int r = 0; r < o.repeats + 1; ++r) {  // the first run warms up caches and threads
      GenerationRequest req;
      req.prompt.resize(static_cast<size_t>(n));
      for (auto& t : req.prompt) t = token(rng);
      req.max_tokens = o.decode_tokens;
      req.ignore_eos = true;
      const GenerationResult res = gen.run(req, nullptr);
      if (r == 0) continue;
      prefill.push_back(static_cast<double>(n) / res.prefill_seconds);
      if (res.decode_steps) decode.push_back(static_cast<double>(res.decode_steps) / res.decode_seconds);
    }
    auto median = [](std::vector<double> v) {
      if (v.empty()) return 0.0;
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double p = median(prefill), d = median(decode);
    if (o.json) {
      std::printf("{\"prompt_tokens\": %lld, \"decode_tokens\": %lld, \"prefill_tokens_per_s\": %.2f, "
                  "\"decode_tokens_per_s\": %.2f}\n",
                  static_cast<long long>(n), static_cast<long long>(o.decode_tokens), p, d);
    } else {
      std::printf("%-10lld %-8lld %14.1f %14.2f %14.2f\n", static_cast<long long>(n),
                  static_cast<long long>(o.decode_tokens), p, d, d > 0 ? 1000.0 / d : 0.0);
    }
    std::fflush(stdout);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill and decode speed on synthetic prompts");
  add_model_options(cmd, o->model);
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "prompt lengths to measure (repeatable)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--decode-tokens", o->decode_tokens, "tokens decoded after each prompt")->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", o->repeats, "timed runs per length (median reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "prompt tokens per forward pass")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "one JSON object per line instead of a table");
  add_bench_serve_command(*cmd);
  cmd->callback([o, cmd] {
    if (cmd->got_subcommand("serve")) return;  // `bench serve` ran instead
    finish_sparsity(o->model);
    run_bench(*o);
  });
}

}  // namespace lserve::cli
