// What `lserve eval` prints: the accuracy table (per task x length, and per depth) and the same
// counts as JSON, with the attention policy and its knobs.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "eval/eval_runner.h"
#include "sparse/sparsity_config.h"

namespace lserve::eval {

struct EvalReport {
  std::string model;  // as given on the command line
  SparsityConfig sparsity;
  int64_t streaming_kv_heads = 0, kv_heads = 0;  // over all layers
  EvalGrid grid;
  int64_t max_new_tokens = kMaxNewTokens;
  std::vector<CellResult> cells;  // tally(grid, ...)
  double seconds = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

struct Count {
  int64_t correct = 0, total = 0;
  double accuracy() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
  Count& operator+=(const CellResult& c) {
    correct += c.correct;
    total += c.total;
    return *this;
  }
};

// "0%", "12.5%", "100%": a depth in permille as a percentage.
std::string depth_label(int depth_permille);
// "1K", "16K" for multiples of 1024, else the number.
std::string length_label(int64_t length);

std::string format_table(const EvalReport& report);
nlohmann::json to_json(const EvalReport& report);
nlohmann::json sparsity_json(const SparsityConfig& sparsity);

}  // namespace lserve::eval
