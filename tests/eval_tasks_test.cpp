// The evaluation tasks (src/eval) against their specification, docs/eval_tasks.md, and its
// reference implementation, python/eval_tasks.py: the random numbers, the values each task
// draws, the haystack filling and needle placement, the prompt text, and the scoring rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "eval/eval_runner.h"
#include "eval/eval_tasks.h"
#include "eval/haystack.h"
#include "model/tokenizer.h"
#include "test_util.h"

namespace lserve::eval {
namespace {

const std::filesystem::path kHaystack = test::source_dir() / "eval" / "haystack.txt";
const std::filesystem::path kModel = test::source_dir() / "models" / "lserve-tiny-16k";

// A tokenizer-free cost: whitespace-separated words (Python's len(s.split())).
int64_t word_cost(std::string_view s) {
  std::istringstream in{std::string(s)};
  int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

// FNV-1a over the UTF-8 bytes, the digest the Python snippets below print.
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

const Haystack& word_haystack() {
  static const Haystack h = Haystack::load(kHaystack, word_cost);
  return h;
}

const Tokenizer& tokenizer() {
  static const Tokenizer t = Tokenizer::from_dir(kModel);
  return t;
}

const Haystack& token_haystack() {
  static const Haystack h = Haystack::load(kHaystack, tokenizer_cost(tokenizer()));
  return h;
}

std::vector<int64_t> slots_of(const Sample& s) {
  std::vector<int64_t> out;
  for (const PlacedNeedle& n : s.needles) out.push_back(n.slot);
  return out;
}

// ---- the specification's test vectors ---------------------------------------------------------

TEST(EvalTasks, SplitMix64MatchesTheSpecVectors) {
  SplitMix64 a(0);
  EXPECT_EQ(a.next(), 16294208416658607535ull);
  EXPECT_EQ(a.next(), 7960286522194355700ull);
  EXPECT_EQ(a.next(), 487617019471545679ull);
  SplitMix64 b(12345);
  for (uint64_t want : {944, 597, 405, 450, 363}) EXPECT_EQ(b.below(1000), want);
}

TEST(EvalTasks, HaystackHasTheCheckedInLineCount) { EXPECT_EQ(word_haystack().size(), 19482); }

// `python3 python/eval_tasks.py vectors` (seed 7, L 4096, D 500, i 3), as in the spec's table.
TEST(EvalTasks, SeedsStartsNeedlesAndAnswersMatchThePythonVectors) {
  struct Vector {
    Task task;
    uint64_t state;
    int64_t start;
    const char* needle0;
    const char* answer;  // empty: multivalue (its order depends on the slots)
  };
  const Vector vectors[] = {
      {Task::Passkey, 0xce0be6169c5a8f2cull, 4752, "The pass key is 2511803. Remember it.", "2511803"},
      {Task::Niah, 0x0e2691fd18f2dbc0ull, 15438, "The special magic number for polite-copper is: 5054169.", "5054169"},
      {Task::Multikey, 0x214f7718088c066aull, 15518, "The special magic number for proud-needle is: 5470558.", "5470558"},
      {Task::Multivalue, 0xa17013e4451fb7c4ull, 9764, "The special magic number for grand-banner is: 8271501.", ""},
      {Task::Kv, 0x3ca0724037332984ull, 4290, "The value for key d3cb760b-c70c-aa2e is 137a008e-63a4-c0b4.",
       "137a008e-63a4-c0b4"},
      {Task::Vartrack, 0x75ccdbcedb6e824full, 9514, "VAR TWULN = 2862629.", "TWULN USYHR LMBFI LLWTZ TVDNH"},
  };
  for (const Vector& v : vectors) {
    SCOPED_TRACE(std::string(task_name(v.task)));
    const SampleKey key{v.task, 4096, 500, 3};
    EXPECT_EQ(sample_state(7, key), v.state);
    SplitMix64 rng(v.state);
    EXPECT_EQ(static_cast<int64_t>(rng.below(19482)), v.start);
    const TaskDraws d = draw_task(v.task, rng);
    ASSERT_EQ(static_cast<int>(d.needles.size()), needle_count(v.task));
    EXPECT_EQ(d.needles[0], v.needle0);
    EXPECT_EQ(d.answer, v.answer);
    const Sample s = make_sample(word_haystack(), 7, key);
    EXPECT_EQ(s.start, v.start);
    if (v.task != Task::Multivalue) {
      EXPECT_EQ(s.answer, v.answer);
    }
  }
}

// Whole samples with the word cost instead of a tokenizer, from python/eval_tasks.py:
//   rng = SplitMix64(sample_seed(7, task, 600, 250, 1))
//   s = make_sample(task, 600, 250, rng, lines, lambda i: len((" " + lines[i]).split()),
//                   lambda t: len(t.split()))
//   print(s.start, s.n, [k for k, _ in s.needles], s.cost, s.answer, len(p), fnv1a(p))
//   with p = s.prompt_text(lines) and fnv1a the 64-bit FNV-1a of its UTF-8 bytes.
struct FullVector {
  Task task;
  int64_t start, sentences;
  std::vector<int64_t> slots;
  int64_t counted;
  const char* answer;
  size_t prompt_chars;  // word cost: prompt_text's length; tokenizer: prompt tokens with BOS
  uint64_t prompt_fnv;
};

TEST(EvalTasks, WholeSamplesMatchPythonWithAWordCost) {
  const FullVector vectors[] = {
      {Task::Passkey, 7206, 32, {8}, 582, "8079367", 3493, 0x93c03e9f65ff8fa6ull},
      {Task::Niah, 3488, 30, {8}, 597, "5169048", 3645, 0xec5604d115194a81ull},
      {Task::Multikey, 8812, 35, {9, 15, 16, 17}, 585, "5162852", 3850, 0x8004ead8906ad68bull},
      {Task::Multivalue, 11325, 39, {10, 10, 20, 22}, 589, "6872494, 4643406, 6179297, 4547912", 3538,
       0x9f3fc4b508ae4ae9ull},
      {Task::Kv, 14415, 33, {4, 8, 12, 13, 16, 25}, 585, "11982bf3-d4a0-7f79", 3738, 0x9a8aa8bde4af395cull},
      {Task::Vartrack, 17561, 38, {10, 15, 21, 27, 32}, 580, "ALNQG YORAJ CWSJC RIGIR QHHBI", 3551,
       0xef59932240882c02ull},
  };
  for (const FullVector& v : vectors) {
    SCOPED_TRACE(std::string(task_name(v.task)));
    const Sample s = make_sample(word_haystack(), 7, {v.task, 600, 250, 1});
    EXPECT_EQ(s.start, v.start);
    EXPECT_EQ(s.sentences, v.sentences);
    EXPECT_EQ(slots_of(s), v.slots);
    EXPECT_EQ(s.counted_tokens, v.counted);
    EXPECT_EQ(s.answer, v.answer);
    const std::string p = s.prompt_text(word_haystack());
    EXPECT_EQ(p.size(), v.prompt_chars);
    EXPECT_EQ(fnv1a(p), v.prompt_fnv);
  }
}

// The same with the model's tokenizer, from python/eval_tasks.py with the cost function
// len(ids) where ids come from `lserve tokenize --tokenizer models/lserve-tiny-16k --jsonl`
// (identical to Hugging Face's), seed 7, L 1024, D 500, i 0; prompt_chars holds here the
// prompt's token count, BOS included.
TEST(EvalTasks, WholeSamplesMatchPythonWithTheModelTokenizer) {
  const FullVector vectors[] = {
      {Task::Passkey, 7781, 36, {18}, 1012, "1939470", 1011, 0x2c2488a451d977d9ull},
      {Task::Niah, 16369, 45, {23}, 1012, "2089085", 1011, 0x32a9c6ad4c75dd5eull},
      {Task::Multikey, 6652, 34, {3, 9, 17, 23}, 984, "7916050", 983, 0x1652b182e7832bc4ull},
      {Task::Multivalue, 19341, 38, {0, 9, 15, 19}, 1015, "2522571, 6713106, 1593805, 6878167", 1014,
       0xd2e253103bbce7d4ull},
      {Task::Kv, 5947, 38, {18, 19, 20, 23, 32, 33}, 1009, "ad6583e5-bb0a-e4bb", 1008, 0x77ad2238d94779bdull},
      {Task::Vartrack, 16997, 42, {21, 25, 29, 34, 38}, 1013, "NQAIA GMMPD NFULO JJGMU CADUM", 1012,
       0x9fb9d2c4c1043885ull},
  };
  EvalGrid grid;
  grid.lengths = {1024};
  grid.depths_permille = {500};
  grid.seed = 7;
  for (const FullVector& v : vectors) grid.tasks.push_back(v.task);
  const std::vector<PreparedSample> prepared = prepare_samples(grid, token_haystack(), tokenizer());
  ASSERT_EQ(prepared.size(), std::size(vectors));
  for (size_t k = 0; k < prepared.size(); ++k) {
    const FullVector& v = vectors[k];
    const Sample& s = prepared[k].sample;
    SCOPED_TRACE(std::string(task_name(v.task)));
    EXPECT_EQ(s.start, v.start);
    EXPECT_EQ(s.sentences, v.sentences);
    EXPECT_EQ(slots_of(s), v.slots);
    EXPECT_EQ(s.counted_tokens, v.counted);
    EXPECT_EQ(s.answer, v.answer);
    EXPECT_EQ(prepared[k].prompt.size(), v.prompt_chars);
    EXPECT_EQ(prepared[k].prompt.front(), *tokenizer().token_to_id("<|begin_of_text|>"));
    EXPECT_EQ(fnv1a(s.prompt_text(token_haystack())), v.prompt_fnv);
  }
}

// ---- length and depth ---------------------------------------------------------------------------

// The prompt has about L tokens: never more than L plus a few (pieces tokenized apart can
// differ at their boundaries), and short of L by less than the line that no longer fit.
TEST(EvalTasks, PromptsHitTheRequestedTokenLength) {
  const Haystack& h = token_haystack();
  for (Task t : kAllTasks)
    for (int64_t L : {1024, 4096})
      for (int D : {0, 330, 1000}) {
        const SampleKey key{t, L, D, 2};
        const Sample s = make_sample(h, 5, key);
        SCOPED_TRACE(fmt::format("{} L {} D {}", task_name(t), L, D));
        EXPECT_LE(s.counted_tokens, L);
        EXPECT_GT(s.counted_tokens + h.line_cost(s.start + s.sentences), L);  // the first line that did not fit
        const auto tokens = static_cast<int64_t>(tokenizer().encode(s.prompt_text(h)).size()) + 1;
        EXPECT_LE(tokens, L + 4);
        EXPECT_LE(std::abs(tokens - s.counted_tokens), 4);
        EXPECT_GT(tokens, L - h.line_cost(s.start + s.sentences) - 4);
      }
}

TEST(EvalTasks, TheNeedleSitsAtTheRequestedDepth) {
  const Haystack& h = token_haystack();
  for (Task t : kAllTasks)
    for (int D : {0, 100, 250, 500, 750, 900, 1000}) {
      const Sample s = make_sample(h, 3, {t, 4096, D, 0});
      SCOPED_TRACE(fmt::format("{} D {}", task_name(t), D));
      ASSERT_GT(s.sentences, 50);
      const auto target = std::find_if(s.needles.begin(), s.needles.end(), [](const PlacedNeedle& n) { return n.needle == 0; });
      ASSERT_NE(target, s.needles.end());
      // The slot is round(D n / 1000) ...
      EXPECT_EQ(target->slot, (D * s.sentences + 500) / 1000);
      // ... so that as many haystack sentences precede the target as the depth says, ...
      const std::vector<std::string_view> items = s.items(h);
      int64_t sentences_before = 0;
      for (const std::string_view item : items) {
        if (item.data() == target->text.data()) break;
        sentences_before += std::none_of(s.needles.begin(), s.needles.end(),
                                         [&](const PlacedNeedle& n) { return n.text.data() == item.data(); });
      }
      EXPECT_EQ(sentences_before, target->slot);
      // ... and the target lies near that fraction of the text (sentences differ in length).
      const std::string prompt = s.prompt_text(h);
      const double at = static_cast<double>(prompt.find(target->text)) / static_cast<double>(prompt.size());
      EXPECT_NEAR(at, D / 1000.0, 0.12);
      if (t == Task::Vartrack) {  // the chain keeps its order, from the depth to the end
        for (size_t j = 0; j < s.needles.size(); ++j) EXPECT_EQ(s.needles[j].needle, static_cast<int>(j));
        EXPECT_LE(s.needles.back().slot, s.sentences);
      }
    }
}

TEST(EvalTasks, MultivalueAnswersInTextOrder) {
  const Haystack& h = word_haystack();
  for (uint64_t i = 0; i < 20; ++i) {
    const Sample s = make_sample(h, 1, {Task::Multivalue, 800, 600, i});
    const std::string prompt = s.prompt_text(h);
    std::string expected;
    size_t pos = 0;
    for (const PlacedNeedle& n : s.needles) {
      const size_t at = prompt.find(n.text, pos);
      ASSERT_NE(at, std::string::npos);
      pos = at + 1;
      const std::string value = n.text.substr(n.text.rfind(' ') + 1, 7);
      expected += (expected.empty() ? "" : ", ") + value;
    }
    EXPECT_EQ(s.answer, expected);
  }
}

TEST(EvalTasks, ATinyBudgetGivesNoHaystack) {
  for (Task t : kAllTasks) {
    const Sample s = make_sample(word_haystack(), 0, {t, 10, 500, 0});
    EXPECT_EQ(s.sentences, 0);
    for (const PlacedNeedle& n : s.needles) EXPECT_EQ(n.slot, 0);
    std::string want;
    for (const PlacedNeedle& n : s.needles) want += " " + n.text;
    EXPECT_EQ(s.prompt_text(word_haystack()), want + "\n\n" + s.question);
  }
}

TEST(EvalTasks, TheHaystackWrapsToItsFirstLine) {
  const Haystack h({"alpha one", "beta two", "gamma three"}, word_cost);
  const Haystack::Fill f = h.fill(2, 7);  // lines 2, 0, 1 cost 2 each; the 4th no longer fits
  EXPECT_EQ(f.sentences, 3);
  EXPECT_EQ(f.tokens, 6);
  EXPECT_EQ(h.line(3), "alpha one");
  EXPECT_EQ(h.fill(0, 0).sentences, 0);
  EXPECT_EQ(h.fill(0, -5).sentences, 0);
  // A sample over it: the prompt is the lines from `start` on, wrapped, with the needle inside.
  const Sample s = make_sample(h, 0, {Task::Passkey, 60, 0, 0});
  EXPECT_GT(s.sentences, 3);
  const std::string prompt = s.prompt_text(h);
  EXPECT_EQ(prompt.rfind(" " + s.needles[0].text, 0), 0u);  // depth 0: before the first sentence
  EXPECT_NE(prompt.find(h.line(s.start) + " " + h.line(s.start + 1)), std::string::npos);
}

TEST(EvalTasks, HaystackLinesAreReadLikePythonTextMode) {
  EXPECT_EQ(haystack_lines("a b\nc\r\nd\re\n\n  \n\t\nf"), (std::vector<std::string>{"a b", "c", "d", "e", "f"}));
  EXPECT_EQ(haystack_lines(" keep  spaces \n"), (std::vector<std::string>{" keep  spaces "}));
  EXPECT_EQ(haystack_lines("\xc2\xa0\nx\n"), (std::vector<std::string>{"x"}));  // U+00A0 only: blank to str.strip()
  EXPECT_TRUE(haystack_lines("").empty());
}

// ---- values, seeds, determinism -----------------------------------------------------------------

TEST(EvalTasks, DepthFractionsRoundHalfToEvenAndClamp) {
  // Python: min(1000, max(0, int(round(d * 1000)))) for the same d.
  EXPECT_EQ(depth_permille(0.0005), 0);
  EXPECT_EQ(depth_permille(0.0015), 2);
  EXPECT_EQ(depth_permille(0.0125), 12);
  EXPECT_EQ(depth_permille(0.0135), 14);
  EXPECT_EQ(depth_permille(0.1234), 123);
  EXPECT_EQ(depth_permille(0.9999), 1000);
  EXPECT_EQ(depth_permille(-0.2), 0);
  EXPECT_EQ(depth_permille(1.7), 1000);
}

TEST(EvalTasks, SamplesAreDeterministicAndDifferPerKey) {
  const Haystack& h = word_haystack();
  for (Task t : kAllTasks) {
    const SampleKey key{t, 700, 400, 5};
    const Sample a = make_sample(h, 99, key), b = make_sample(h, 99, key);
    EXPECT_EQ(a.prompt_text(h), b.prompt_text(h));
    EXPECT_EQ(a.answer, b.answer);
    EXPECT_EQ(slots_of(a), slots_of(b));
    for (const SampleKey& other : {SampleKey{t, 700, 400, 6}, SampleKey{t, 701, 400, 5}, SampleKey{t, 700, 401, 5}}) {
      EXPECT_NE(sample_state(99, other), a.initial_state);
      EXPECT_NE(make_sample(h, 99, other).prompt_text(h), a.prompt_text(h));
    }
    EXPECT_NE(make_sample(h, 98, key).prompt_text(h), a.prompt_text(h));
  }
}

TEST(EvalTasks, ValuesHaveTheirFormats) {
  for (uint64_t i = 0; i < 50; ++i) {
    SplitMix64 rng(i);
    const TaskDraws kv = draw_task(Task::Kv, rng);
    ASSERT_EQ(kv.needles.size(), 6u);
    EXPECT_EQ(kv.answer.size(), 18u);
    EXPECT_EQ(kv.answer[8], '-');
    EXPECT_EQ(kv.answer[13], '-');
    const TaskDraws var = draw_task(Task::Vartrack, rng);
    EXPECT_EQ(var.answer.size(), 5u * 5 + 4);
    const TaskDraws mk = draw_task(Task::Multikey, rng);
    std::vector<std::string> keys;  // distinct keys
    for (const std::string& n : mk.needles) keys.push_back(n.substr(0, n.find(" is:")));
    std::sort(keys.begin(), keys.end());
    EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
    const TaskDraws mv = draw_task(Task::Multivalue, rng);
    std::vector<std::string> values = mv.values;  // distinct values
    std::sort(values.begin(), values.end());
    EXPECT_EQ(std::unique(values.begin(), values.end()), values.end());
    for (const std::string& v : values) {
      EXPECT_EQ(v.size(), 7u);
      EXPECT_GE(v, "1000000");
    }
  }
}

TEST(EvalTasks, TaskNamesRoundTrip) {
  for (Task t : kAllTasks) EXPECT_EQ(parse_task(task_name(t)), t);
  EXPECT_FALSE(parse_task("all").has_value());
  EXPECT_FALSE(parse_task("Passkey").has_value());
}

// ---- scoring ------------------------------------------------------------------------------------

TEST(EvalTasks, ScoringIsExactMatchOfTheFirstLineStripped) {
  EXPECT_TRUE(score(" 4094866", "4094866"));
  EXPECT_TRUE(score("4094866", "4094866"));
  EXPECT_TRUE(score(" \t4094866  \r", "4094866"));
  EXPECT_TRUE(score(" 4094866\nThe pass key is 1.", "4094866"));  // only the first line counts
  EXPECT_TRUE(score("\xc2\xa0" "4094866\xe3\x80\x80", "4094866"));  // Unicode spaces, as str.strip()
  EXPECT_FALSE(score("\n4094866", "4094866"));                     // the first line is empty
  EXPECT_FALSE(score(" 4094866.", "4094866"));
  EXPECT_FALSE(score(" 409486", "4094866"));
  EXPECT_FALSE(score(" 4094866 4094866", "4094866"));
  EXPECT_FALSE(score("", "4094866"));
  EXPECT_TRUE(score(" TWULN USYHR", "TWULN USYHR"));
  EXPECT_FALSE(score(" twuln usyhr", "TWULN USYHR"));  // case-sensitive
  EXPECT_FALSE(score(" TWULN  USYHR", "TWULN USYHR"));
  EXPECT_TRUE(score(" 1, 2, 3\n", "1, 2, 3"));
  EXPECT_FALSE(score(" 2, 1, 3", "1, 2, 3"));
}

TEST(EvalTasks, TallyCountsPerCell) {
  EvalGrid grid;
  grid.tasks = {Task::Passkey, Task::Niah};
  grid.lengths = {1024};
  grid.depths_permille = {0, 500};
  grid.samples = 2;
  EXPECT_EQ(grid.keys().size(), 8u);
  std::vector<SampleOutcome> outcomes;
  for (const SampleKey& k : grid.keys()) {
    SampleOutcome o;
    o.key = k;
    o.correct = k.task == Task::Niah || k.index == 0;
    outcomes.push_back(o);
  }
  const std::vector<CellResult> cells = tally(grid, outcomes);
  ASSERT_EQ(cells.size(), 4u);
  EXPECT_EQ(cells[0].task, Task::Passkey);
  EXPECT_EQ(cells[1].depth_permille, 500);
  EXPECT_EQ(cells[0].correct, 1);
  EXPECT_EQ(cells[0].total, 2);
  EXPECT_EQ(cells[3].correct, 2);
}

}  // namespace
}  // namespace lserve::eval
