#include "eval/eval_runner.h"

#include <chrono>
#include <map>
#include <tuple>

#include "core/error.h"

namespace lserve::eval {

namespace {

using Clock = std::chrono::steady_clock;

int32_t begin_of_text_id(const Tokenizer& tokenizer) {
  if (auto id = tokenizer.token_to_id("<|begin_of_text|>")) return *id;
  if (auto id = tokenizer.bos_id()) return *id;
  fail("the tokenizer has no <|begin_of_text|> or BOS token, which the evaluation prompts start with");
}

struct Collected {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::Length;
  std::string error;
  bool finished = false;
};

}  // namespace

std::vector<SampleKey> EvalGrid::keys() const {
  std::vector<SampleKey> out;
  for (Task t : tasks)
    for (int64_t L : lengths)
      for (int D : depths_permille)
        for (int64_t i = 0; i < samples; ++i) out.push_back({t, L, D, static_cast<uint64_t>(i)});
  return out;
}

std::vector<PreparedSample> prepare_samples(const EvalGrid& grid, const Haystack& haystack, const Tokenizer& tokenizer) {
  const int32_t bos = begin_of_text_id(tokenizer);
  std::vector<PreparedSample> out;
  for (const SampleKey& key : grid.keys()) {
    PreparedSample p{make_sample(haystack, grid.seed, key), {bos}};
    const std::vector<int32_t> ids = tokenizer.encode(p.sample.prompt_text(haystack), /*add_special_tokens=*/false);
    p.prompt.insert(p.prompt.end(), ids.begin(), ids.end());
    out.push_back(std::move(p));
  }
  return out;
}

EvalResults run_samples(Engine& engine, const Tokenizer& tokenizer, const std::vector<PreparedSample>& samples,
                        const GenerationSettings& settings, const ProgressFn& progress) {
  const auto t0 = Clock::now();
  std::vector<Collected> collected(samples.size());
  EvalProgress state;
  state.total = static_cast<int64_t>(samples.size());
  for (const PreparedSample& s : samples) state.prompt_tokens_total += static_cast<int64_t>(s.prompt.size());

  for (size_t k = 0; k < samples.size(); ++k) {
    RequestParams p;
    p.prompt = samples[k].prompt;
    p.max_tokens = settings.max_new_tokens;
    p.sampling = SamplingParams{};  // greedy
    p.eos_token_ids = settings.eos_token_ids;
    p.skip_special_tokens = false;
    const std::string& answer = samples[k].sample.answer;
    try {
      engine.submit(std::move(p), [&collected, &state, &tokenizer, &answer, k](RequestOutput&& o) {
        Collected& c = collected[k];
        c.tokens.insert(c.tokens.end(), o.tokens.begin(), o.tokens.end());
        if (!o.finished) return;
        c.finished = true;
        c.reason = o.finish_reason;
        c.error = std::move(o.error);
        ++state.done;
        if (score(tokenizer.decode(c.tokens), answer)) ++state.correct;
      });
    } catch (const InvalidRequest& e) {
      const SampleKey& key = samples[k].sample.key;
      fail("{} sample at length {}, depth {} permille, index {}: {}", task_name(key.task), key.length,
           key.depth_permille, key.index, e.what());
    }
  }

  const auto report = [&] {
    if (!progress) return;
    const EngineStats st = engine.stats();
    state.tokens_computed = st.prompt_tokens + st.generation_tokens;
    state.elapsed_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    progress(state);
  };
  while (state.done < state.total && engine.step()) report();
  engine.run_until_idle();  // nothing left to do unless a step found no work while requests remained
  report();

  EvalResults r;
  for (size_t k = 0; k < samples.size(); ++k) {
    const Collected& c = collected[k];
    const Sample& s = samples[k].sample;
    if (!c.finished || c.reason == FinishReason::Error || c.reason == FinishReason::Abort)
      fail("{} sample at length {}, depth {} permille, index {} did not finish: {}", task_name(s.key.task),
           s.key.length, s.key.depth_permille, s.key.index, c.error.empty() ? "aborted" : c.error);
    SampleOutcome o;
    o.key = s.key;
    o.prompt_tokens = static_cast<int64_t>(samples[k].prompt.size());
    o.answer = s.answer;
    o.continuation = tokenizer.decode(c.tokens);
    o.generated_tokens = static_cast<int64_t>(c.tokens.size());
    o.correct = score(o.continuation, o.answer);
    r.prompt_tokens += o.prompt_tokens;
    r.generated_tokens += o.generated_tokens;
    r.samples.push_back(std::move(o));
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

std::vector<CellResult> tally(const EvalGrid& grid, const std::vector<SampleOutcome>& outcomes) {
  std::vector<CellResult> cells;
  std::map<std::tuple<Task, int64_t, int>, size_t> index;
  for (Task t : grid.tasks)
    for (int64_t L : grid.lengths)
      for (int D : grid.depths_permille) {
        index[{t, L, D}] = cells.size();
        cells.push_back({t, L, D, 0, 0});
      }
  for (const SampleOutcome& o : outcomes) {
    const auto it = index.find({o.key.task, o.key.length, o.key.depth_permille});
    if (it == index.end()) continue;
    CellResult& c = cells[it->second];
    ++c.total;
    c.correct += o.correct ? 1 : 0;
  }
  return cells;
}

}  // namespace lserve::eval
