#include "eval/eval_tasks.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/error.h"
#include "eval/python_strip.h"

namespace lserve::eval {

namespace {

// ADJ and NOUN of the specification, index 0 to 63 in this order.
constexpr std::string_view kAdjectives =
    "amber ancient azure bitter bold brave bright calm clever cold crimson curious dark eager early "
    "electric empty fancy fierce frozen gentle giant golden grand green happy hidden hollow humble "
    "icy jolly kind late lazy little lively lucky misty modern noble odd orange pale patient polite "
    "proud quick quiet rapid rough royal rustic scarlet shiny silent silver sleepy smooth solid "
    "steady swift tender wild young";
constexpr std::string_view kNouns =
    "anchor apple arrow badger banner basket beacon bridge bucket candle canyon castle cedar comet "
    "copper coral dragon eagle ember falcon feather forest fountain garden glacier harbor hammer "
    "island jacket jungle kettle lantern lemon meadow mirror monkey needle ocean orchid otter panther "
    "pebble pepper pillow planet pocket rabbit river rocket saddle shadow spider spoon squirrel "
    "thunder tiger tower tulip valley violin walnut whale willow window";
constexpr std::string_view kHex = "0123456789abcdef";
constexpr std::string_view kUpper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

std::vector<std::string_view> words(std::string_view text) {
  std::vector<std::string_view> out;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find(' ', begin);
    if (end == std::string_view::npos) end = text.size();
    out.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return out;
}

const std::vector<std::string_view>& adjectives() {
  static const std::vector<std::string_view> w = words(kAdjectives);
  return w;
}
const std::vector<std::string_view>& nouns() {
  static const std::vector<std::string_view> w = words(kNouns);
  return w;
}

// ---- values ----------------------------------------------------------------------------------

std::string number7(SplitMix64& rng) { return std::to_string(1000000 + rng.below(9000000)); }

std::string word_key(SplitMix64& rng) {
  const std::string_view adj = adjectives()[rng.below(64)];  // the adjective is drawn first
  const std::string_view noun = nouns()[rng.below(64)];
  return fmt::format("{}-{}", adj, noun);
}

std::string hex_id(SplitMix64& rng) {
  std::string d;
  for (int k = 0; k < 16; ++k) d += kHex[rng.below(16)];
  return d.substr(0, 8) + "-" + d.substr(8, 4) + "-" + d.substr(12, 4);
}

std::string var_name(SplitMix64& rng) {
  std::string s;
  for (int k = 0; k < 5; ++k) s += kUpper[rng.below(26)];
  return s;
}

// `count` values of draw(rng), each redrawn while it equals an earlier one.
template <typename Draw>
std::vector<std::string> distinct(SplitMix64& rng, Draw draw, int count) {
  std::vector<std::string> out;
  while (static_cast<int>(out.size()) < count) {
    std::string v = draw(rng);
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(std::move(v));
  }
  return out;
}

template <typename Draw>
std::vector<std::string> repeated(SplitMix64& rng, Draw draw, int count) {
  std::vector<std::string> out;
  for (int k = 0; k < count; ++k) out.push_back(draw(rng));
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string s;
  for (size_t k = 0; k < parts.size(); ++k) s += (k ? std::string(sep) : std::string()) + parts[k];
  return s;
}

}  // namespace

std::string_view task_name(Task task) {
  switch (task) {
    case Task::Passkey: return "passkey";
    case Task::Niah: return "niah";
    case Task::Multikey: return "multikey";
    case Task::Multivalue: return "multivalue";
    case Task::Kv: return "kv";
    case Task::Vartrack: return "vartrack";
  }
  return "?";
}

std::optional<Task> parse_task(std::string_view name) {
  for (Task t : kAllTasks)
    if (task_name(t) == name) return t;
  return std::nullopt;
}

int needle_count(Task task) {
  switch (task) {
    case Task::Passkey:
    case Task::Niah: return 1;
    case Task::Multikey:
    case Task::Multivalue: return 4;
    case Task::Kv: return 6;
    case Task::Vartrack: return 5;
  }
  return 1;
}

int depth_permille(double fraction) {
  const double d = std::nearbyint(1000.0 * fraction);  // the default rounding mode: half to even
  return static_cast<int>(std::clamp(d, 0.0, 1000.0));
}

uint64_t sample_state(uint64_t seed, const SampleKey& key) {
  return sample_state(seed, static_cast<uint64_t>(key.task), static_cast<uint64_t>(key.length),
                      static_cast<uint64_t>(key.depth_permille), key.index);
}

TaskDraws draw_task(Task task, SplitMix64& rng) {
  const int c = needle_count(task);
  TaskDraws d;
  switch (task) {
    case Task::Passkey: {
      const std::string v = number7(rng);
      d.needles = {fmt::format("The pass key is {}. Remember it.", v)};
      d.question = "What is the pass key? Answer:";
      d.answer = v;
      break;
    }
    case Task::Niah:
    case Task::Multikey: {
      const std::vector<std::string> keys = distinct(rng, word_key, c);
      const std::vector<std::string> vals = repeated(rng, number7, c);
      for (int j = 0; j < c; ++j) d.needles.push_back(fmt::format("The special magic number for {} is: {}.", keys[j], vals[j]));
      d.question = fmt::format("What is the special magic number for {}? Answer:", keys[0]);
      d.answer = vals[0];
      break;
    }
    case Task::Multivalue: {
      const std::string key = word_key(rng);
      d.values = distinct(rng, number7, c);
      for (const std::string& v : d.values) d.needles.push_back(fmt::format("The special magic number for {} is: {}.", key, v));
      d.question = fmt::format("What are all the special magic numbers for {}? Answer:", key);
      break;
    }
    case Task::Kv: {
      const std::vector<std::string> keys = distinct(rng, hex_id, c);
      const std::vector<std::string> vals = repeated(rng, hex_id, c);
      for (int j = 0; j < c; ++j) d.needles.push_back(fmt::format("The value for key {} is {}.", keys[j], vals[j]));
      d.question = fmt::format("What is the value for key {}? Answer:", keys[0]);
      d.answer = vals[0];
      break;
    }
    case Task::Vartrack: {
      const std::string v = number7(rng);
      const std::vector<std::string> names = distinct(rng, var_name, c);
      d.needles.push_back(fmt::format("VAR {} = {}.", names[0], v));
      for (int j = 1; j < c; ++j) d.needles.push_back(fmt::format("VAR {} = VAR {}.", names[j], names[j - 1]));
      d.question = fmt::format("Which variables are assigned the value {}? Answer:", v);
      d.answer = join(names, " ");
      break;
    }
  }
  return d;
}

Sample make_sample(const Haystack& haystack, uint64_t seed, const SampleKey& key) {
  LSERVE_CHECK(key.depth_permille >= 0 && key.depth_permille <= 1000, "depth {} permille", key.depth_permille);
  Sample s;
  s.key = key;
  s.initial_state = sample_state(seed, key);
  SplitMix64 rng(s.initial_state);
  s.start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(haystack.size())));
  TaskDraws d = draw_task(key.task, rng);
  s.question = std::move(d.question);

  int64_t fixed = 1 + haystack.text_cost("\n\n" + s.question);
  for (const std::string& n : d.needles) fixed += haystack.text_cost(" " + n);
  const Haystack::Fill fill = haystack.fill(s.start, key.length - fixed);
  s.sentences = fill.sentences;
  s.counted_tokens = fixed + fill.tokens;

  // Slots in needle order, all arithmetic unsigned as the spec says.
  const auto n = static_cast<uint64_t>(s.sentences);
  const auto D = static_cast<uint64_t>(key.depth_permille);
  const auto c = static_cast<uint64_t>(d.needles.size());
  std::vector<uint64_t> slots(c);
  for (uint64_t j = 0; j < c; ++j) {
    if (key.task == Task::Vartrack) {
      const uint64_t p = D + (1000 - D) * j / c;
      slots[j] = (p * n + 500) / 1000;
    } else {
      slots[j] = j == 0 ? (D * n + 500) / 1000 : rng.below(n + 1);
    }
  }
  std::vector<int> order(c);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return slots[a] < slots[b]; });
  for (int j : order) s.needles.push_back({static_cast<int64_t>(slots[j]), j, d.needles[j]});

  if (key.task == Task::Multivalue) {
    std::vector<std::string> in_text_order;
    for (int j : order) in_text_order.push_back(d.values[j]);
    s.answer = join(in_text_order, ", ");
  } else {
    s.answer = std::move(d.answer);
  }
  return s;
}

std::vector<std::string_view> Sample::items(const Haystack& haystack) const {
  std::vector<std::string_view> out;
  out.reserve(static_cast<size_t>(sentences) + needles.size());
  size_t j = 0;
  for (int64_t k = 0; k <= sentences; ++k) {
    while (j < needles.size() && needles[j].slot == k) out.push_back(needles[j++].text);
    if (k < sentences) out.push_back(haystack.line(start + k));
  }
  return out;
}

std::string Sample::prompt_text(const Haystack& haystack) const {
  std::string text;
  for (std::string_view item : items(haystack)) {
    text += ' ';
    text += item;
  }
  text += "\n\n";
  text += question;
  return text;
}

bool score(std::string_view continuation, std::string_view answer) {
  const size_t newline = continuation.find('\n');
  if (newline != std::string_view::npos) continuation = continuation.substr(0, newline);
  return python_strip(continuation) == answer;
}

}  // namespace lserve::eval
