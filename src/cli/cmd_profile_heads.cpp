// `lserve profile-heads`: measures which KV heads of a model are retrieval heads
// (eval/head_profiler.h) and writes the head-pattern file that the sparse policies read; by
// default into the model folder (head_pattern.txt), where lserve finds it for that model.
// `--random SEED` writes a random pattern of the same ratio instead: the baseline profiling must
// beat (README: accuracy).
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "cli/eval_options.h"
#include "cli/model_options.h"
#include "eval/head_profiler.h"

namespace lserve::cli {

namespace {

struct ProfileOptions {
  ModelOptions model;
  eval::HeadProfileOptions profile;
  std::vector<std::string> tasks;
  std::string haystack;
  std::string out;  // empty: MODEL/head_pattern.txt
  double streaming_ratio = 0.5;
  std::optional<uint64_t> random_seed;
};

std::string header(const ProfileOptions& o, const eval::HeadProfile& p, const std::string& model_dir) {
  std::string tasks;
  for (eval::Task t : o.profile.tasks) tasks += (tasks.empty() ? "" : ",") + std::string(eval::task_name(t));
  return fmt::format(
      "# lserve profile-heads: {}\n"
      "# score = drop in the answer's log-likelihood when this KV head alone keeps only sink {} + local {}\n"
      "# tokens (prefill and decode), teacher-forced, divided by the largest drop ({:.3f} nats); mean over\n"
      "# {} samples ({} at {} tokens, seed {}); mean log p(answer) with every head dense: {:.3f}\n",
      model_dir, o.profile.window.sink, o.profile.window.local, [&] {
        double m = 0;
        for (const auto& row : p.drop)
          for (double x : row) m = std::max(m, x);
        return m;
      }(),
      p.samples, tasks, o.profile.length, o.profile.seed, p.dense_logprob);
}

void print_table(const eval::HeadProfile& p, const HeadPattern& pattern) {
  std::printf("answer log-likelihood drop (nats) when one KV head streams; * = streaming in the pattern\n");
  std::printf("%6s", "layer");
  for (size_t h = 0; h < p.drop[0].size(); ++h) std::printf("   head %-3zu", h);
  std::printf("\n");
  for (size_t l = 0; l < p.drop.size(); ++l) {
    std::printf("%6zu", l);
    for (size_t h = 0; h < p.drop[l].size(); ++h)
      std::printf("  %8.3f%s", p.drop[l][h],
                  pattern.kind(static_cast<int64_t>(l), static_cast<int64_t>(h)) == HeadKind::Streaming ? "*" : " ");
    std::printf("\n");
  }
}

void write_pattern(const std::filesystem::path& path, const std::string& comments, const HeadPattern& pattern) {
  std::ofstream f(path);
  if (!f) fail("{}: cannot write", path.string());
  f << comments << pattern.to_text();
  if (!f) fail("{}: write failed", path.string());
}

void run_profile(ProfileOptions o) {
  LoadedModel m = load_model(o.model);
  const ModelConfig& c = m.model->config();
  const std::filesystem::path out = o.out.empty() ? m.dir / "head_pattern.txt" : std::filesystem::path(o.out);
  if (o.random_seed) {
    const HeadPattern p = eval::random_pattern(c.num_layers, c.num_kv_heads, o.streaming_ratio, *o.random_seed);
    write_pattern(out, fmt::format("# random head scores (seed {}), the baseline for profiled ones\n", *o.random_seed), p);
    std::printf("wrote %s: %lld of %lld KV heads stream, chosen at random\n", out.string().c_str(),
                static_cast<long long>(p.num_streaming()), static_cast<long long>(c.num_layers * c.num_kv_heads));
    return;
  }
  if (!m.tokenizer) fail("{}: profiling needs the model's tokenizer.json", m.dir.string());
  o.profile.tasks = parse_tasks(o.tasks);
  if (o.profile.length + 64 > m.model->max_context())
    fail("--length {} does not fit the max context {}", o.profile.length, m.model->max_context());
  const eval::Haystack haystack = eval::Haystack::load(haystack_path(o.haystack), eval::tokenizer_cost(*m.tokenizer));

  // Caches for one sample under each tested pattern, with the window being tested.
  ModelOptions cache_options = o.model;
  cache_options.sparsity.prefill_window = o.profile.window;
  cache_options.sparsity.decode_window = o.profile.window;
  const int64_t tokens = o.profile.length + eval::kMaxNewTokens;
  const auto make_cache = [&](const HeadPattern& pattern) {
    const auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::warn);  // one cache per head: keep the log to the progress
    auto cache = make_kv_cache(m, cache_options, pattern, tokens, 1, o.profile.prefill_chunk);
    spdlog::set_level(level);
    return cache;
  };
  const auto progress = [](const eval::HeadProfileProgress& p) {
    std::fprintf(stderr, "\rprofiling: %lld/%lld prefills, %.0f s", static_cast<long long>(p.done),
                 static_cast<long long>(p.total), p.seconds);
    if (p.done == p.total) std::fprintf(stderr, "\n");
  };
  const eval::HeadProfile profile =
      eval::profile_heads(*m.model, *m.tokenizer, haystack, o.profile, make_cache, progress);
  const HeadPattern pattern = eval::profiled_pattern(profile, o.streaming_ratio);
  print_table(profile, pattern);
  write_pattern(out, header(o, profile, m.dir.filename().string()), pattern);
  std::printf("wrote %s: %lld of %lld KV heads stream (streaming_ratio %.2f)\n", out.string().c_str(),
              static_cast<long long>(pattern.num_streaming()), static_cast<long long>(c.num_layers * c.num_kv_heads),
              o.streaming_ratio);
}

}  // namespace

void add_profile_heads_command(CLI::App& app) {
  auto o = std::make_shared<ProfileOptions>();
  o->tasks.clear();
  for (eval::Task t : o->profile.tasks) o->tasks.emplace_back(eval::task_name(t));
  CLI::App* cmd = app.add_subcommand("profile-heads", "Find the retrieval heads of a model and write its head-pattern file");
  add_model_options(cmd, o->model);
  cmd->add_option("--out,-o", o->out, "pattern file to write (default: MODEL/head_pattern.txt, which lserve then uses)");
  cmd->add_option("--ratio", o->streaming_ratio, "fraction of KV heads that stream (the file's rule)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--task", o->tasks, "profiling tasks (comma list)")->delimiter(',')->capture_default_str();
  cmd->add_option("--length", o->profile.length, "prompt tokens of each sample")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--samples", o->profile.samples, "samples per task")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--seed", o->profile.seed, "seed of the samples (differs from lserve eval's default)")->capture_default_str();
  cmd->add_option("--window-sink", o->profile.window.sink, "sink tokens a tested head keeps")->capture_default_str();
  cmd->add_option("--window-local", o->profile.window.local, "local tokens a tested head keeps")->capture_default_str();
  cmd->add_option("--haystack", o->haystack, "haystack sentences (default: the repository's eval/haystack.txt)");
  cmd->add_option("--random", o->random_seed, "write random scores with this seed instead of profiling (a baseline)");
  cmd->callback([o] {
    finish_sparsity(o->model);
    run_profile(*o);
  });
}

}  // namespace lserve::cli
