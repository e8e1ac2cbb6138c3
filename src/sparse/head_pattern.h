// HeadPattern: which KV heads of each layer are retrieval heads (full attention; in decode,
// query-aware page selection) and which are streaming heads (only sink + local tokens), as in
// DuoAttention and LServe. Scores come from a profile file; a rule turns them into kinds.
//
// File formats (docs/head_pattern.md has the details):
//  - lserve's: '#' comments, optional rule lines `streaming_ratio R` or `threshold T`, then one
//    row per layer of whitespace-separated scores in [0, 1], one per KV head (1 = needs full
//    attention).
//  - DuoAttention's published full_attention_heads.tsv: the same rows, tab-separated gate
//    values (which may stray slightly outside [0, 1]; clipped, as DuoAttention does), no rule.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lserve {

enum class HeadKind : uint8_t { Retrieval, Streaming };

// How scores become kinds. Ratio: that fraction of all heads (over every layer), the lowest
// scores, stream. Threshold: heads scoring below it stream.
struct HeadRule {
  std::optional<double> streaming_ratio;
  std::optional<double> threshold;
};

class HeadPattern {
 public:
  // Every head retrieval (dense attention everywhere).
  static HeadPattern all_retrieval(int64_t num_layers, int64_t num_kv_heads);
  // Scores [layers][heads] turned into kinds by `rule` (ratio if set, else threshold, else 0.5).
  static HeadPattern from_scores(std::vector<std::vector<double>> scores, const HeadRule& rule,
                                 const std::string& source);
  // Reads either file format; `override_rule` (from the command line) replaces the file's rule.
  // Throws Error naming the file on a malformed row or out-of-range value.
  static HeadPattern load(const std::filesystem::path& path, const HeadRule& override_rule = {});
  // No profile: `ratio` of the heads stream, spread evenly over layers and heads (for speed
  // tests; accuracy needs a profiled pattern).
  static HeadPattern uniform(int64_t num_layers, int64_t num_kv_heads, double ratio);

  // Throws Error (naming the source) unless the pattern has this shape.
  void validate(int64_t num_layers, int64_t num_kv_heads) const;

  int64_t num_layers() const { return static_cast<int64_t>(kinds_.size()); }
  int64_t num_kv_heads() const { return kinds_.empty() ? 0 : static_cast<int64_t>(kinds_[0].size()); }
  HeadKind kind(int64_t layer, int64_t kv_head) const { return kinds_[layer][kv_head]; }
  int64_t num_streaming(int64_t layer) const;
  int64_t num_streaming() const;
  double streaming_fraction() const;
  const std::string& source() const { return source_; }

  // Writes lserve's format (scores and rule) so that load() reads back the same kinds.
  std::string to_text() const;

 private:
  std::vector<std::vector<double>> scores_;
  std::vector<std::vector<HeadKind>> kinds_;
  HeadRule rule_;
  std::string source_;
};

}  // namespace lserve
