// Byte-level BPE, the model behind GPT-2, Llama-3 and Qwen tokenizers: the byte <-> printable
// character table that lets a vocabulary of strings cover every byte sequence, UTF-8 repair for
// the bytes that decoding produces, and the merge loop that turns one pre-token into token ids.
//
// The model works on raw bytes throughout: vocabulary strings are translated back to bytes once
// at load time, so encoding never builds the mapped strings that tokenizer.json spells.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lserve {

// --- GPT-2's byte table -------------------------------------------------------------------------
// Printable bytes map to themselves; the other 68 (controls, space, 0x7f-0xa0, 0xad) map to
// U+0100.. in byte order, so every byte has a visible, non-whitespace stand-in character.
uint32_t byte_to_codepoint(uint8_t byte);
// The byte a stand-in character stands for, or nullopt for characters outside the table.
std::optional<uint8_t> codepoint_to_byte(uint32_t codepoint);
// Raw bytes -> the UTF-8 string of their stand-ins (how tokenizer.json spells tokens).
std::string bytes_to_byte_level(std::string_view bytes);
// The inverse; nullopt if a character is outside the table (or the input is not UTF-8).
std::optional<std::string> byte_level_to_bytes(std::string_view token);

// --- UTF-8 ----------------------------------------------------------------------------------------
// Appends `in` to `out`, replacing each ill-formed subsequence with U+FFFD the way Python's
// errors="replace", Rust's from_utf8_lossy and WHATWG's TextDecoder do (one U+FFFD per maximal
// subpart). If `final` is false, a truncated sequence at the very end is left unconsumed so it
// can be completed by later bytes. Returns how many bytes of `in` were consumed.
size_t append_utf8_lossy(std::string_view in, std::string& out, bool final = true);
bool is_valid_utf8(std::string_view text);
// Appends the UTF-8 encoding of a code point (which must be a Unicode scalar value).
void append_utf8(uint32_t codepoint, std::string& out);
// Decodes the code point starting at text[pos] of valid UTF-8 and advances pos past it.
uint32_t next_codepoint(std::string_view text, size_t& pos);

// --- The BPE model ---------------------------------------------------------------------------------
class WordCache;

class BpeModel {
 public:
  // Builds the model from tokenizer.json's "model" object. `where` names the file in errors.
  static BpeModel from_json(const nlohmann::json& model, std::string_view where);
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  ~BpeModel();

  // Appends the ids of one pre-token, given as raw bytes. Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  // One more than the largest id of the vocabulary.
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  // The token of an id as tokenizer.json spells it; nullptr for ids the vocabulary skips.
  const std::string* token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;

 private:
  BpeModel();
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  // The merge of two adjacent tokens, if the merge list has one: its rank and its result.
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  std::optional<Merge> find_merge(int32_t left, int32_t right) const;

  struct Maps;                       // string-keyed hash maps, kept out of this header
  std::vector<std::string> tokens_;  // by id; empty for ids the vocabulary skips
  std::vector<bool> has_token_;
  std::unique_ptr<Maps> maps_;
  std::array<int32_t, 256> byte_ids_{};  // id of each single-byte token, -1 if the vocab lacks it
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  // Open-addressing hash table keyed by the (left id, right id) pair.
  struct MergeSlot {
    uint64_t key;
    Merge merge;
  };
  std::vector<MergeSlot> merges_;
  uint64_t merge_mask_ = 0;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace lserve
