// The long-context evaluation tasks of docs/eval_tasks.md (passkey, niah, multikey, multivalue,
// kv, vartrack): for a (seed, task, length, depth, index) the sample's needles, haystack span,
// needle slots, prompt text and answer, and the exact-match score of a continuation. The
// specification is the reference; python/eval_tasks.py implements the same and the tests hold
// the two together.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "eval/haystack.h"
#include "eval/splitmix64.h"

namespace lserve::eval {

// The values are the task numbers the sample seeds mix in.
enum class Task { Passkey = 1, Niah = 2, Multikey = 3, Multivalue = 4, Kv = 5, Vartrack = 6 };
inline constexpr std::array<Task, 6> kAllTasks = {Task::Passkey,    Task::Niah, Task::Multikey,
                                                   Task::Multivalue, Task::Kv,   Task::Vartrack};

std::string_view task_name(Task task);               // "passkey", "niah", ...
std::optional<Task> parse_task(std::string_view name);
int needle_count(Task task);                         // needles per sample in the evaluation

inline constexpr int64_t kMaxNewTokens = 64;         // the spec's generation limit

// A depth fraction as the spec's integer permille: round(1000 d) (half to even, as Python's
// round), clamped to 0..1000.
int depth_permille(double fraction);

struct SampleKey {
  Task task = Task::Passkey;
  int64_t length = 0;      // L: target prompt tokens
  int depth_permille = 0;  // D: 0..1000
  uint64_t index = 0;      // i

  friend bool operator==(const SampleKey&, const SampleKey&) = default;
};

uint64_t sample_state(uint64_t seed, const SampleKey& key);

// What a task draws after the haystack start: the needles (target first), the question and,
// except for multivalue (whose answer follows the needles' text order), the answer.
struct TaskDraws {
  std::vector<std::string> needles;
  std::string question;
  std::string answer;               // empty for multivalue
  std::vector<std::string> values;  // multivalue: the numbers of needles 0..c-1
};
TaskDraws draw_task(Task task, SplitMix64& rng);

struct PlacedNeedle {
  int64_t slot = 0;   // before haystack sentence `slot` (n: after the last one)
  int needle = 0;     // j: 0 is the target
  std::string text;
};

struct Sample {
  SampleKey key;
  uint64_t initial_state = 0;
  int64_t start = 0;                  // first haystack line
  int64_t sentences = 0;              // n: lines start, start+1, ... (mod N)
  std::vector<PlacedNeedle> needles;  // in text order
  std::string question;
  std::string answer;
  int64_t counted_tokens = 0;         // 1 (BOS) + needles + haystack + question, as the spec counts

  // Everything after <|begin_of_text|>.
  std::string prompt_text(const Haystack& haystack) const;
  // The haystack sentences and needles in text order.
  std::vector<std::string_view> items(const Haystack& haystack) const;
};

Sample make_sample(const Haystack& haystack, uint64_t seed, const SampleKey& key);

// The spec's scoring: the continuation (already cut before the end token) up to its first
// newline, stripped of surrounding whitespace, equals the answer exactly.
bool score(std::string_view continuation, std::string_view answer);

}  // namespace lserve::eval
