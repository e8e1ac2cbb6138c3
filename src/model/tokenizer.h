// Tokenizer: Hugging Face tokenizer.json byte-level BPE tokenizers (Llama-3, Qwen2/3, GPT-2 and
// their kin), giving the same ids as Hugging Face tokenizers, plus a streaming detokenizer.
//
// encode(): added tokens are cut out of the text first (longest match, honoring lstrip, rstrip,
// single_word and normalized), then each stretch between them is normalized, pre-tokenized and
// merged by BPE. Text that is not valid UTF-8 is repaired first: each ill-formed byte sequence
// becomes U+FFFD, as Python's bytes.decode(errors="replace") would have done before a Hugging
// Face tokenizer ever saw the text.
//
// A Tokenizer is immutable and thread-safe; copies are cheap and share their tables.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lserve {

class Tokenizer {
 public:
  // Loads dir/tokenizer.json, and dir/tokenizer_config.json when present (bos/eos tokens; the
  // rest stays readable through config()). Throws Error with a one-line message naming the file
  // and the problem (missing, not JSON, unsupported model / pre-tokenizer / normalizer, merges
  // that refer to unknown tokens, ...).
  static Tokenizer from_dir(const std::filesystem::path& dir);
  // The same from text in memory (tests, fuzzing); `source_name` stands for the file in errors.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view source_name);
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view source_name,
                             std::string_view config_json, std::string_view config_name);

  // add_special_tokens applies the post_processor's template (Llama-3's prepends
  // <|begin_of_text|>); false gives the raw ids, like Hugging Face's add_special_tokens=False.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Invalid ids throw Error. Bytes that do not form UTF-8 come out as U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // What decode(encode(text)) gives back: `text` with invalid UTF-8 repaired and the normalizer
  // applied to the stretches between added tokens.
  std::string normalize(std::string_view text) const;

  int32_t vocab_size() const;  // largest id over the vocabulary and the added tokens, plus one
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // as tokenizer.json spells it; throws for invalid ids
  bool is_special(int32_t id) const;          // an added token marked "special"
  std::optional<int32_t> bos_id() const;      // tokenizer_config.json's bos_token, if any
  std::optional<int32_t> eos_id() const;      // tokenizer_config.json's eos_token, if any
  // tokenizer_config.json as parsed (an empty object without one); include <nlohmann/json.hpp>.
  const nlohmann::json& config() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class IncrementalDecoder;
};

// Streaming detokenizer: push ids one at a time and get the text they completed. It never emits
// half a UTF-8 character: bytes that may still become one are held back until the next push.
// Byte sequences that can no longer become valid are emitted as U+FFFD right away, so the pieces
// of push()... + flush() always add up to decode() of the same ids.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);  // throws Error for an invalid id
  std::string flush();           // the held-back rest (an incomplete character becomes U+FFFD)

 private:
  std::shared_ptr<const Tokenizer::Impl> impl_;  // shared: the decoder may outlive the Tokenizer
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace lserve
