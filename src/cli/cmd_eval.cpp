// `lserve eval`: the long-context accuracy harness. Builds the samples of docs/eval_tasks.md
// over a grid of tasks x lengths x depths, runs them all through the Engine (continuous
// batching, greedy), scores them and prints the accuracy per task x length and per depth (a
// table, or JSON), optionally as a needle-in-a-haystack PNG.
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/eval_options.h"
#include "cli/model_options.h"
#include "engine/engine.h"
#include "eval/accuracy_plot.h"
#include "eval/eval_report.h"
#include "eval/eval_runner.h"

namespace lserve::cli {

namespace {

struct EvalOptions {
  ModelOptions model;
  std::vector<std::string> tasks{"niah"};
  std::vector<std::string> lengths{"4096"};
  std::vector<double> depths;  // empty: the spec's 11 depths 0, 0.1, ..., 1
  int64_t samples = 4;
  uint64_t seed = 0;
  std::string haystack;
  bool json = false;
  std::string png;
  std::string write_samples;
  bool show_failures = false;
  int64_t max_running = 8;
  int64_t max_batched_tokens = 2048;
};

// Logs go to stderr, so that stdout holds only the table or the JSON.
void log_to_stderr() {
  auto logger = std::make_shared<spdlog::logger>("", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_level(spdlog::default_logger()->level());
  spdlog::set_default_logger(std::move(logger));
}

std::string duration_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  return s < 60 ? fmt::format("{}s", s) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

// Progress on stderr: one line rewritten in place on a terminal, a line every 10 s otherwise.
class ProgressPrinter {
 public:
  ProgressPrinter() : tty_(isatty(STDERR_FILENO) != 0) {}
  void operator()(const eval::EvalProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    const bool last = p.done == p.total;
    if (finished_) return;
    finished_ = last;
    if (!last && now - last_print_ < (tty_ ? std::chrono::milliseconds(500) : std::chrono::milliseconds(10000))) return;
    last_print_ = now;
    std::string eta;
    if (!last && p.tokens_computed > 0 && p.prompt_tokens_total > p.tokens_computed)
      eta = ", ~" + duration_text(p.elapsed_seconds * static_cast<double>(p.prompt_tokens_total - p.tokens_computed) /
                                  static_cast<double>(p.tokens_computed)) + " left";
    const std::string line =
        fmt::format("[eval] {}/{} samples done ({} correct), {:.1f}K tokens computed, {} elapsed{}", p.done, p.total,
                    p.correct, static_cast<double>(p.tokens_computed) / 1000.0, duration_text(p.elapsed_seconds), eta);
    if (tty_) std::fprintf(stderr, "\r%-100s%s", line.c_str(), last ? "\n" : "");
    else std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }

 private:
  bool tty_;
  bool finished_ = false;  // the last line is out
  std::chrono::steady_clock::time_point last_print_{};
};

void write_samples_file(const std::filesystem::path& file, const std::vector<eval::PreparedSample>& samples,
                        const eval::Haystack& haystack) {
  std::ofstream out(file);
  if (!out) fail("{}: cannot open for writing", file.string());
  for (const eval::PreparedSample& p : samples) {
    const eval::Sample& s = p.sample;
    std::vector<int64_t> slots;
    for (const auto& n : s.needles) slots.push_back(n.slot);
    const nlohmann::json j = {{"task", eval::task_name(s.key.task)}, {"length", s.key.length},
                              {"depth_permille", s.key.depth_permille}, {"index", s.key.index},
                              {"start", s.start}, {"sentences", s.sentences}, {"slots", slots},
                              {"counted", s.counted_tokens}, {"tokens", p.prompt.size()},
                              {"answer", s.answer}, {"prompt", s.prompt_text(haystack)}};
    out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  }
  if (!out) fail("{}: write failed", file.string());
}

// Range checks here rather than CLI11's, so that they end as one `lserve: error:` line.
void check_range(const char* flag, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) fail("{} must be in {}..{}, got {}", flag, lo, hi, value);
}

void run_eval(EvalOptions& o) {
  log_to_stderr();
  check_range("--samples", o.samples, 1, int64_t{1} << 20);
  check_range("--max-running", o.max_running, 1, 4096);
  check_range("--max-batched-tokens", o.max_batched_tokens, 1, int64_t{1} << 20);
  eval::EvalGrid grid;
  grid.tasks = parse_tasks(o.tasks);
  grid.lengths = parse_lengths(o.lengths);
  grid.depths_permille = parse_depths(o.depths);
  grid.samples = o.samples;
  grid.seed = o.seed;
  const std::filesystem::path haystack_file = haystack_path(o.haystack);
  constexpr int64_t max_new = eval::kMaxNewTokens;

  if (!o.write_samples.empty()) {  // the samples only: no weights needed
    const std::filesystem::path dir = o.model.model.empty() ? default_model_dir() : std::filesystem::path(o.model.model);
    const Tokenizer tokenizer = Tokenizer::from_dir(dir);
    const eval::Haystack haystack = eval::Haystack::load(haystack_file, eval::tokenizer_cost(tokenizer));
    write_samples_file(o.write_samples, eval::prepare_samples(grid, haystack, tokenizer), haystack);
    return;
  }

  LoadedModel m = load_model(o.model);
  if (!m.tokenizer) fail("{}: no tokenizer.json; eval needs a tokenizer", m.dir.string());
  const int64_t max_context = m.model->max_context();
  if (grid.lengths.back() + max_new > max_context)
    fail("--lengths {}: a prompt of {} tokens + {} new tokens exceeds the max context of {} tokens", grid.lengths.back(),
         grid.lengths.back(), max_new, max_context);

  const auto t0 = std::chrono::steady_clock::now();
  const eval::Haystack haystack = eval::Haystack::load(haystack_file, eval::tokenizer_cost(*m.tokenizer));
  const std::vector<eval::PreparedSample> samples = eval::prepare_samples(grid, haystack, *m.tokenizer);
  int64_t longest = 0;
  for (const auto& p : samples) longest = std::max(longest, static_cast<int64_t>(p.prompt.size()));
  if (longest + max_new > max_context)
    fail("a {}-token prompt + {} new tokens exceeds the max context of {} tokens", longest, max_new, max_context);
  spdlog::info("{} samples from {} ({} sentences) in {:.2f} s, prompts up to {} tokens", samples.size(),
               haystack_file.string(), haystack.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), longest);

  resolve_auto_policy(o.model, m, longest);
  const int64_t running = std::min<int64_t>(o.max_running, static_cast<int64_t>(samples.size()));
  auto cache = make_kv_cache(m, o.model, longest + max_new, running, o.max_batched_tokens);
  EngineOptions eo;
  eo.scheduler.max_batched_tokens = o.max_batched_tokens;
  eo.scheduler.max_running = static_cast<int32_t>(running);
  eo.max_waiting = static_cast<int64_t>(samples.size());
  eo.prefix_caching = false;  // no two samples share more than the BOS token
  eo.overlap_steps = o.model.overlap_steps;
  Engine engine(*m.model, *cache, &*m.tokenizer, o.model.sparsity, eo);
  spdlog::info("{}", o.model.sparsity.summary());

  eval::GenerationSettings settings;
  settings.max_new_tokens = max_new;
  settings.eos_token_ids = m.generation.eos_token_ids;
  if (settings.eos_token_ids.empty() && m.tokenizer->eos_id()) settings.eos_token_ids.push_back(*m.tokenizer->eos_id());
  ProgressPrinter printer;
  const eval::EvalResults results = eval::run_samples(engine, *m.tokenizer, samples, settings, std::ref(printer));

  eval::EvalReport report;
  report.model = o.model.model.empty() ? m.dir.filename().string() : o.model.model;  // the bundled model by name
  report.sparsity = o.model.sparsity;
  report.streaming_kv_heads = cache->pattern().num_streaming();
  report.kv_heads = static_cast<int64_t>(m.model->config().num_layers) * m.model->config().num_kv_heads;
  report.grid = grid;
  report.max_new_tokens = max_new;
  report.cells = eval::tally(grid, results.samples);
  report.seconds = results.seconds;
  report.prompt_tokens = results.prompt_tokens;
  report.generated_tokens = results.generated_tokens;

  if (o.show_failures)
    for (const eval::SampleOutcome& s : results.samples)
      if (!s.correct)
        std::fprintf(stderr, "[eval] wrong: %s length %lld depth %s index %llu: expected %s, got %s\n",
                     std::string(eval::task_name(s.key.task)).c_str(), static_cast<long long>(s.key.length),
                     eval::depth_label(s.key.depth_permille).c_str(), static_cast<unsigned long long>(s.key.index),
                     nlohmann::json(s.answer).dump().c_str(),
                     nlohmann::json(s.continuation).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  if (!o.png.empty()) {
    eval::write_accuracy_png(o.png, report);
    spdlog::info("wrote {}", o.png);
  }
  if (o.json) std::cout << eval::to_json(report).dump(1) << '\n';
  else std::cout << eval::format_table(report);
  std::cout.flush();
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "long-context accuracy: needle-in-a-haystack and RULER-like tasks (docs/eval_tasks.md)");
  add_model_options(cmd, o->model);
  auto* g = "Evaluation";
  cmd->add_option("--task", o->tasks, "passkey, niah, multikey, multivalue, kv, vartrack or all (repeatable or a comma list)")
      ->group(g)->capture_default_str();
  cmd->add_option("--lengths", o->lengths, "target prompt lengths in tokens, e.g. 1024,4K,16K")->group(g)->capture_default_str();
  cmd->add_option("--depths", o->depths, "needle depths as fractions of the haystack (default: 0,0.1,...,1, the spec's 11)")
      ->delimiter(',')->group(g);
  cmd->add_option("--samples", o->samples, "samples per (task, length, depth) cell")->group(g)->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the samples")->group(g)->capture_default_str();
  cmd->add_option("--haystack", o->haystack, "haystack sentences, one per line (default: the repository's eval/haystack.txt)")
      ->group(g);
  cmd->add_flag("--json", o->json, "print the results as JSON instead of a table")->group(g);
  cmd->add_option("--png", o->png, "also write a needle-in-a-haystack grid (length x depth per task) as a PNG")->group(g);
  cmd->add_flag("--show-failures", o->show_failures, "list the wrong samples (expected and generated) on stderr")->group(g);
  cmd->add_option("--write-samples", o->write_samples, "write the samples as JSON lines (prompt, answer, ...) and exit without running the model")
      ->group(g);
  cmd->add_option("--max-running", o->max_running, "samples generated at once")->group(g)->capture_default_str();
  cmd->add_option("--max-batched-tokens", o->max_batched_tokens, "tokens per engine step (prefill chunks + decodes)")
      ->group(g)->capture_default_str();
  cmd->callback([o] {
    finish_sparsity(o->model);
    run_eval(*o);
  });
}

}  // namespace lserve::cli
