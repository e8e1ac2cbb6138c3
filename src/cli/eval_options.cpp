#include "cli/eval_options.h"

#include <algorithm>

#include "core/error.h"

namespace lserve::cli {

namespace {

constexpr const char* kDefaultHaystack = "eval/haystack.txt";

std::filesystem::path executable_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}

}  // namespace

std::vector<std::string> split_commas(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const std::string& a : args) {
    size_t begin = 0;
    while (begin <= a.size()) {
      size_t end = a.find(',', begin);
      if (end == std::string::npos) end = a.size();
      if (end > begin) out.push_back(a.substr(begin, end - begin));
      begin = end + 1;
    }
  }
  return out;
}

std::vector<eval::Task> parse_tasks(const std::vector<std::string>& args) {
  std::vector<eval::Task> tasks;
  const auto add = [&](eval::Task t) {
    if (std::find(tasks.begin(), tasks.end(), t) == tasks.end()) tasks.push_back(t);
  };
  for (const std::string& name : split_commas(args)) {
    if (name == "all") {
      for (eval::Task t : eval::kAllTasks) add(t);
    } else if (auto t = eval::parse_task(name)) {
      add(*t);
    } else {
      fail("--task: unknown task '{}' (choose from passkey, niah, multikey, multivalue, kv, vartrack, all)", name);
    }
  }
  if (tasks.empty()) fail("--task: no task given");
  return tasks;
}

// "4096", "4K" or "4k" (x 1024).
std::vector<int64_t> parse_lengths(const std::vector<std::string>& args) {
  std::vector<int64_t> lengths;
  for (const std::string& a : split_commas(args)) {
    std::string digits = a;
    int64_t unit = 1;
    if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) {
      digits.pop_back();
      unit = 1024;
    }
    const bool number = !digits.empty() && digits.size() <= 9 &&
                        std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int64_t L = number ? std::stoll(digits) * unit : 0;
    if (L < 1) fail("--lengths: '{}' is not a positive token count", a);
    if (std::find(lengths.begin(), lengths.end(), L) != lengths.end()) fail("--lengths: {} is given twice", L);
    lengths.push_back(L);
  }
  if (lengths.empty()) fail("--lengths: no length given");
  std::sort(lengths.begin(), lengths.end());
  return lengths;
}

std::vector<int> parse_depths(const std::vector<double>& fractions) {
  std::vector<int> depths;
  if (fractions.empty())
    for (int D = 0; D <= 1000; D += 100) depths.push_back(D);
  for (double d : fractions) {
    if (!(d >= 0.0 && d <= 1.0)) fail("--depths: {} is not a fraction between 0 and 1", d);
    const int D = eval::depth_permille(d);
    if (std::find(depths.begin(), depths.end(), D) != depths.end())
      fail("--depths: {} is the same depth as an earlier one ({} permille)", d, D);
    depths.push_back(D);
  }
  std::sort(depths.begin(), depths.end());
  return depths;
}

// --haystack, else the repository's eval/haystack.txt, searched like the default model.
std::filesystem::path haystack_path(const std::string& arg) {
  if (!arg.empty()) return arg;
  const auto exe = executable_dir();
  for (const auto& base : {exe / "..", exe, std::filesystem::current_path()}) {
    const auto file = base / kDefaultHaystack;
    if (std::filesystem::exists(file)) return std::filesystem::weakly_canonical(file);
  }
  fail("no --haystack given and {} was not found beside the binary or in the working directory", kDefaultHaystack);
}

}  // namespace lserve::cli
