// Command-line values shared by the commands that build evaluation samples (`lserve eval`,
// `lserve profile-heads`): task lists, lengths, depths and where the haystack file is. Each
// parser fails with a message naming the flag.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "eval/eval_tasks.h"

namespace lserve::cli {

// Values of a repeatable flag that may also hold comma lists, in order, empty items dropped.
std::vector<std::string> split_commas(const std::vector<std::string>& args);
// --task: names of docs/eval_tasks.md, or "all"; duplicates dropped.
std::vector<eval::Task> parse_tasks(const std::vector<std::string>& args);
// --lengths: "4096", "4K" or "4k" (x 1024); sorted, each once.
std::vector<int64_t> parse_lengths(const std::vector<std::string>& args);
// --depths: fractions in [0, 1] as permille (empty: the spec's 0, 0.1, ..., 1); sorted, each once.
std::vector<int> parse_depths(const std::vector<double>& fractions);
// --haystack, else the repository's eval/haystack.txt, searched like the default model.
std::filesystem::path haystack_path(const std::string& arg);

}  // namespace lserve::cli
