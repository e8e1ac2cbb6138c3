// Tokenizer: loading tokenizer.json, cutting out added tokens, the encode pipeline, decoding and
// the streaming decoder (see tokenizer.h).
#include "model/tokenizer.h"

#include <utf8proc.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <unordered_map>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/byte_level.h"
#include "model/pretokenizer.h"

namespace lserve {

namespace {

// --- Character classes that added-token matching needs -------------------------------------------

// Rust's char::is_whitespace (the White_Space property), which lstrip and rstrip strip.
bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// A "word" character for single_word tokens: Unicode's \w (alphabetic, marks, decimal digits,
// connector punctuation, join controls), as the regex crate behind Hugging Face defines it.
// utf8proc's categories give most of it; these ranges add the alphabetic symbols (circled and
// squared letters), the join controls, and letters newer than utf8proc's Unicode tables.
constexpr std::array<std::pair<uint32_t, uint32_t>, 37> kExtraWordChars = {{
    {0x897, 0x897}, {0x1C89, 0x1C8A}, {0x200C, 0x200D}, {0x24B6, 0x24E9}, {0xA7CB, 0xA7CD}, {0xA7DA, 0xA7DC},
    {0x105C0, 0x105F3}, {0x10D40, 0x10D65}, {0x10D69, 0x10D6D}, {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4},
    {0x10EFC, 0x10EFC}, {0x11380, 0x11389}, {0x1138B, 0x1138B}, {0x1138E, 0x1138E}, {0x11390, 0x113B5},
    {0x113B7, 0x113C0}, {0x113C2, 0x113C2}, {0x113C5, 0x113C5}, {0x113C7, 0x113CA}, {0x113CC, 0x113D3},
    {0x113E1, 0x113E2}, {0x116D0, 0x116E3}, {0x11BC0, 0x11BE0}, {0x11BF0, 0x11BF9}, {0x11F5A, 0x11F5A},
    {0x13460, 0x143FA}, {0x16100, 0x16139}, {0x16D40, 0x16D6C}, {0x16D70, 0x16D79}, {0x18CFF, 0x18CFF},
    {0x1CCF0, 0x1CCF9}, {0x1E5D0, 0x1E5FA}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189},
    {0x2EBF0, 0x2EE5D},
}};

bool is_word_char(uint32_t cp) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return std::any_of(kExtraWordChars.begin(), kExtraWordChars.end(),
                         [cp](const auto& r) { return cp >= r.first && cp <= r.second; });
  }
}

// The code point that ends at text[end) (valid UTF-8, end > 0).
uint32_t codepoint_before(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return next_codepoint(text, start);
}

// --- Added tokens ---------------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A byte trie over added-token contents; longest_at() finds the longest one starting at a
// position. Trying each position from the left gives Aho-Corasick's leftmost-longest matches,
// which is how Hugging Face picks among overlapping added tokens.
class AddedTokenTrie {
 public:
  void add(std::string_view content, int32_t token) {
    int32_t node = 0;
    for (const char c : content) {
      auto& edges = nodes_[static_cast<size_t>(node)].edges;
      const auto b = static_cast<uint8_t>(c);
      const auto it =
          std::lower_bound(edges.begin(), edges.end(), b, [](const auto& e, uint8_t v) { return e.first < v; });
      if (it != edges.end() && it->first == b) {
        node = it->second;
      } else {
        node = static_cast<int32_t>(nodes_.size());
        edges.insert(it, {b, node});
        nodes_.emplace_back();  // invalidates `edges`, used no further
      }
    }
    nodes_[static_cast<size_t>(node)].token = token;
    first_bytes_[static_cast<uint8_t>(content.front())] = true;
  }

  bool empty() const { return nodes_.size() == 1; }
  bool may_start(char c) const { return first_bytes_[static_cast<uint8_t>(c)]; }

  // The longest token at text[pos]: (token index, length), or token -1.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const {
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto& edges = nodes_[static_cast<size_t>(node)].edges;
      const auto b = static_cast<uint8_t>(text[i]);
      const auto it =
          std::lower_bound(edges.begin(), edges.end(), b, [](const auto& e, uint8_t v) { return e.first < v; });
      if (it == edges.end() || it->first != b) break;
      node = it->second;
      if (nodes_[static_cast<size_t>(node)].token >= 0) best = {nodes_[static_cast<size_t>(node)].token, i + 1 - pos};
    }
    return best;
  }

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<uint8_t, int32_t>> edges;  // sorted by byte
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_bytes_{};
};

// A stretch of the input: an added token (index >= 0) or text to tokenize (-1).
struct Section {
  std::string_view text;
  int32_t token = -1;
};

}  // namespace

// --- The tokenizer's tables ------------------------------------------------------------------------

struct Tokenizer::Impl {
  Impl(std::string_view source_name, Normalizer n, PreTokenizer p, BpeModel m)
      : source(source_name), normalizer(std::move(n)), pre_tokenizer(std::move(p)), model(std::move(m)) {}

  std::string source;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  std::vector<AddedToken> added;
  AddedTokenTrie raw_trie;         // added tokens matched on the text as given
  AddedTokenTrie normalized_trie;  // added tokens matched after normalization
  std::unordered_map<std::string, int32_t> added_ids;  // content -> id
  std::unordered_map<int32_t, int32_t> added_by_id;    // id -> index into `added`
  std::vector<int32_t> prefix_ids, suffix_ids;          // the post-processor, for one sequence
  std::vector<std::string> id_bytes;                    // what each id decodes to
  std::vector<uint8_t> id_flags;                        // kValid | kSpecial
  int32_t vocab_size = 0;
  nlohmann::json config = nlohmann::json::object();
  std::optional<int32_t> bos_id, eos_id;

  static constexpr uint8_t kValid = 1;
  static constexpr uint8_t kSpecial = 2;

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size || !(id_flags[static_cast<size_t>(id)] & kValid))
      fail("token id {} is not in the vocabulary of {} (size {})", id, source, vocab_size);
  }
  bool skipped(int32_t id, bool skip_special_tokens) const {
    return skip_special_tokens && (id_flags[static_cast<size_t>(id)] & kSpecial);
  }

  void split_added(std::string_view text, const AddedTokenTrie& trie, std::vector<Section>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
  void normalize_sections(std::string_view text, std::string& out) const;
};

namespace {

// --- Loading ------------------------------------------------------------------------------------------

const nlohmann::json* member(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

nlohmann::json parse_json(std::string_view text, std::string_view where) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", where, e.what());
  }
}

std::vector<AddedToken> parse_added_tokens(const nlohmann::json& root, std::string_view where) {
  std::vector<AddedToken> tokens;
  const nlohmann::json* list = member(root, "added_tokens");
  if (!list) return tokens;
  if (!list->is_array()) fail("{}: \"added_tokens\" is not a list", where);
  for (size_t i = 0; i < list->size(); ++i) {
    const auto& t = (*list)[i];
    const nlohmann::json* id = member(t, "id");
    const nlohmann::json* content = member(t, "content");
    if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() >= (int64_t{1} << 26))
      fail("{}: added_tokens[{}] has no valid \"id\"", where, i);
    if (!content || !content->is_string()) fail("{}: added_tokens[{}] has no \"content\"", where, i);
    AddedToken a;
    a.content = content->get<std::string>();
    if (a.content.empty()) continue;  // Hugging Face ignores empty added tokens too
    if (!is_valid_utf8(a.content)) fail("{}: added_tokens[{}] is not valid UTF-8", where, i);
    a.id = static_cast<int32_t>(id->get<int64_t>());
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    // Hugging Face's default: special tokens are matched on the raw text, others after normalizing.
    a.normalized = t.value("normalized", !a.special);
    tokens.push_back(std::move(a));
  }
  return tokens;
}

// The ids a special-token name of the post-processor stands for.
std::vector<int32_t> template_token_ids(const nlohmann::json& processor, const std::string& name,
                                        std::string_view where) {
  const nlohmann::json* specials = member(processor, "special_tokens");
  const nlohmann::json* entry = specials ? member(*specials, name.c_str()) : nullptr;
  const nlohmann::json* ids = entry ? member(*entry, "ids") : nullptr;
  if (!ids || !ids->is_array()) fail("{}: post_processor template names \"{}\" but special_tokens lacks it", where, name);
  std::vector<int32_t> out;
  for (const auto& id : *ids) {
    if (!id.is_number_integer()) fail("{}: post_processor special token \"{}\" has a non-integer id", where, name);
    out.push_back(id.get<int32_t>());
  }
  return out;
}

// Reduces the post-processor to the ids it puts before and after a single sequence.
void parse_post_processor(const nlohmann::json* processor, std::string_view where, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (!processor) return;
  const nlohmann::json* type_json = member(*processor, "type");
  if (!type_json || !type_json->is_string()) fail("{}: post_processor has no \"type\"", where);
  const auto& type = type_json->get_ref<const std::string&>();
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    const nlohmann::json* list = member(*processor, "processors");
    if (!list || !list->is_array()) fail("{}: post_processor Sequence has no \"processors\" list", where);
    for (const auto& p : *list) {
      std::vector<int32_t> pre, post;
      parse_post_processor(&p, where, pre, post);
      prefix.insert(prefix.begin(), pre.begin(), pre.end());  // later processors wrap earlier ones
      suffix.insert(suffix.end(), post.begin(), post.end());
    }
    return;
  }
  if (type == "TemplateProcessing") {
    const nlohmann::json* single = member(*processor, "single");
    if (!single || !single->is_array()) fail("{}: TemplateProcessing has no \"single\" template", where);
    bool seen_sequence = false;
    for (const auto& piece : *single) {
      if (member(piece, "Sequence")) {
        seen_sequence = true;
      } else if (const nlohmann::json* special = member(piece, "SpecialToken")) {
        const nlohmann::json* name = member(*special, "id");
        if (!name || !name->is_string()) fail("{}: TemplateProcessing SpecialToken has no \"id\"", where);
        const auto ids = template_token_ids(*processor, name->get<std::string>(), where);
        auto& target = seen_sequence ? suffix : prefix;
        target.insert(target.end(), ids.begin(), ids.end());
      } else {
        fail("{}: TemplateProcessing piece is neither Sequence nor SpecialToken", where);
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const nlohmann::json* cls = member(*processor, "cls");
    const nlohmann::json* sep = member(*processor, "sep");
    if (!cls || !sep || !cls->is_array() || cls->size() != 2 || !sep->is_array() || sep->size() != 2 ||
        !(*cls)[1].is_number_integer() || !(*sep)[1].is_number_integer())
      fail("{}: {} needs \"cls\" and \"sep\" as [token, id]", where, type);
    prefix.push_back((*cls)[1].get<int32_t>());
    suffix.push_back((*sep)[1].get<int32_t>());
    return;
  }
  fail("{}: unsupported post_processor \"{}\"", where, type);
}

// Only the ByteLevel decoder (alone or in a Sequence) fits a byte-level BPE.
void check_decoder(const nlohmann::json* decoder, std::string_view where) {
  if (!decoder) fail("{}: \"decoder\" is missing (a byte-level BPE needs the ByteLevel decoder)", where);
  const nlohmann::json* type_json = member(*decoder, "type");
  if (!type_json || !type_json->is_string()) fail("{}: decoder has no \"type\"", where);
  const auto& type = type_json->get_ref<const std::string&>();
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const nlohmann::json* list = member(*decoder, "decoders");
    if (!list || !list->is_array() || list->empty()) fail("{}: decoder Sequence has no \"decoders\" list", where);
    for (const auto& d : *list) check_decoder(&d, where);
    return;
  }
  fail("{}: unsupported decoder \"{}\" (only ByteLevel)", where, type);
}

// tokenizer_config.json names tokens as a string or as {"content": ...}.
std::optional<int32_t> config_token(const Tokenizer::Impl& impl, const nlohmann::json& config, const char* key,
                                    std::string_view where) {
  const nlohmann::json* entry = member(config, key);
  if (!entry) return std::nullopt;
  const nlohmann::json* content = entry->is_object() ? member(*entry, "content") : entry;
  if (!content || !content->is_string()) fail("{}: \"{}\" is neither a string nor {{\"content\": ...}}", where, key);
  const auto& name = content->get_ref<const std::string&>();
  if (const auto it = impl.added_ids.find(name); it != impl.added_ids.end()) return it->second;
  if (const auto id = impl.model.token_to_id(name)) return id;
  fail("{}: {} \"{}\" is not in the vocabulary", where, key, name);
}

std::shared_ptr<Tokenizer::Impl> build(std::string_view tokenizer_json, std::string_view where) {
  const nlohmann::json root = parse_json(tokenizer_json, where);
  if (!root.is_object()) fail("{}: not a tokenizer.json (the top level is not an object)", where);
  const nlohmann::json* model = member(root, "model");
  if (!model) fail("{}: \"model\" is missing", where);

  auto impl = std::make_shared<Tokenizer::Impl>(
      where, Normalizer::from_json(root.value("normalizer", nlohmann::json()), where),
      PreTokenizer::from_json(root.value("pre_tokenizer", nlohmann::json()), where), BpeModel::from_json(*model, where));
  if (!impl->pre_tokenizer.ends_with_byte_level())
    fail("{}: the pre_tokenizer has no ByteLevel step; only byte-level BPE tokenizers are supported", where);
  check_decoder(member(root, "decoder"), where);
  parse_post_processor(member(root, "post_processor"), where, impl->prefix_ids, impl->suffix_ids);

  impl->added = parse_added_tokens(root, where);
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& a = impl->added[i];
    (a.normalized && !impl->normalizer.empty() ? impl->normalized_trie : impl->raw_trie)
        .add(a.content, static_cast<int32_t>(i));
    impl->added_ids[a.content] = a.id;
    impl->added_by_id[a.id] = static_cast<int32_t>(i);
  }

  // Id tables. A token decodes through GPT-2's byte table when all its characters are in it,
  // and to its own UTF-8 otherwise (added tokens such as "<|im_start|>" or "中 文").
  impl->vocab_size = impl->model.size();
  for (const AddedToken& a : impl->added) impl->vocab_size = std::max(impl->vocab_size, a.id + 1);
  impl->id_bytes.resize(static_cast<size_t>(impl->vocab_size));
  impl->id_flags.assign(static_cast<size_t>(impl->vocab_size), 0);
  auto set_token = [&](int32_t id, const std::string& spelled, bool special) {
    auto bytes = byte_level_to_bytes(spelled);
    impl->id_bytes[static_cast<size_t>(id)] = bytes ? std::move(*bytes) : spelled;
    impl->id_flags[static_cast<size_t>(id)] = Tokenizer::Impl::kValid | (special ? Tokenizer::Impl::kSpecial : 0);
  };
  for (int32_t id = 0; id < impl->model.size(); ++id)
    if (const std::string* t = impl->model.token(id)) set_token(id, *t, false);
  for (const AddedToken& a : impl->added) set_token(a.id, a.content, a.special);

  for (const auto& ids : {impl->prefix_ids, impl->suffix_ids})
    for (const int32_t id : ids)
      if (id < 0 || id >= impl->vocab_size || !impl->id_flags[static_cast<size_t>(id)])
        fail("{}: post_processor adds token id {}, which is not in the vocabulary", where, id);
  return impl;
}

std::shared_ptr<Tokenizer::Impl> build_guarded(std::string_view tokenizer_json, std::string_view where) {
  try {
    return build(tokenizer_json, where);
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong type, say
    fail("{}: {}", where, e.what());
  }
}

void apply_config(Tokenizer::Impl& impl, std::string_view config_json, std::string_view where) {
  try {
    impl.config = parse_json(config_json, where);
    if (!impl.config.is_object()) fail("{}: the top level is not an object", where);
    impl.bos_id = config_token(impl, impl.config, "bos_token", where);
    impl.eos_id = config_token(impl, impl.config, "eos_token", where);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", where, e.what());
  }
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view source_name) {
  return Tokenizer(build_guarded(tokenizer_json, source_name));
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view source_name,
                               std::string_view config_json, std::string_view config_name) {
  auto impl = build_guarded(tokenizer_json, source_name);
  apply_config(*impl, config_json, config_name);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail("{}: missing (no tokenizer.json in {})", path.string(), dir.string());
  auto impl = build_guarded(read_text_file(path), path.string());
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config_path, ec))
    apply_config(*impl, read_text_file(config_path), config_path.string());
  return Tokenizer(std::move(impl));
}

// --- Encoding -------------------------------------------------------------------------------------

// Cuts `text` at the added tokens of `trie`, following Hugging Face's rules: leftmost-longest
// matches; a single_word token only counts between non-word characters (a rejected match is
// still consumed, as Aho-Corasick's iterator does); lstrip/rstrip make the token swallow the
// whitespace beside it.
void Tokenizer::Impl::split_added(std::string_view text, const AddedTokenTrie& trie, std::vector<Section>& out) const {
  if (trie.empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return;
  }
  size_t done = 0;  // end of the last emitted section
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.may_start(text[pos])) {
      ++pos;
      continue;
    }
    const auto [index, length] = trie.longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = added[static_cast<size_t>(index)];
    size_t start = pos;
    size_t stop = pos + length;
    pos = stop;
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_char(codepoint_before(text, start));
      size_t after = stop;
      const bool word_after = stop < text.size() && is_word_char(next_codepoint(text, after));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      while (start > done) {
        size_t p = start - 1;
        while (p > done && (static_cast<uint8_t>(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_whitespace(next_codepoint(text, q))) break;
        start = p;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!is_whitespace(next_codepoint(text, q))) break;
        stop = q;
      }
      pos = stop;
    }
    if (start > done) out.push_back({text.substr(done, start - done), -1});
    out.push_back({text.substr(start, stop - start), index});
    done = stop;
  }
  if (done < text.size()) out.push_back({text.substr(done), -1});
}

namespace {

// Per-thread scratch, so that encoding allocates little once warm.
struct EncodeScratch {
  std::vector<Section> raw_sections, sections;
  std::vector<std::string_view> words;
  std::deque<std::string> storage;
};

}  // namespace

// Normalizes, pre-tokenizes and BPE-encodes text that holds no raw-matched added token.
void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  thread_local EncodeScratch scratch;
  std::string normalized_storage;
  std::string_view normalized = text;
  if (!normalizer.empty()) {
    normalized_storage = normalizer.normalize(text);
    normalized = normalized_storage;
  }
  auto& sections = scratch.sections;
  sections.clear();
  split_added(normalized, normalized_trie, sections);
  for (const Section& s : sections) {
    if (s.token >= 0) {
      ids.push_back(added[static_cast<size_t>(s.token)].id);
      continue;
    }
    scratch.words.clear();
    scratch.storage.clear();
    pre_tokenizer.split(s.text, scratch.words, scratch.storage);
    for (const std::string_view word : scratch.words) model.encode_word(word, ids);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  std::string repaired;
  if (!is_valid_utf8(text)) {
    append_utf8_lossy(text, repaired);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special_tokens) ids = impl.prefix_ids;
  // The sections are kept in a local vector: encode_text reuses the per-thread scratch.
  std::vector<Section> sections;
  impl.split_added(text, impl.raw_trie, sections);
  for (const Section& s : sections) {
    if (s.token >= 0) {
      ids.push_back(impl.added[static_cast<size_t>(s.token)].id);
    } else {
      impl.encode_text(s.text, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), impl.suffix_ids.begin(), impl.suffix_ids.end());
  return ids;
}

std::string Tokenizer::normalize(std::string_view text) const {
  const Impl& impl = *impl_;
  std::string repaired;
  if (!is_valid_utf8(text)) {
    append_utf8_lossy(text, repaired);
    text = repaired;
  }
  std::vector<Section> sections;
  impl.split_added(text, impl.raw_trie, sections);
  std::string out;
  for (const Section& s : sections) {
    if (s.token >= 0 || impl.normalizer.empty()) {
      out += s.text;
    } else {
      out += impl.normalizer.normalize(s.text);
    }
  }
  return out;
}

// --- Decoding and lookups ---------------------------------------------------------------------------

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::string bytes;
  for (const int32_t id : ids) {
    impl.check_id(id);
    if (!impl.skipped(id, skip_special_tokens)) bytes += impl.id_bytes[static_cast<size_t>(id)];
  }
  if (is_valid_utf8(bytes)) return bytes;
  std::string text;
  append_utf8_lossy(bytes, text);
  return text;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_ids.find(std::string(token)); it != impl_->added_ids.end()) return it->second;
  return impl_->model.token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  impl_->check_id(id);
  if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end())
    return impl_->added[static_cast<size_t>(it->second)].content;
  return *impl_->model.token(id);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < impl_->vocab_size && (impl_->id_flags[static_cast<size_t>(id)] & Impl::kSpecial);
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }
const nlohmann::json& Tokenizer::config() const { return impl_->config; }

// --- Streaming decoder -----------------------------------------------------------------------------

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  impl_->check_id(id);
  if (impl_->skipped(id, skip_special_tokens_)) return {};
  pending_ += impl_->id_bytes[static_cast<size_t>(id)];
  std::string text;
  const size_t used = append_utf8_lossy(pending_, text, /*final=*/false);
  pending_.erase(0, used);
  return text;
}

std::string IncrementalDecoder::flush() {
  std::string text;
  append_utf8_lossy(pending_, text, /*final=*/true);
  pending_.clear();
  return text;
}

}  // namespace lserve
