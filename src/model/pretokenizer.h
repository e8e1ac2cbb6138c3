// Text preparation before BPE, as tokenizer.json's "normalizer" and "pre_tokenizer" sections
// describe it: Unicode normalization (NFC and friends), then cutting the text into words with
// regex Splits and the GPT-2 ByteLevel step. Results match Hugging Face tokenizers (Rust), whose
// regexes are Oniguruma's; translate_regex() bridges the differences to PCRE2.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lserve {

class Normalizer {
 public:
  // From tokenizer.json's "normalizer": null, NFC/NFD/NFKC/NFKD, or a Sequence of them.
  // Throws Error naming `where` for anything else. fast_paths = false hands all text to utf8proc
  // instead of only the stretches NFC may change (tests compare the two).
  static Normalizer from_json(const nlohmann::json& config, std::string_view where, bool fast_paths = true);

  bool empty() const { return forms_.empty(); }
  // Normalizes valid UTF-8 text.
  std::string normalize(std::string_view text) const;

 private:
  enum class Form : uint8_t { NFC, NFD, NFKC, NFKD };
  std::vector<Form> forms_;
  bool fast_paths_ = true;
};

class PreTokenizer {
 public:
  // From tokenizer.json's "pre_tokenizer": Split, ByteLevel, or a Sequence of them, where a
  // ByteLevel step, if any, comes last. Throws Error naming `where` for anything else.
  // fast_paths = false forces the PCRE2 matcher even for the patterns that have a hand-written
  // splitter (tests compare the two).
  static PreTokenizer from_json(const nlohmann::json& config, std::string_view where, bool fast_paths = true);
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Whether the last step is ByteLevel (the words then go to a byte-level BPE as raw bytes).
  bool ends_with_byte_level() const;

  // Appends the words of valid UTF-8 `text`: views into `text`, or into `storage` for words
  // that a step had to build (ByteLevel's add_prefix_space). Thread-safe.
  void split(std::string_view text, std::vector<std::string_view>& words, std::deque<std::string>& storage) const;

  struct Step;

 private:
  PreTokenizer();
  std::vector<std::unique_ptr<Step>> steps_;
  bool byte_level_ = false;
};

// Rewrites a Hugging Face (Oniguruma) pattern into PCRE2 syntax with the same meaning under
// PCRE2_UTF | PCRE2_UCP: \s becomes Oniguruma's exact whitespace set, \p{L} / \p{N} / \d gain
// the characters Unicode assigned after PCRE2's tables were built, \h is Oniguruma's hex digit,
// and \uHHHH becomes \x{HHHH}. Caseless groups stay as they are: PCRE2 folds case the way
// Oniguruma does for single characters ('s' also matches 'ſ'). Throws Error for constructs it
// cannot keep exact (\S or a negated property inside a character class).
std::string translate_regex(std::string_view pattern);

}  // namespace lserve
