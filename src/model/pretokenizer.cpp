// Normalizer and pre-tokenizer of tokenizer.json, on utf8proc and PCRE2 (see pretokenizer.h).
#include "model/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <optional>

#include "core/error.h"
#include "model/byte_level.h"

namespace lserve {

namespace {

// The member `key` of a JSON object, or nullptr (nlohmann's const operator[] asserts instead).
const nlohmann::json* member(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// The "type" of a normalizer or pre-tokenizer entry.
const std::string& type_of(const nlohmann::json& entry, std::string_view section, std::string_view where) {
  const nlohmann::json* type = member(entry, "type");
  if (!type || !type->is_string()) fail("{}: {} entry has no \"type\"", where, section);
  return type->get_ref<const std::string&>();
}

}  // namespace

// --- Normalizer -------------------------------------------------------------------------------------

Normalizer Normalizer::from_json(const nlohmann::json& config, std::string_view where, bool fast_paths) {
  Normalizer n;
  n.fast_paths_ = fast_paths;
  // Sequences may nest; flatten them into one list of forms.
  auto add = [&](auto& self, const nlohmann::json& c) -> void {
    if (c.is_null()) return;
    const std::string& type = type_of(c, "normalizer", where);
    if (type == "Sequence") {
      const nlohmann::json* children = member(c, "normalizers");
      if (!children || !children->is_array()) fail("{}: normalizer Sequence has no \"normalizers\" list", where);
      for (const auto& child : *children) self(self, child);
    } else if (type == "NFC") {
      n.forms_.push_back(Form::NFC);
    } else if (type == "NFD") {
      n.forms_.push_back(Form::NFD);
    } else if (type == "NFKC") {
      n.forms_.push_back(Form::NFKC);
    } else if (type == "NFKD") {
      n.forms_.push_back(Form::NFKD);
    } else {
      fail("{}: unsupported normalizer \"{}\" (supported: NFC, NFD, NFKC, NFKD, Sequence)", where, type);
    }
  };
  add(add, config);
  return n;
}

namespace {

// NFC leaves text alone when no code point is at or above U+0300, the first one whose NFC quick
// check is not "yes"; in UTF-8 those all start with a byte >= 0xCC. Most text takes this path.
bool nfc_is_identity(std::string_view text) {
  for (const char c : text)
    if (static_cast<uint8_t>(c) >= 0xCC) return false;
  return true;
}

bool is_ascii(std::string_view text) {
  for (const char c : text)
    if (static_cast<uint8_t>(c) >= 0x80) return false;
  return true;
}

// Appends utf8proc's mapping of `text` (valid UTF-8) to `out`.
void append_mapped(std::string_view text, int options, std::string& out) {
  utf8proc_uint8_t* result = nullptr;
  // An explicit length (no UTF8PROC_NULLTERM) keeps embedded NUL characters.
  const utf8proc_ssize_t len =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                   &result, static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
  if (len < 0) fail("Unicode normalization failed: {}", utf8proc_errmsg(len));
  out.append(reinterpret_cast<const char*>(result), static_cast<size_t>(len));
  std::free(result);
}

// The characters that NFC passes through untouched and that never combine with the text before
// them: combining class 0, no canonical decomposition, and no later part of another character's
// decomposition (as Hangul vowel and final jamo, and some Indic vowel signs, are). NFC of a text
// is the NFC of the stretches that start at such characters, and stretches made of one such
// character need no work: CJK, Cyrillic, Thai, Arabic... mostly skip utf8proc.
class NfcStarters {
 public:
  NfcStarters() : bits_(0x110000 / 64, ~uint64_t{0}) {
    for (utf8proc_int32_t cp = 0; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp < 0xE000) continue;
      utf8proc_int32_t parts[8];
      int boundclass = 0;
      const utf8proc_ssize_t n = utf8proc_decompose_char(cp, parts, 8, UTF8PROC_DECOMPOSE, &boundclass);
      if (utf8proc_get_property(cp)->combining_class != 0 || n != 1 || parts[0] != cp) clear(cp);
      for (utf8proc_ssize_t k = 1; k < n; ++k) clear(parts[k]);
    }
  }
  bool operator()(uint32_t cp) const { return (bits_[cp >> 6] >> (cp & 63)) & 1; }

 private:
  void clear(utf8proc_int32_t cp) { bits_[static_cast<size_t>(cp) >> 6] &= ~(uint64_t{1} << (cp & 63)); }
  std::vector<uint64_t> bits_;
};

// NFC that hands utf8proc only the stretches that may change.
void append_nfc(std::string_view text, std::string& out) {
  static const NfcStarters starters;
  size_t copied = 0;         // text before this is in `out`
  size_t stretch = 0;        // where the current stretch starts
  bool needs_work = false;   // the stretch holds a character that is not a starter
  auto finish_stretch = [&](size_t end) {
    if (needs_work) {
      out.append(text.data() + copied, stretch - copied);
      append_mapped(text.substr(stretch, end - stretch), UTF8PROC_COMPOSE, out);
      copied = end;
    }
  };
  for (size_t pos = 0; pos < text.size();) {
    const size_t here = pos;
    const bool starter = static_cast<uint8_t>(text[pos]) < 0x80 ? (++pos, true) : starters(next_codepoint(text, pos));
    if (starter) {
      finish_stretch(here);
      stretch = here;
      needs_work = false;
    } else {
      needs_work = true;
    }
  }
  finish_stretch(text.size());
  out.append(text.data() + copied, text.size() - copied);
}

}  // namespace

std::string Normalizer::normalize(std::string_view text) const {
  std::string current(text);
  for (const Form form : forms_) {
    if (is_ascii(current) || (form == Form::NFC && nfc_is_identity(current))) continue;
    std::string next;
    next.reserve(current.size() + current.size() / 8);
    switch (form) {
      case Form::NFC:
        if (fast_paths_) {
          append_nfc(current, next);
        } else {
          append_mapped(current, UTF8PROC_COMPOSE, next);
        }
        break;
      case Form::NFD: append_mapped(current, UTF8PROC_DECOMPOSE, next); break;
      case Form::NFKC: append_mapped(current, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, next); break;
      case Form::NFKD: append_mapped(current, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, next); break;
    }
    current = std::move(next);
  }
  return current;
}

// --- Character classes ----------------------------------------------------------------------------
//
// Hugging Face tokenizers match pre-tokenizer regexes with Oniguruma (Unicode 16 tables). Both of
// our matchers, PCRE2 and the hand-written splitters below, are held to its classes.

namespace {

using Range = std::pair<uint32_t, uint32_t>;

// Letters and numbers that Unicode 15.0 and 16.0 assigned. PCRE2 10.42 (Unicode 14) and utf8proc
// 2.8 (Unicode 15) miss some of them; with newer tables they are members already, and listing
// them again changes nothing.
constexpr Range kExtraLetters[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x1123F, 0x11240}, {0x11380, 0x11389}, {0x1138B, 0x1138B},
    {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3},
    {0x11BC0, 0x11BE0}, {0x11F02, 0x11F02}, {0x11F04, 0x11F10}, {0x11F12, 0x11F33}, {0x1342F, 0x1342F},
    {0x13441, 0x13446}, {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB},
    {0x1E5D0, 0x1E5ED}, {0x1E5F0, 0x1E5F0}, {0x2B739, 0x2B739}, {0x2EBF0, 0x2EE5D}, {0x31350, 0x323AF},
};
constexpr Range kExtraDigits[] = {  // general category Nd
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x11F50, 0x11F59}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1E4F0, 0x1E4F9}, {0x1E5F1, 0x1E5FA},
};
constexpr Range kExtraOtherNumbers[] = {{0x1D2C0, 0x1D2D3}};  // No

// Oniguruma's \s: the White_Space property. PCRE2's differs (no U+0085, but U+180E), and so does
// JavaScript's (no U+0085, but U+FEFF).
constexpr Range kSpaces[] = {
    {0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

template <size_t N>
bool in_ranges(const Range (&ranges)[N], uint32_t cp) {
  for (const Range& r : ranges)
    if (cp >= r.first && cp <= r.second) return true;
  return false;
}

// The ranges as members of a PCRE2 character class.
template <size_t N>
std::string class_members(const Range (&ranges)[N]) {
  std::string out;
  for (const Range& r : ranges) {
    out += fmt::format("\\x{{{:X}}}", r.first);
    if (r.second != r.first) out += fmt::format("-\\x{{{:X}}}", r.second);
  }
  return out;
}

enum CharClass : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };

uint8_t classify_slow(uint32_t cp) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return kLetter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return kNumber;
    case UTF8PROC_CATEGORY_CN:  // unassigned for utf8proc: maybe newer than its tables
      if (in_ranges(kExtraLetters, cp)) return kLetter;
      if (in_ranges(kExtraDigits, cp) || in_ranges(kExtraOtherNumbers, cp)) return kNumber;
      return 0;
    default:
      return in_ranges(kSpaces, cp) ? kSpace : 0;
  }
}

struct AsciiClasses {
  std::array<uint8_t, 128> table{};
  AsciiClasses() {
    for (uint32_t c = 0; c < 128; ++c) table[c] = classify_slow(c);
  }
};

uint8_t classify(uint32_t cp) {
  static const AsciiClasses ascii;
  return cp < 128 ? ascii.table[cp] : classify_slow(cp);
}

}  // namespace

// --- Regex translation ------------------------------------------------------------------------------

namespace {

class RegexTranslator {
 public:
  explicit RegexTranslator(std::string_view p) : p_(p) {}

  std::string run() {
    while (i_ < p_.size()) {
      const char c = p_[i_];
      if (c == '\\') {
        escape();
      } else if (in_class_) {
        class_char();
      } else {
        if (c == '[') open_class();
        else {
          out_ += c;
          ++i_;
        }
      }
    }
    return out_;
  }

 private:
  // Emits a set of members: bare inside a class, bracketed (possibly negated) outside.
  void emit_set(std::string_view members, bool negated) {
    if (in_class_) {
      if (negated) fail("regex {}: a negated class escape inside a character class is not supported", p_);
      out_ += members;
    } else {
      out_ += negated ? "[^" : "[";
      out_ += members;
      out_ += ']';
    }
  }

  void escape() {
    if (i_ + 1 >= p_.size()) fail("regex {}: ends with a lone backslash", p_);
    const char e = p_[i_ + 1];
    i_ += 2;
    switch (e) {
      case 's':
      case 'S':
        emit_set(class_members(kSpaces), e == 'S');
        return;
      case 'h':  // Oniguruma: a hex digit (PCRE2 would read horizontal space)
      case 'H':
        emit_set("0-9A-Fa-f", e == 'H');
        return;
      case 'd':
      case 'D':
        emit_set("\\p{Nd}" + class_members(kExtraDigits), e == 'D');
        return;
      case 'p':
      case 'P':
        property(e == 'P');
        return;
      case 'u':  // \uHHHH (Oniguruma) -> \x{HHHH}
        if (i_ + 4 > p_.size()) fail("regex {}: \\u needs four hex digits", p_);
        out_ += "\\x{";
        out_ += p_.substr(i_, 4);
        out_ += '}';
        i_ += 4;
        return;
      case 'x':
        out_ += "\\x";
        if (i_ < p_.size() && p_[i_] == '{') {  // copy \x{...} whole
          const size_t end = p_.find('}', i_);
          if (end == std::string_view::npos) fail("regex {}: unterminated \\x{{", p_);
          out_ += p_.substr(i_, end + 1 - i_);
          i_ = end + 1;
        }
        return;
      default:
        out_ += '\\';
        out_ += e;
        return;
    }
  }

  // \p{Name}, \pL and their negations; L, N and Nd gain the letters of newer Unicode versions.
  void property(bool negated) {
    std::string_view name;
    size_t end = i_;
    if (i_ < p_.size() && p_[i_] == '{') {
      end = p_.find('}', i_);
      if (end == std::string_view::npos) fail("regex {}: unterminated \\p{{", p_);
      name = p_.substr(i_ + 1, end - i_ - 1);
      ++end;
    } else if (i_ < p_.size()) {
      name = p_.substr(i_, 1);
      end = i_ + 1;
    }
    const std::string_view original = p_.substr(i_ - 2, end - (i_ - 2));
    i_ = end;
    if (!name.empty() && name[0] == '^') {  // \p{^L} negates too
      negated = !negated;
      name.remove_prefix(1);
    }
    std::string extra;
    if (name == "L" || name == "Letter") {
      extra = class_members(kExtraLetters);
    } else if (name == "N" || name == "Number") {
      extra = class_members(kExtraDigits) + class_members(kExtraOtherNumbers);
    } else if (name == "Nd" || name == "Decimal_Number") {
      extra = class_members(kExtraDigits);
    } else {
      out_ += original;
      return;
    }
    emit_set("\\p{" + std::string(name) + "}" + extra, negated);
  }

  void open_class() {
    in_class_ = true;
    out_ += '[';
    ++i_;
    if (i_ < p_.size() && p_[i_] == '^') {
      out_ += '^';
      ++i_;
    }
    if (i_ < p_.size() && p_[i_] == ']') {  // a leading ']' is a literal member
      out_ += ']';
      ++i_;
    }
  }

  void class_char() {
    const char c = p_[i_];
    if (c == '[' && i_ + 1 < p_.size() && p_[i_ + 1] == ':') {  // POSIX class such as [:alpha:]
      const size_t end = p_.find(":]", i_ + 2);
      if (end == std::string_view::npos) fail("regex {}: unterminated POSIX class", p_);
      out_ += p_.substr(i_, end + 2 - i_);
      i_ = end + 2;
      return;
    }
    if (c == '[') fail("regex {}: nested character classes are not supported", p_);
    if (c == ']') in_class_ = false;
    out_ += c;
    ++i_;
  }

  std::string_view p_;
  size_t i_ = 0;
  bool in_class_ = false;
  std::string out_;
};

}  // namespace

std::string translate_regex(std::string_view pattern) { return RegexTranslator(pattern).run(); }

// --- PCRE2 ------------------------------------------------------------------------------------------

namespace {

// Per-thread match state: PCRE2 match data and JIT stacks must not be shared between threads.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  // Backtracking over long runs can outgrow PCRE2's default 32 KiB JIT stack.
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
  MatchState() {
    if (!data || !context || !jit_stack) fail("out of memory for the pre-tokenizer's regex state");
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

class Regex {
 public:
  Regex(std::string_view pcre2_pattern, std::string_view where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()), pcre2_pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      fail("{}: cannot compile pre-tokenizer regex {} at offset {}: {}", where, pcre2_pattern, offset,
           reinterpret_cast<const char*>(message));
    }
    // Without JIT (an unsupported CPU) matching still works, only slower.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls on_match(start, end) for each match in valid UTF-8 `text`, left to right. An empty
  // match is reported too (it still separates what is around it), and the search then moves on
  // by one character, as Oniguruma's find_iter does.
  template <typename F>
  void for_each_match(std::string_view text, F&& on_match) const {
    thread_local MatchState state;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      // The caller validated the UTF-8 once; checking it again on every call would make a long
      // text quadratic.
      const int rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, state.data, state.context);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        fail("pre-tokenizer regex failed on the input: {}", reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
      const size_t start = ovector[0];
      const size_t end = ovector[1];
      on_match(start, end);
      if (end > start) {
        pos = end;
      } else {  // step over one whole character
        if (end >= text.size()) return;
        pos = end + 1;
        while (pos < text.size() && (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};

}  // namespace

// --- Hand-written splitters -------------------------------------------------------------------------
//
// The patterns of GPT-2, Llama-3 and Qwen cover nearly every byte-level tokenizer, and matching
// them by hand is several times faster than any regex engine. Each function below returns the end
// of the match at `i`, trying the pattern's alternatives in order with the backtracking a regex
// engine would do; these patterns match at every position, so there are never gaps. Tests and the
// fuzzer check them against the PCRE2 path on random text.

namespace {

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class FastPattern { None, Gpt2, Llama3, Qwen2 };

FastPattern fast_pattern_of(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return FastPattern::Gpt2;
  if (pattern == kLlama3Pattern) return FastPattern::Llama3;
  if (pattern == kQwen2Pattern) return FastPattern::Qwen2;
  return FastPattern::None;
}

// A decoded character of valid UTF-8: its code point, byte length and class.
struct Char {
  uint32_t cp;
  uint32_t len;
  uint8_t cls;
};

class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}
  size_t size() const { return s_.size(); }
  Char at(size_t i) const {
    const auto b = static_cast<uint8_t>(s_[i]);
    if (b < 0x80) return {b, 1, classify(b)};
    size_t pos = i;
    const uint32_t cp = next_cp(pos);
    return {cp, static_cast<uint32_t>(pos - i), classify(cp)};
  }
  // The end of the run of characters from i whose class satisfies pred.
  template <typename Pred>
  size_t run(size_t i, Pred pred) const {
    while (i < s_.size()) {
      const Char c = at(i);
      if (!pred(c)) break;
      i += c.len;
    }
    return i;
  }
  uint8_t byte(size_t i) const { return static_cast<uint8_t>(s_[i]); }

 private:
  uint32_t next_cp(size_t& pos) const {
    const auto b0 = static_cast<uint8_t>(s_[pos]);
    const int len = b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
    uint32_t cp = len == 2 ? b0 & 0x1F : len == 3 ? b0 & 0x0F : b0 & 0x07;
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s_[pos + k]) & 0x3F);
    pos += static_cast<size_t>(len);
    return cp;
  }
  std::string_view s_;
};

bool is_letter(const Char& c) { return c.cls & kLetter; }
bool is_number(const Char& c) { return c.cls & kNumber; }
bool is_other(const Char& c) { return !(c.cls & (kLetter | kNumber | kSpace)); }  // [^\s\p{L}\p{N}]
bool is_space(const Char& c) { return c.cls & kSpace; }
bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// 's|'t|'re|'ve|'m|'ll|'d at i (which holds the apostrophe): the match length, or 0. Caseless
// matching folds as Oniguruma does, where 's' also matches 'ſ' (U+017F) and no other letter of
// these has a non-ASCII variant.
size_t contraction(std::string_view s, size_t i, bool caseless) {
  auto letter = [&](size_t at, char want) -> size_t {  // bytes of a match of `want` at `at`, or 0
    if (at >= s.size()) return 0;
    const char c = s[at];
    if (c == want) return 1;
    if (!caseless) return 0;
    if (c == want - 32) return 1;
    if (want == 's' && s.substr(at, 2) == "\xC5\xBF") return 2;
    return 0;
  };
  const size_t j = i + 1;
  for (const char single : {'s', 't'})
    if (const size_t n = letter(j, single)) return 1 + n;
  if (const size_t n = letter(j, 'r'))
    if (const size_t m = letter(j + n, 'e')) return 1 + n + m;
  if (const size_t n = letter(j, 'v'))
    if (const size_t m = letter(j + n, 'e')) return 1 + n + m;
  if (const size_t n = letter(j, 'm')) return 1 + n;
  if (const size_t n = letter(j, 'l'))
    if (const size_t m = letter(j + n, 'l')) return 1 + n + m;
  if (const size_t n = letter(j, 'd')) return 1 + n;
  return 0;
}

// \s+(?!\S)|\s+ at i (a space): the whole run, or all of it but its last character when
// something other than space follows.
size_t trailing_space_rule(const Cursor& text, size_t i) {
  size_t end = i;
  size_t last_start = i;
  while (end < text.size()) {
    const Char c = text.at(end);
    if (!is_space(c)) break;
    last_start = end;
    end += c.len;
  }
  if (end == text.size() || last_start == i) return end;
  return last_start;
}

size_t match_gpt2(const Cursor& text, std::string_view s, size_t i) {
  const Char c = text.at(i);
  if (c.cp == '\'')
    if (const size_t n = contraction(s, i, /*caseless=*/false)) return i + n;
  const bool space = c.cp == ' ' && i + 1 < text.size();
  const Char next = space ? text.at(i + 1) : Char{0, 0, 0};
  if (space && is_letter(next)) return text.run(i + 1, is_letter);
  if (is_letter(c)) return text.run(i, is_letter);
  if (space && is_number(next)) return text.run(i + 1, is_number);
  if (is_number(c)) return text.run(i, is_number);
  if (space && is_other(next)) return text.run(i + 1, is_other);
  if (is_other(c)) return text.run(i, is_other);
  return trailing_space_rule(text, i);
}

// Llama-3 (max_digits 3) and Qwen2 (max_digits 1).
size_t match_llama3(const Cursor& text, std::string_view s, size_t i, int max_digits) {
  const Char c = text.at(i);
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c.cp == '\'')
    if (const size_t n = contraction(s, i, /*caseless=*/true)) return i + n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (is_letter(c)) return text.run(i, is_letter);
  if (!is_newline(c.cp) && !is_number(c) && i + c.len < text.size() && is_letter(text.at(i + c.len)))
    return text.run(i + c.len, is_letter);
  // \p{N}{1,3} or \p{N}
  if (is_number(c)) {
    size_t end = i + c.len;
    for (int n = 1; n < max_digits && end < text.size(); ++n) {
      const Char d = text.at(end);
      if (!is_number(d)) break;
      end += d.len;
    }
    return end;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t other_start = std::string_view::npos;
  if (c.cp == ' ' && i + 1 < text.size() && is_other(text.at(i + 1))) other_start = i + 1;
  else if (is_other(c)) other_start = i;
  if (other_start != std::string_view::npos) {
    size_t end = text.run(other_start, is_other);
    while (end < text.size() && is_newline(text.byte(end))) ++end;
    return end;
  }
  // \s*[\r\n]+ : through the last newline of the run of spaces, if it has one.
  size_t end = i;
  size_t after_newline = 0;
  while (end < text.size()) {
    const Char d = text.at(end);
    if (!is_space(d)) break;
    end += d.len;
    if (is_newline(d.cp)) after_newline = end;
  }
  if (after_newline) return after_newline;
  // \s+(?!\S)|\s+
  return trailing_space_rule(text, i);
}

}  // namespace

// --- Pre-tokenizer steps ------------------------------------------------------------------------------

struct PreTokenizer::Step {
  virtual ~Step() = default;
  // Appends the pieces of one (non-empty) piece.
  virtual void split(std::string_view piece, std::vector<std::string_view>& out,
                     std::deque<std::string>& storage) const = 0;
};

namespace {

// Cuts by a regex into matches and the gaps between them, each its own piece (Isolated), using a
// hand-written splitter when the pattern is one we know.
class Isolator {
 public:
  Isolator(std::string_view hf_pattern, bool fast, std::string_view where)
      : fast_(fast ? fast_pattern_of(hf_pattern) : FastPattern::None) {
    if (fast_ == FastPattern::None) regex_.emplace(translate_regex(hf_pattern), where);
  }

  template <typename F>
  void for_each_match(std::string_view text, F&& on_match) const {
    if (regex_) {
      regex_->for_each_match(text, on_match);
      return;
    }
    const Cursor cursor(text);
    for (size_t i = 0; i < text.size();) {
      const size_t end = fast_ == FastPattern::Gpt2     ? match_gpt2(cursor, text, i)
                         : fast_ == FastPattern::Llama3 ? match_llama3(cursor, text, i, 3)
                                                        : match_llama3(cursor, text, i, 1);
      on_match(i, end);
      i = end;
    }
  }

  void isolate(std::string_view piece, std::vector<std::string_view>& out) const {
    size_t prev = 0;
    for_each_match(piece, [&](size_t start, size_t end) {
      if (start > prev) out.push_back(piece.substr(prev, start - prev));
      if (end > start) out.push_back(piece.substr(start, end - start));
      prev = end;
    });
    if (prev < piece.size()) out.push_back(piece.substr(prev));
  }

 private:
  FastPattern fast_;
  std::optional<Regex> regex_;
};

// Escapes a literal for PCRE2: a backslash before any ASCII punctuation makes it literal.
std::string quote_literal(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (static_cast<uint8_t>(c) < 0x80 && !std::isalnum(static_cast<unsigned char>(c))) out += '\\';
    out += c;
  }
  return out;
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& name, std::string_view where) {
  if (name == "Removed") return Behavior::Removed;
  if (name == "Isolated") return Behavior::Isolated;
  if (name == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::MergedWithNext;
  if (name == "Contiguous") return Behavior::Contiguous;
  fail("{}: unknown Split behavior \"{}\"", where, name);
}

struct Span {
  size_t start;
  size_t end;
  bool flag;  // "is a match" while matching; "remove" after the behavior is applied
};

// Hugging Face's Split: the pattern's matches and the gaps between them become pieces, joined or
// dropped according to `behavior`; `invert` swaps the roles of matches and gaps.
class SplitStep final : public PreTokenizer::Step {
 public:
  SplitStep(std::string_view hf_pattern, Behavior behavior, bool invert, bool fast, std::string_view where)
      : isolator_(hf_pattern, fast, where), behavior_(behavior), invert_(invert) {}

  void split(std::string_view piece, std::vector<std::string_view>& out, std::deque<std::string>&) const override {
    if (behavior_ == Behavior::Isolated) {  // the usual case: every match and gap on its own
      isolator_.isolate(piece, out);
      return;
    }
    std::vector<Span> spans;  // matches and gaps, covering the piece
    size_t prev = 0;
    isolator_.for_each_match(piece, [&](size_t start, size_t end) {
      if (start > prev) spans.push_back({prev, start, invert_});
      spans.push_back({start, end, !invert_});
      prev = end;
    });
    if (prev < piece.size()) spans.push_back({prev, piece.size(), invert_});

    std::vector<Span> merged;
    bool previous_match = false;
    switch (behavior_) {
      case Behavior::Isolated:
      case Behavior::Removed:  // matches are flagged for removal already
        break;
      case Behavior::Contiguous:
        for (const Span& s : spans) {
          if (!merged.empty() && s.flag == previous_match) {
            merged.back().end = s.end;
          } else {
            merged.push_back({s.start, s.end, false});
          }
          previous_match = s.flag;
        }
        break;
      case Behavior::MergedWithPrevious:
        for (const Span& s : spans) {
          if (!merged.empty() && s.flag && !previous_match) {
            merged.back().end = s.end;
          } else {
            merged.push_back({s.start, s.end, false});
          }
          previous_match = s.flag;
        }
        break;
      case Behavior::MergedWithNext:
        for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
          if (!merged.empty() && it->flag && !previous_match) {
            merged.back().start = it->start;
          } else {
            merged.push_back({it->start, it->end, false});
          }
          previous_match = it->flag;
        }
        std::reverse(merged.begin(), merged.end());
        break;
    }
    for (const Span& s : behavior_ == Behavior::Removed ? spans : merged)
      if (!s.flag && s.end > s.start) out.push_back(piece.substr(s.start, s.end - s.start));
  }

 private:
  Isolator isolator_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's ByteLevel step. Its byte -> character mapping is left to the byte-level BPE, which
// works on raw bytes; here it only adds the prefix space and splits with GPT-2's pattern.
class ByteLevelStep final : public PreTokenizer::Step {
 public:
  ByteLevelStep(bool add_prefix_space, bool use_regex, bool fast, std::string_view where)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) isolator_.emplace(kGpt2Pattern, fast, where);
  }

  void split(std::string_view piece, std::vector<std::string_view>& out,
             std::deque<std::string>& storage) const override {
    if (add_prefix_space_ && piece.front() != ' ') {
      std::string& spaced = storage.emplace_back();
      spaced.reserve(piece.size() + 1);
      spaced += ' ';
      spaced += piece;
      piece = spaced;
    }
    if (isolator_) {
      isolator_->isolate(piece, out);
    } else {
      out.push_back(piece);
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Isolator> isolator_;
};

}  // namespace

PreTokenizer::PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

PreTokenizer PreTokenizer::from_json(const nlohmann::json& config, std::string_view where, bool fast_paths) {
  PreTokenizer p;
  bool byte_level_seen = false;
  auto add = [&](auto& self, const nlohmann::json& c) -> void {
    if (c.is_null()) return;
    const std::string& type = type_of(c, "pre_tokenizer", where);
    if (byte_level_seen)
      fail("{}: pre_tokenizer step \"{}\" after ByteLevel is not supported (ByteLevel must come last)", where, type);
    if (type == "Sequence") {
      const nlohmann::json* children = member(c, "pretokenizers");
      if (!children || !children->is_array()) fail("{}: pre_tokenizer Sequence has no \"pretokenizers\" list", where);
      for (const auto& child : *children) self(self, child);
    } else if (type == "Split") {
      const nlohmann::json* pattern = member(c, "pattern");
      if (!pattern || !pattern->is_object()) fail("{}: Split pre_tokenizer has no \"pattern\"", where);
      const nlohmann::json* regex = member(*pattern, "Regex");
      const nlohmann::json* string = member(*pattern, "String");
      std::string hf_pattern;
      if (regex && regex->is_string()) {
        hf_pattern = regex->get<std::string>();
      } else if (string && string->is_string()) {
        const auto& literal = string->get_ref<const std::string&>();
        if (literal.empty()) fail("{}: Split pre_tokenizer has an empty String pattern", where);
        hf_pattern = quote_literal(literal);
      } else {
        fail("{}: Split pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}", where);
      }
      const Behavior behavior = parse_behavior(c.value("behavior", std::string("Isolated")), where);
      p.steps_.push_back(std::make_unique<SplitStep>(hf_pattern, behavior, c.value("invert", false), fast_paths, where));
    } else if (type == "ByteLevel") {
      p.steps_.push_back(std::make_unique<ByteLevelStep>(c.value("add_prefix_space", true), c.value("use_regex", true),
                                                         fast_paths, where));
      byte_level_seen = true;
    } else {
      fail("{}: unsupported pre_tokenizer \"{}\" (supported: Split, ByteLevel, Sequence)", where, type);
    }
  };
  add(add, config);
  p.byte_level_ = byte_level_seen;
  return p;
}

bool PreTokenizer::ends_with_byte_level() const { return byte_level_; }

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& words,
                         std::deque<std::string>& storage) const {
  if (text.empty()) return;
  if (steps_.empty()) {
    words.push_back(text);
    return;
  }
  // Each step splits every piece of the previous one; empty pieces never survive a step.
  thread_local std::vector<std::string_view> current, next;
  current.assign(1, text);
  for (size_t s = 0; s < steps_.size(); ++s) {
    std::vector<std::string_view>& target = s + 1 == steps_.size() ? words : next;
    if (&target == &next) next.clear();
    for (const std::string_view piece : current) steps_[s]->split(piece, target, storage);
    if (&target == &next) current.swap(next);
  }
}

}  // namespace lserve
