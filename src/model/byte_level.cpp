// Byte-level BPE: GPT-2's byte table, lossy UTF-8 decoding, and the merge loop (see byte_level.h).
#include "model/byte_level.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <climits>
#include <functional>
#include <atomic>
#include <cstring>
#include <unordered_map>

#include "core/error.h"

namespace lserve {

// --- GPT-2's byte table -------------------------------------------------------------------------

namespace {

struct ByteTable {
  std::array<uint32_t, 256> to_codepoint{};
  // Stand-ins are all below U+0144; -1 marks code points that stand for no byte.
  std::array<int16_t, 0x144> to_byte{};
};

constexpr ByteTable make_byte_table() {
  ByteTable t;
  for (auto& b : t.to_byte) b = -1;
  uint32_t next_extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = printable ? b : next_extra++;
    t.to_codepoint[b] = cp;
    t.to_byte[cp] = static_cast<int16_t>(b);
  }
  return t;
}

constexpr ByteTable kByteTable = make_byte_table();
static_assert(kByteTable.to_codepoint[' '] == 0x120, "space must map to U+0120 (Ġ)");
static_assert(kByteTable.to_codepoint['\n'] == 0x10A, "newline must map to U+010A (Ċ)");

}  // namespace

uint32_t byte_to_codepoint(uint8_t byte) { return kByteTable.to_codepoint[byte]; }

std::optional<uint8_t> codepoint_to_byte(uint32_t codepoint) {
  if (codepoint >= kByteTable.to_byte.size() || kByteTable.to_byte[codepoint] < 0) return std::nullopt;
  return static_cast<uint8_t>(kByteTable.to_byte[codepoint]);
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) append_utf8(byte_to_codepoint(static_cast<uint8_t>(c)), out);
  return out;
}

std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  if (!is_valid_utf8(token)) return std::nullopt;
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    const auto byte = codepoint_to_byte(next_codepoint(token, pos));
    if (!byte) return std::nullopt;
    out.push_back(static_cast<char>(*byte));
  }
  return out;
}

// --- UTF-8 ----------------------------------------------------------------------------------------

namespace {

// Length of a well-formed sequence that starts with `lead`, and the range its second byte must
// fall in (Unicode's table 3-7: this excludes overlongs, surrogates and code points > U+10FFFF).
// Length 0 marks bytes that never start a sequence.
struct LeadInfo {
  uint8_t length;
  uint8_t second_min;
  uint8_t second_max;
};

constexpr LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The length of the well-formed sequence at in[pos], or the negated length of its maximal
// ill-formed subpart, or 0 if the input ends inside a sequence that could still be completed.
int sequence_length(std::string_view in, size_t pos) {
  const LeadInfo info = lead_info(static_cast<uint8_t>(in[pos]));
  if (info.length == 0) return -1;
  if (info.length == 1) return 1;
  for (int i = 1; i < info.length; ++i) {
    if (pos + i >= in.size()) return 0;
    const auto b = static_cast<uint8_t>(in[pos + i]);
    const uint8_t lo = i == 1 ? info.second_min : 0x80;
    const uint8_t hi = i == 1 ? info.second_max : 0xBF;
    if (b < lo || b > hi) return -i;
  }
  return info.length;
}

}  // namespace

size_t append_utf8_lossy(std::string_view in, std::string& out, bool final) {
  size_t pos = 0;
  while (pos < in.size()) {
    // Runs of ASCII are the common case; copy them in one go.
    size_t ascii_end = pos;
    while (ascii_end < in.size() && static_cast<uint8_t>(in[ascii_end]) < 0x80) ++ascii_end;
    out.append(in.data() + pos, ascii_end - pos);
    pos = ascii_end;
    if (pos == in.size()) break;
    const int len = sequence_length(in, pos);
    if (len > 0) {
      out.append(in.data() + pos, static_cast<size_t>(len));
      pos += static_cast<size_t>(len);
    } else if (len < 0) {
      out.append(kReplacement);
      pos += static_cast<size_t>(-len);
    } else if (final) {  // truncated at the end: the whole remainder is one maximal subpart
      out.append(kReplacement);
      pos = in.size();
    } else {
      break;
    }
  }
  return pos;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int len = sequence_length(text, pos);
    if (len <= 0) return false;
    pos += static_cast<size_t>(len);
  }
  return true;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_codepoint(std::string_view text, size_t& pos) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  const int len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  uint32_t cp = len == 1 ? b0 : len == 2 ? b0 & 0x1F : len == 3 ? b0 & 0x0F : b0 & 0x07;
  for (int i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<uint8_t>(text[pos + i]) & 0x3F);
  pos += static_cast<size_t>(len);
  return cp;
}

// --- Hash maps and the word cache ---------------------------------------------------------------

namespace {

// Lets string-keyed maps be searched with a string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

}  // namespace

struct BpeModel::Maps {
  StringMap token_ids;  // token as spelled in tokenizer.json -> id
  StringMap word_ids;   // raw bytes -> id; filled only for ignore_merges
};

// Remembers the ids of recently seen words: text repeats its words, and one probe of this table
// is much cheaper than merging again. It is direct-mapped like a CPU cache: a word has one slot,
// a newer word evicts an older one, and memory stays fixed. Each slot has its own try-lock, and
// a thread that finds it taken just skips the cache, so concurrent encodes never wait.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 22;
  static constexpr size_t kMaxIds = 8;

  WordCache() : slots_(std::make_unique<Slot[]>(kSlots)) {}

  bool find(std::string_view word, std::vector<int32_t>& out) {
    const uint64_t h = hash(word);
    Slot& slot = slots_[h & (kSlots - 1)];
    if (slot.lock.exchange(true, std::memory_order_acquire)) return false;
    const bool hit = slot.tag == static_cast<uint32_t>(h >> 32) && slot.length == word.size() &&
                     std::memcmp(slot.bytes, word.data(), word.size()) == 0;
    if (hit) out.insert(out.end(), slot.ids, slot.ids + slot.count);
    slot.lock.store(false, std::memory_order_release);
    return hit;
  }

  void insert(std::string_view word, const int32_t* ids, size_t count) {
    if (word.size() > kMaxWordBytes || count > kMaxIds) return;
    const uint64_t h = hash(word);
    Slot& slot = slots_[h & (kSlots - 1)];
    if (slot.lock.exchange(true, std::memory_order_acquire)) return;
    slot.tag = static_cast<uint32_t>(h >> 32);
    slot.length = static_cast<uint8_t>(word.size());
    slot.count = static_cast<uint8_t>(count);
    std::memcpy(slot.bytes, word.data(), word.size());
    std::memcpy(slot.ids, ids, count * sizeof(int32_t));
    slot.lock.store(false, std::memory_order_release);
  }

 private:
  static constexpr size_t kSlots = size_t{1} << 16;  // 4 MiB

  struct alignas(64) Slot {
    std::atomic<bool> lock{false};
    uint8_t length = 0;  // 0: empty (words are never empty)
    uint8_t count = 0;
    uint32_t tag = 0;  // the hash's upper half, to reject most mismatches without memcmp
    char bytes[kMaxWordBytes];
    int32_t ids[kMaxIds];
  };
  static_assert(sizeof(Slot) == 64);

  // A fast multiply-xorshift hash over 8-byte chunks; words are short.
  static uint64_t hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      uint64_t chunk;
      std::memcpy(&chunk, s.data() + i, 8);
      h = (h ^ chunk) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = (h ^ tail) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
  }

  std::unique_ptr<Slot[]> slots_;
};

// --- Loading ---------------------------------------------------------------------------------------

namespace {

// Ids above this are surely a corrupt file; refusing them keeps a typo from allocating gigabytes.
constexpr int64_t kMaxId = (int64_t{1} << 26) - 1;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// A multiplicative hash spreads the structured (left, right) keys over the table.
uint64_t mix(uint64_t key) {
  key ^= key >> 29;
  key *= 0xBF58476D1CE4E5B9ull;
  key ^= key >> 32;
  return key;
}

constexpr uint64_t kEmptySlot = ~uint64_t{0};

bool is_null_or(const nlohmann::json& j, const char* key, auto&& pred) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() || pred(*it);
}

}  // namespace

BpeModel::BpeModel() : maps_(std::make_unique<Maps>()), cache_(std::make_unique<WordCache>()) {
  byte_ids_.fill(-1);
}
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;
BpeModel::~BpeModel() = default;

BpeModel BpeModel::from_json(const nlohmann::json& model, std::string_view where) {
  if (!model.is_object()) fail("{}: \"model\" is not an object", where);
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") fail("{}: unsupported model type \"{}\" (only byte-level BPE is supported)", where, type);
  if (!is_null_or(model, "dropout", [](const auto& v) { return v.is_number() && v.template get<double>() == 0.0; }))
    fail("{}: BPE dropout is not supported (it makes encoding random)", where);
  if (!is_null_or(model, "byte_fallback", [](const auto& v) { return v.is_boolean() && !v.template get<bool>(); }))
    fail("{}: BPE byte_fallback (SentencePiece-style BPE) is not supported", where);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!is_null_or(model, key, [](const auto& v) { return v.is_string() && v.template get<std::string>().empty(); }))
      fail("{}: BPE {} is not supported", where, key);
  }

  BpeModel m;
  m.fuse_unk_ = model.value("fuse_unk", false);
  m.ignore_merges_ = model.value("ignore_merges", false);

  // The vocabulary.
  const auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) fail("{}: model.vocab is missing or not an object", where);
  const auto& vocab = *vocab_it;
  m.maps_->token_ids.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 || id_json.get<int64_t>() > kMaxId)
      fail("{}: model.vocab[\"{}\"] is not a valid id", where, token);
    const auto id = static_cast<int32_t>(id_json.get<int64_t>());
    if (static_cast<size_t>(id) >= m.tokens_.size()) {
      m.tokens_.resize(static_cast<size_t>(id) + 1);
      m.has_token_.resize(static_cast<size_t>(id) + 1);
    }
    if (m.has_token_[static_cast<size_t>(id)])
      fail("{}: model.vocab gives id {} to both \"{}\" and \"{}\"", where, id, m.tokens_[static_cast<size_t>(id)], token);
    m.tokens_[static_cast<size_t>(id)] = token;
    m.has_token_[static_cast<size_t>(id)] = true;
    m.maps_->token_ids.emplace(token, id);
  }
  if (m.tokens_.empty()) fail("{}: model.vocab is empty", where);

  for (int b = 0; b < 256; ++b) {
    std::string spelled;
    append_utf8(byte_to_codepoint(static_cast<uint8_t>(b)), spelled);
    if (auto id = m.token_to_id(spelled)) m.byte_ids_[static_cast<size_t>(b)] = *id;
  }
  if (m.ignore_merges_) {
    m.maps_->word_ids.reserve(m.maps_->token_ids.size());
    for (const auto& [token, id] : m.maps_->token_ids) {
      if (auto bytes = byte_level_to_bytes(token)) m.maps_->word_ids.emplace(std::move(*bytes), id);
    }
  }
  if (const auto unk = model.find("unk_token"); unk != model.end() && unk->is_string()) {
    // Hugging Face only complains about a missing unk token when it needs it, which a byte-level
    // vocabulary (all 256 bytes present) never does; so an absent one just means "none".
    m.unk_id_ = m.token_to_id(unk->get<std::string>());
  }

  // The merges, in rank order. Two spellings exist: "left right" strings, and (since tokenizers
  // 0.20) [left, right] pairs, which allow tokens that contain spaces.
  const auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) fail("{}: model.merges is missing or not an array", where);
  const auto& merges = *merges_it;
  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity *= 2;
  m.merges_.assign(capacity, MergeSlot{kEmptySlot, {0, 0}});
  m.merge_mask_ = capacity - 1;
  std::string left, right;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& entry = merges[rank];
    if (entry.is_string()) {
      const auto& s = entry.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) fail("{}: model.merges[{}] \"{}\" is not two tokens separated by a space", where, rank, s);
      left.assign(s, 0, space);
      right.assign(s, space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}] is neither \"left right\" nor [\"left\", \"right\"]", where, rank);
    }
    const auto left_id = m.token_to_id(left);
    const auto right_id = m.token_to_id(right);
    const auto result_id = m.token_to_id(left + right);
    if (!left_id || !right_id || !result_id) {
      const std::string& missing = !left_id ? left : !right_id ? right : left + right;
      fail("{}: model.merges[{}] (\"{}\" + \"{}\") refers to \"{}\", which is not in the vocabulary", where, rank,
           left, right, missing);
    }
    // A repeated pair takes its later rank, as Hugging Face's map building does.
    const uint64_t key = pair_key(*left_id, *right_id);
    for (uint64_t slot = mix(key) & m.merge_mask_;; slot = (slot + 1) & m.merge_mask_) {
      MergeSlot& s = m.merges_[slot];
      if (s.key == kEmptySlot || s.key == key) {
        s = MergeSlot{key, {static_cast<int32_t>(rank), *result_id}};
        break;
      }
    }
  }
  return m;
}

const std::string* BpeModel::token(int32_t id) const {
  if (id < 0 || id >= size() || !has_token_[static_cast<size_t>(id)]) return nullptr;
  return &tokens_[static_cast<size_t>(id)];
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = maps_->token_ids.find(token);
  if (it == maps_->token_ids.end()) return std::nullopt;
  return it->second;
}

std::optional<BpeModel::Merge> BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  for (uint64_t slot = mix(key) & merge_mask_;; slot = (slot + 1) & merge_mask_) {
    const MergeSlot& s = merges_[slot];
    if (s.key == key) return s.merge;
    if (s.key == kEmptySlot) return std::nullopt;
  }
}

// --- Encoding -------------------------------------------------------------------------------------

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() <= 1) {  // a single byte is its own token; nothing to merge or cache
    merge_word(word, out);
    return;
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  if (cacheable && cache_->find(word, out)) return;
  const size_t first = out.size();
  const auto whole = ignore_merges_ ? maps_->word_ids.find(word) : maps_->word_ids.end();
  if (whole != maps_->word_ids.end()) {
    // Llama-3 style: a pre-token that is itself a token is taken whole, whatever the merges say.
    out.push_back(whole->second);
  } else {
    merge_word(word, out);
  }
  if (cacheable) cache_->insert(word, out.data() + first, out.size() - first);
}

namespace {

// One symbol of the word being merged, in a doubly linked list over an array.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  int32_t rank;  // rank of the merge of this symbol with its next one; INT_MAX if none
};

// A merge waiting in the heap. It is stale once either symbol has changed, which the ids tell:
// a position's id only ever grows into a longer token, so equal ids mean an unchanged pair.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t left_id;
  int32_t right_id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

// Up to this many symbols, scanning the list for the best pair beats keeping a heap.
constexpr size_t kLinearScanMax = 8;

}  // namespace

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  for (const char c : word) {
    int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id < 0) {
      // A byte the vocabulary lacks becomes the unknown token, or vanishes if there is none
      // (as in Hugging Face tokenizers).
      if (!unk_id_) continue;
      if (fuse_unk_ && !symbols.empty() && symbols.back().id == *unk_id_) continue;
      id = *unk_id_;
    }
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, n + 1, INT_MAX});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  auto rank_of = [&](int32_t pos) {
    const int32_t next = symbols[static_cast<size_t>(pos)].next;
    if (next < 0) return INT_MAX;
    const auto m = find_merge(symbols[static_cast<size_t>(pos)].id, symbols[static_cast<size_t>(next)].id);
    return m ? m->rank : INT_MAX;
  };
  // Merges the symbol at pos with its successor into `result`.
  auto merge_at = [&](int32_t pos, int32_t result) {
    Symbol& s = symbols[static_cast<size_t>(pos)];
    Symbol& gone = symbols[static_cast<size_t>(s.next)];
    s.id = result;
    s.next = gone.next;
    if (s.next >= 0) symbols[static_cast<size_t>(s.next)].prev = pos;
    gone.id = -1;  // so that heap entries for the vanished symbol read as stale
  };

  // The lowest-ranked adjacent pair merges first; among equal ranks, the leftmost. Both loops
  // below implement exactly that order, which is what Hugging Face tokenizers produce.
  if (symbols.size() <= kLinearScanMax) {
    for (int32_t pos = 0; pos >= 0; pos = symbols[static_cast<size_t>(pos)].next)
      symbols[static_cast<size_t>(pos)].rank = rank_of(pos);
    for (;;) {
      int32_t best = -1;
      int32_t best_rank = INT_MAX;
      for (int32_t pos = 0; pos >= 0; pos = symbols[static_cast<size_t>(pos)].next) {
        if (symbols[static_cast<size_t>(pos)].rank < best_rank) {
          best_rank = symbols[static_cast<size_t>(pos)].rank;
          best = pos;
        }
      }
      if (best < 0) break;
      merge_at(best, find_merge(symbols[static_cast<size_t>(best)].id,
                                symbols[static_cast<size_t>(symbols[static_cast<size_t>(best)].next)].id)
                         ->result);
      symbols[static_cast<size_t>(best)].rank = rank_of(best);
      if (const int32_t prev = symbols[static_cast<size_t>(best)].prev; prev >= 0)
        symbols[static_cast<size_t>(prev)].rank = rank_of(prev);
    }
  } else {
    thread_local std::vector<Candidate> heap;  // a min-heap through std::*_heap with greater<>
    heap.clear();
    auto push_pair = [&](int32_t pos) {
      const Symbol& s = symbols[static_cast<size_t>(pos)];
      if (s.next < 0) return;
      const int32_t right_id = symbols[static_cast<size_t>(s.next)].id;
      if (const auto m = find_merge(s.id, right_id)) {
        heap.push_back(Candidate{m->rank, pos, s.id, right_id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>{});
      }
    };
    for (int32_t pos = 0; pos >= 0; pos = symbols[static_cast<size_t>(pos)].next) push_pair(pos);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
      const Candidate c = heap.back();
      heap.pop_back();
      const Symbol& s = symbols[static_cast<size_t>(c.pos)];
      if (s.id != c.left_id || s.next < 0 || symbols[static_cast<size_t>(s.next)].id != c.right_id) continue;
      merge_at(c.pos, find_merge(c.left_id, c.right_id)->result);
      push_pair(c.pos);
      if (const int32_t prev = symbols[static_cast<size_t>(c.pos)].prev; prev >= 0) push_pair(prev);
    }
  }
  for (int32_t pos = 0; pos >= 0; pos = symbols[static_cast<size_t>(pos)].next)
    out.push_back(symbols[static_cast<size_t>(pos)].id);
}

}  // namespace lserve
