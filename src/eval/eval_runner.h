// The evaluation run: every sample of a grid (tasks x lengths x depths x samples) built and
// tokenized, submitted at once to the Engine (greedy, the spec's token limit, the model's end
// tokens), the continuations collected and scored, and the results counted per
// (task, length, depth).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "eval/eval_tasks.h"
#include "eval/haystack.h"
#include "model/tokenizer.h"

namespace lserve::eval {

struct EvalGrid {
  std::vector<Task> tasks;
  std::vector<int64_t> lengths;       // target prompt tokens
  std::vector<int> depths_permille;   // 0..1000
  int64_t samples = 1;                // per (task, length, depth) cell: indices 0..samples-1
  uint64_t seed = 0;

  std::vector<SampleKey> keys() const;  // task, then length, then depth, then index
};

struct PreparedSample {
  Sample sample;
  std::vector<int32_t> prompt;  // <|begin_of_text|> + the encoding of the prompt text
};

// Builds every sample of the grid with the tokenizer counting tokens (spec: "Length").
std::vector<PreparedSample> prepare_samples(const EvalGrid& grid, const Haystack& haystack, const Tokenizer& tokenizer);

struct GenerationSettings {
  int64_t max_new_tokens = kMaxNewTokens;
  std::vector<int32_t> eos_token_ids;  // the model's end tokens
};

struct SampleOutcome {
  SampleKey key;
  int64_t prompt_tokens = 0;
  std::string answer;
  std::string continuation;  // decoded, before the end token
  int64_t generated_tokens = 0;
  bool correct = false;
};

struct CellResult {
  Task task = Task::Passkey;
  int64_t length = 0;
  int depth_permille = 0;
  int64_t correct = 0;
  int64_t total = 0;
};

struct EvalResults {
  std::vector<SampleOutcome> samples;  // in the order of the prepared samples
  double seconds = 0;                  // generation wall time
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
};

struct EvalProgress {
  int64_t done = 0, total = 0, correct = 0;  // samples
  int64_t tokens_computed = 0;               // prompt + generated tokens the engine has computed
  int64_t prompt_tokens_total = 0;
  double elapsed_seconds = 0;
};
using ProgressFn = std::function<void(const EvalProgress&)>;

// Runs the samples on `engine` (driven on the calling thread; it must not be start()ed) and
// scores them. `progress` is called after every engine step and once at the end. Throws
// Error if the engine refuses a request or ends one with an error.
EvalResults run_samples(Engine& engine, const Tokenizer& tokenizer, const std::vector<PreparedSample>& samples,
                        const GenerationSettings& settings, const ProgressFn& progress = {});

// Counts outcomes per cell of the grid (cells without outcomes have total 0).
std::vector<CellResult> tally(const EvalGrid& grid, const std::vector<SampleOutcome>& outcomes);

}  // namespace lserve::eval
