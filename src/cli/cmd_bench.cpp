// `lserve bench`: prefill and decode speed on synthetic tokens, for any model (a real folder, or
// --load-format dummy for shapes we have no weights for). Prints tokens/s and the time per
// decode step; results are written to the repo by hand with the command.
//
// --batch 1 (the default) runs one sequence through the Generator. --batch N runs N sequences
// of the same prompt length (distinct random tokens each) through the continuous-batching
// Engine: their prefill is timed until the last of them has its first token (the scheduler
// mixes the decode rows of the finished prompts into the remaining prompt chunks), and decode
// is timed over steps in which all N, and only they, decode together.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/decode_breakdown.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/generator.h"

namespace lserve::cli {

namespace {

struct BenchOptions {
  ModelOptions model;
  std::vector<int64_t> prompt_tokens{512};
  int64_t decode_tokens = 64;
  int64_t batch = 1;
  int repeats = 3;
  int warmup = 1;
  int64_t warmup_tokens = 0;  // 0: the measured length (batch 1), one prefill chunk (batch > 1)
  int64_t prefill_chunk = 2048;
  bool json = false;
  std::string csv;
  bool cuda_profile = false;  // the timed decode steps inside cudaProfilerStart/Stop
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Measurement {
  double prefill_seconds = 0;  // all prompts of the batch
  int64_t decode_steps = 0;    // forward passes with every sequence decoding
  double decode_seconds = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int32_t> random_prompt(int64_t n, std::mt19937& rng, int32_t vocab) {
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = token(rng);
  return p;
}

// Decode rows the first sequences can produce while the later prompts are still prefilled:
// each step carries at most `chunk` tokens, decode rows included.
int64_t overlap_bound(int64_t n, int64_t batch, int64_t chunk) {
  const int64_t per_step = std::max<int64_t>(1, chunk - (batch - 1));
  return (batch * n + per_step - 1) / per_step + batch + 1;
}

// One batch: submit `batch` prompts of `n` tokens, step until every one has its first token,
// then time `decode_steps` steps of all of them decoding; abort them afterwards.
Measurement run_batch(Engine& engine, int64_t n, int64_t batch, int64_t decode_steps, int64_t max_tokens,
                      std::mt19937& rng, DecodeTimer* timer = nullptr) {
  struct State {
    int64_t generated = 0;
    bool finished = false;
    FinishReason reason = FinishReason::Length;
    std::string error;
  };
  std::vector<State> state(static_cast<size_t>(batch));
  std::vector<uint64_t> ids;
  // Ends the requests before `state`, which their callbacks write, goes away (also on errors).
  struct Drain {
    Engine& engine;
    std::vector<uint64_t>& ids;
    ~Drain() {
      try {
        for (uint64_t id : ids) engine.abort(id);
        engine.run_until_idle();
      } catch (const std::exception& e) {
        spdlog::error("ending the benchmark requests: {}", e.what());
      }
    }
  } drain{engine, ids};
  const auto vocab = static_cast<int32_t>(engine.model().config().vocab_size);
  const int64_t preempted_before = engine.stats().preemptions;
  for (int64_t b = 0; b < batch; ++b) {
    RequestParams p;
    p.prompt = random_prompt(n, rng, vocab);
    p.max_tokens = max_tokens;
    p.ignore_eos = true;  // greedy by default
    State* s = &state[static_cast<size_t>(b)];
    ids.push_back(engine.submit(std::move(p), [s](RequestOutput&& out) {
      s->generated = out.completion_tokens;
      if (out.finished) {
        s->finished = true;
        s->reason = out.finish_reason;
        s->error = out.error;
      }
    }));
  }
  auto check_errors = [&] {
    for (const State& s : state)
      if (s.finished && s.reason == FinishReason::Error) fail("a benchmark request failed: {}", s.error);
  };
  auto all = [&](auto pred) { return std::all_of(state.begin(), state.end(), pred); };

  Measurement m;
  const auto t0 = Clock::now();
  while (!all([](const State& s) { return s.generated > 0 || s.finished; })) {
    if (!engine.step()) fail("the engine stopped before every prompt was prefilled (KV cache too small?)");
    check_errors();
  }
  m.prefill_seconds = seconds_since(t0);

  if (decode_steps > 0) {
    if (!all([&](const State& s) { return !s.finished && s.generated + decode_steps < max_tokens; }))
      fail("--batch {} at --prompt-tokens {}: the first sequences decode while the others are prefilled, and "
           "{} more decode steps would pass the {}-token context; use shorter prompts or fewer --decode-tokens",
           batch, n, decode_steps, engine.max_context());
    std::vector<int64_t> generated_before;
    for (const State& s : state) generated_before.push_back(s.generated);
    if (timer) timer->start();
    const auto t1 = Clock::now();
    for (int64_t i = 0; i < decode_steps; ++i) {
      engine.step();
      check_errors();
    }
    m.decode_seconds = seconds_since(t1);
    if (timer) timer->stop();
    // The steps whose tokens came back inside the window: with overlapped steps (--overlap-steps)
    // the first call only queues its step, and the last leaves one queued.
    m.decode_steps = decode_steps;
    for (size_t b = 0; b < state.size(); ++b)
      m.decode_steps = std::min(m.decode_steps, state[b].generated - generated_before[b]);
    if (!all([](const State& s) { return !s.finished; })) fail("a sequence finished inside the timed decode steps");
  }
  if (const int64_t p = engine.stats().preemptions - preempted_before; p > 0)
    spdlog::warn("{} preemptions during the run: the KV cache is too small for batch {} (times include recompute)",
                 p, batch);
  return m;
}

// Rows for the driver scripts: system,case,context,batch,value,unit (the header once per file);
// the system is "lserve", or "lserve-POLICY" for a sparse attention policy.
class CsvOut {
 public:
  CsvOut(const std::string& path, std::string system) : system_(std::move(system)) {
    if (path.empty()) return;
    std::error_code ec;
    const bool fresh = !std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0;
    f_ = std::fopen(path.c_str(), "a");
    if (!f_) fail("{}: cannot open for writing", path);
    if (fresh) std::fprintf(f_, "system,case,context,batch,value,unit\n");
  }
  ~CsvOut() {
    if (f_) std::fclose(f_);
  }
  CsvOut(const CsvOut&) = delete;
  CsvOut& operator=(const CsvOut&) = delete;
  void row(const char* what, int64_t context, int64_t batch, double value, const char* unit) {
    if (!f_) return;
    std::fprintf(f_, "%s,%s,%lld,%lld,%.6g,%s\n", system_.c_str(), what, static_cast<long long>(context),
                 static_cast<long long>(batch), value, unit);
    std::fflush(f_);
  }

 private:
  std::string system_;
  std::FILE* f_ = nullptr;
};

void report(const BenchOptions& o, CsvOut& csv, int64_t n, double prefill_tps, double decode_tps) {
  const int64_t B = o.batch;
  const double step_ms = decode_tps > 0 ? 1000.0 * static_cast<double>(B) / decode_tps : 0.0;
  if (o.json) {
    std::printf("{\"prompt_tokens\": %lld, \"batch\": %lld, \"decode_tokens\": %lld, \"prefill_tokens_per_s\": %.2f, "
                "\"decode_tokens_per_s\": %.2f, \"decode_ms_per_step\": %.3f}\n",
                static_cast<long long>(n), static_cast<long long>(B), static_cast<long long>(o.decode_tokens),
                prefill_tps, decode_tps, step_ms);
  } else if (B == 1) {
    std::printf("%-10lld %-8lld %14.1f %14.2f %14.2f\n", static_cast<long long>(n),
                static_cast<long long>(o.decode_tokens), prefill_tps, decode_tps, step_ms);
  } else {
    std::printf("%-10lld %-6lld %-8lld %14.1f %14.2f %14.2f\n", static_cast<long long>(n), static_cast<long long>(B),
                static_cast<long long>(o.decode_tokens), prefill_tps, decode_tps, step_ms);
  }
  std::fflush(stdout);
  csv.row("prefill", n, B, prefill_tps, "tokens/s");
  if (prefill_tps > 0) csv.row("prefill_time", n, B, static_cast<double>(n * B) / prefill_tps, "s");
  if (decode_tps > 0) {
    csv.row("decode", n, B, decode_tps, "tokens/s");
    csv.row("decode_step", n, B, step_ms, "ms");
  }
}

void print_header(const BenchOptions& o) {
  if (o.json) return;
  if (o.batch == 1)
    std::printf("%-10s %-8s %14s %14s %14s\n", "prompt", "decode", "prefill tok/s", "decode tok/s", "ms/token");
  else
    std::printf("%-10s %-6s %-8s %14s %14s %14s\n", "prompt", "batch", "decode", "prefill tok/s", "decode tok/s",
                "ms/step");
}

// Where a decode step's time went (a CUDA backend's clocks and events), beside the measured step.
void report_breakdown(const DecodeTimer& timer, CsvOut& csv, int64_t n, int64_t B, double steps_per_s) {
  const std::optional<DecodeBreakdown> b = timer.result();
  if (!b || steps_per_s <= 0) return;
  print_decode_breakdown(*b, 1000.0 / steps_per_s, n, B);
  csv.row("decode_host_plan", n, B, b->host_plan, "ms");
  csv.row("decode_host_select_plan", n, B, b->host_select_plan, "ms");
  csv.row("decode_device_kernels", n, B, b->device_kernels, "ms");
  csv.row("decode_device_before_kernels", n, B, b->device_before_kernels, "ms");
  csv.row("decode_host_finish", n, B, b->host_finish, "ms");
  csv.row("decode_forward_wall", n, B, b->forward_wall, "ms");
  csv.row("decode_steps_overlapped", n, B, b->overlapped, "share");
  csv.row("decode_steps_waiting_for_selections", n, B, b->overlap_waits, "share");
}

// KV memory of the sequence just run, from the cache's own accounting: what it held at the end
// under the policy and what the dense layout would hold, and how many tokens of one sequence a
// GiB of KV memory takes either way (the largest context that fits on a device is that times
// the memory left after the weights). Streaming heads hold a constant window per sequence.
void report_kv(const BenchOptions& o, const LoadedModel& m, const KvCache& cache, CsvOut& csv, int64_t n,
               const GenerationResult& res) {
  const int64_t tokens = res.prompt_tokens + static_cast<int64_t>(res.tokens.size());
  const int64_t P = cache.page_size();
  const size_t ret_page = cache.bytes_per_page(HeadKind::Retrieval);
  const size_t dense_page = KvCache::bytes_per_page(m.model->config(), P, cache.dtype());
  const double held = static_cast<double>(res.kv_bytes);
  const double dense = static_cast<double>(res.kv_retrieval_pages) * static_cast<double>(dense_page);
  const double window = held - static_cast<double>(res.kv_retrieval_pages) * static_cast<double>(ret_page);  // streaming pool
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const double per_gib = ret_page > 0 ? (gib - window) / static_cast<double>(ret_page) * static_cast<double>(P) : 0.0;
  const double dense_per_gib = gib / static_cast<double>(dense_page) * static_cast<double>(P);
  std::fprintf(stderr,
               "[lserve] KV held by one sequence of %lld tokens: %.1f MiB (%s; the dense layout: %.1f MiB, %.2fx); "
               "one GiB of KV holds %.0f tokens of one sequence (dense: %.0f)\n",
               static_cast<long long>(tokens), held / 1048576.0, o.model.policy.c_str(), dense / 1048576.0,
               held > 0 ? dense / held : 0.0, per_gib, dense_per_gib);
  csv.row("kv_bytes_per_sequence", n, 1, held, "bytes");
  csv.row("kv_tokens_per_gib", n, 1, per_gib, "tokens");
  csv.row("kv_tokens_per_gib_dense", n, 1, dense_per_gib, "tokens");
}

void run_single(const BenchOptions& o, LoadedModel& m, CsvOut& csv) {
  const int64_t longest = *std::max_element(o.prompt_tokens.begin(), o.prompt_tokens.end());
  auto cache = make_kv_cache(m, o.model, longest + o.decode_tokens, 1, o.prefill_chunk);
  Generator gen(*m.model, *cache, nullptr, o.prefill_chunk, &o.model.sparsity);
  gen.set_overlap_steps(o.model.overlap_steps);
  spdlog::info("{}", o.model.sparsity.summary());
  std::mt19937 rng(1234);
  const auto vocab = static_cast<int32_t>(m.model->config().vocab_size);

  print_header(o);
  for (int64_t n : o.prompt_tokens) {
    std::vector<double> prefill, decode;
    const int64_t wn = o.warmup_tokens > 0 ? std::min(n, o.warmup_tokens) : n;
    GenerationResult last;
    DecodeTimer timer(*m.backend, o.cuda_profile);
    for (int r = 0; r < o.warmup + o.repeats; ++r) {  // warm-up runs fill caches and start threads
      GenerationRequest req;
      req.prompt = random_prompt(r < o.warmup ? wn : n, rng, vocab);
      req.max_tokens = o.decode_tokens;
      req.ignore_eos = true;
      if (r >= o.warmup) timer.start();
      GenerationResult res = gen.run(req, nullptr);
      if (r < o.warmup) continue;
      timer.stop();
      prefill.push_back(static_cast<double>(n) / res.prefill_seconds);
      if (res.decode_steps) decode.push_back(static_cast<double>(res.decode_steps) / res.decode_seconds);
      last = std::move(res);
    }
    report(o, csv, n, median(prefill), median(decode));
    report_breakdown(timer, csv, n, 1, median(decode));
    report_kv(o, m, *cache, csv, n, last);
  }
}

void run_batched(const BenchOptions& o, LoadedModel& m, CsvOut& csv) {
  const int64_t B = o.batch, chunk = o.prefill_chunk;
  const int64_t longest = *std::max_element(o.prompt_tokens.begin(), o.prompt_tokens.end());
  const int64_t max_context = m.model->max_context();
  // As the Generator counts: a request of D tokens makes D - 1 forward passes after prefill.
  const int64_t steps = std::max<int64_t>(o.decode_tokens - 1, 0);
  auto max_tokens_for = [&](int64_t n) {
    return std::min(max_context - n, overlap_bound(n, B, chunk) + steps + 1);
  };
  for (int64_t n : o.prompt_tokens)
    if (n >= max_context) fail("--prompt-tokens {} leaves no room to decode in the model's {}-token context", n, max_context);
  auto cache = make_kv_cache(m, o.model, longest + max_tokens_for(longest), B, chunk);
  EngineOptions eo;
  eo.scheduler.max_running = static_cast<int32_t>(B);
  eo.scheduler.max_batched_tokens = std::max<int64_t>(chunk, B);
  eo.prefix_caching = false;  // every prompt is new anyway; no hashing on the way
  eo.overlap_steps = o.model.overlap_steps;
  Engine engine(*m.model, *cache, nullptr, o.model.sparsity, eo);
  spdlog::info("{}", o.model.sparsity.summary());
  std::mt19937 rng(1234);

  print_header(o);
  for (int64_t n : o.prompt_tokens) {
    // Warm-up with short prompts (by default one chunk each): the same kernels and batch
    // shapes, without paying for a second long prefill.
    const int64_t wn = std::min(n, o.warmup_tokens > 0 ? o.warmup_tokens : chunk);
    for (int r = 0; r < o.warmup; ++r)
      run_batch(engine, wn, B, std::min<int64_t>(steps, 4), max_tokens_for(wn), rng);
    std::vector<double> prefill, decode;
    DecodeTimer timer(*m.backend, o.cuda_profile);
    for (int r = 0; r < o.repeats; ++r) {
      const Measurement res = run_batch(engine, n, B, steps, max_tokens_for(n), rng, &timer);
      prefill.push_back(static_cast<double>(n * B) / res.prefill_seconds);
      if (res.decode_steps)
        decode.push_back(static_cast<double>(res.decode_steps * B) / res.decode_seconds);
    }
    report(o, csv, n, median(prefill), median(decode));
    report_breakdown(timer, csv, n, B, median(decode) / static_cast<double>(B));
  }
}

void run_bench(BenchOptions& o) {
  LoadedModel m = load_model(o.model);
  resolve_auto_policy(o.model, m, *std::max_element(o.prompt_tokens.begin(), o.prompt_tokens.end()));
  CsvOut csv(o.csv, o.model.policy == "dense" ? std::string("lserve") : "lserve-" + o.model.policy);
  if (o.batch == 1) run_single(o, m, csv);
  else run_batched(o, m, csv);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill and decode speed on synthetic prompts");
  add_model_options(cmd, o->model);
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "prompt lengths to measure (repeatable)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--decode-tokens", o->decode_tokens, "tokens decoded after each prompt")->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", o->batch,
                  "sequences decoded together (1: one sequence through the generator; more: the batching engine, "
                  "decode tokens/s summed over the batch)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--repeats", o->repeats, "timed runs per length (median reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup,
                  "untimed runs before each length's timed ones")
      ->check(CLI::Range(0, 100))->capture_default_str();
  cmd->add_option("--warmup-tokens", o->warmup_tokens,
                  "prompt length of the warm-up runs (default: the measured length with --batch 1, one prefill "
                  "chunk above)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "prompt tokens per forward pass")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "one JSON object per line instead of a table");
  cmd->add_flag("--cuda-profile", o->cuda_profile,
                "with --device cuda: run each decode step between cudaProfilerStart and cudaProfilerStop, so that "
                "`ncu --profile-from-start off` sees only the decode steps");
  cmd->add_option("--csv", o->csv, "also append rows system,case,context,batch,value,unit to this file");
  add_bench_serve_command(*cmd);
  cmd->callback([o, cmd] {
    if (cmd->got_subcommand("serve")) return;  // `bench serve` ran instead
    finish_sparsity(o->model);
    run_bench(*o);
  });
}

}  // namespace lserve::cli
