#include "eval/eval_report.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace lserve::eval {

namespace {

// Sums the cells that pass `keep`.
template <typename Keep>
Count sum(const std::vector<CellResult>& cells, Keep keep) {
  Count n;
  for (const CellResult& c : cells)
    if (keep(c)) n += c;
  return n;
}

std::string percent_cell(const Count& n) {
  return n.total ? fmt::format("{:.0f}", 100.0 * n.accuracy()) : std::string("-");
}

std::string accuracy_cell(const Count& n) {
  return n.total ? fmt::format("{:5.1f}% ({}/{})", 100.0 * n.accuracy(), n.correct, n.total) : std::string("-");
}

nlohmann::json count_json(const Count& n) {
  return {{"correct", n.correct}, {"total", n.total}, {"accuracy", n.accuracy()}};
}

}  // namespace

std::string depth_label(int depth_permille) {
  return depth_permille % 10 == 0 ? fmt::format("{}%", depth_permille / 10)
                                  : fmt::format("{}.{}%", depth_permille / 10, depth_permille % 10);
}

std::string length_label(int64_t length) {
  return length > 0 && length % 1024 == 0 ? fmt::format("{}K", length / 1024) : std::to_string(length);
}

std::string format_table(const EvalReport& r) {
  const EvalGrid& g = r.grid;
  size_t task_w = 4;
  for (Task t : g.tasks) task_w = std::max(task_w, task_name(t).size());
  const size_t acc_w = 18;  // "100.0% (1234/1234)"

  std::string out;
  const Count all = sum(r.cells, [](const CellResult&) { return true; });
  out += fmt::format("lserve eval: {} | {} | seed {}, {} sample{} per cell, {} depth{} | {} samples, {} prompt tokens, {:.1f} s\n",
                     r.model, r.sparsity.summary(), g.seed, g.samples, g.samples == 1 ? "" : "s",
                     g.depths_permille.size(), g.depths_permille.size() == 1 ? "" : "s", all.total, r.prompt_tokens,
                     r.seconds);

  // Header: task, length, accuracy, then one column per depth.
  std::string head = fmt::format("{:<{}}  {:>6}  {:<{}}  depth", "task", task_w, "length", "accuracy", acc_w);
  for (int D : g.depths_permille) head += fmt::format(" {:>5}", depth_label(D));
  out += head + "\n";

  const auto row = [&](std::string_view task, std::string_view length, auto keep) {
    std::string line = fmt::format("{:<{}}  {:>6}  {:<{}}       ", task, task_w, length, accuracy_cell(sum(r.cells, keep)), acc_w);
    for (int D : g.depths_permille)
      line += fmt::format(" {:>5}", percent_cell(sum(r.cells, [&](const CellResult& c) { return keep(c) && c.depth_permille == D; })));
    out += line + "\n";
  };
  for (Task t : g.tasks) {
    for (int64_t L : g.lengths)
      row(task_name(t), std::to_string(L), [&](const CellResult& c) { return c.task == t && c.length == L; });
    if (g.lengths.size() > 1) row(task_name(t), "all", [&](const CellResult& c) { return c.task == t; });
  }
  if (g.tasks.size() > 1) {
    if (g.lengths.size() > 1)
      for (int64_t L : g.lengths) row("all", std::to_string(L), [&](const CellResult& c) { return c.length == L; });
    row("all", "all", [](const CellResult&) { return true; });
  }
  out += "(depth columns: % of the samples correct at that needle depth)\n";
  return out;
}

nlohmann::json sparsity_json(const SparsityConfig& s) {
  nlohmann::json j = {{"policy", policy_name(s.policy)}, {"summary", s.summary()}, {"page_size", s.page_size}};
  if (s.has_streaming_heads()) {
    j["sink"] = s.decode_window.sink;
    j["local"] = s.decode_window.local;
    j["prefill_sink"] = s.prefill_window.sink;
    j["prefill_local"] = s.prefill_window.local;
    j["streaming_ratio"] = s.streaming_ratio ? nlohmann::json(*s.streaming_ratio) : nlohmann::json(nullptr);
    j["head_pattern"] = s.head_pattern_file.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.head_pattern_file);
  }
  if (s.selects_pages()) {
    j["logical_page_size"] = s.logical_page_size;
    j["selector_interval"] = s.selector_interval;
    j["selection"] = s.granularity == SelectionGranularity::KvHead ? "kv" : "query";
    if (s.policy == AttentionPolicy::Psa) {
      j["psa_mass"] = s.psa_mass;
      j["psa_min_budget"] = s.psa_min_budget;
      j["psa_max_budget"] = s.psa_max_budget;
    } else {
      j["token_budget"] = s.token_budget;
    }
  }
  return j;
}

nlohmann::json to_json(const EvalReport& r) {
  const EvalGrid& g = r.grid;
  nlohmann::json attention = sparsity_json(r.sparsity);
  attention["streaming_kv_heads"] = r.streaming_kv_heads;
  attention["kv_heads"] = r.kv_heads;

  nlohmann::json tasks = nlohmann::json::object();
  for (Task t : g.tasks) {
    nlohmann::json task = count_json(sum(r.cells, [&](const CellResult& c) { return c.task == t; }));
    nlohmann::json lengths = nlohmann::json::object();
    for (int64_t L : g.lengths) {
      nlohmann::json length = count_json(sum(r.cells, [&](const CellResult& c) { return c.task == t && c.length == L; }));
      nlohmann::json depths = nlohmann::json::object();
      for (int D : g.depths_permille)
        depths[fmt::format("{:g}", D / 1000.0)] = count_json(
            sum(r.cells, [&](const CellResult& c) { return c.task == t && c.length == L && c.depth_permille == D; }));
      length["depths"] = std::move(depths);
      lengths[std::to_string(L)] = std::move(length);
    }
    task["lengths"] = std::move(lengths);
    tasks[std::string(task_name(t))] = std::move(task);
  }
  nlohmann::json cells = nlohmann::json::array();
  for (const CellResult& c : r.cells)
    cells.push_back({{"task", task_name(c.task)},
                     {"length", c.length},
                     {"depth", c.depth_permille / 1000.0},
                     {"depth_permille", c.depth_permille},
                     {"correct", c.correct},
                     {"total", c.total}});

  std::vector<std::string> task_names;
  for (Task t : g.tasks) task_names.emplace_back(task_name(t));
  std::vector<double> depths;
  for (int D : g.depths_permille) depths.push_back(D / 1000.0);
  nlohmann::json j = count_json(sum(r.cells, [](const CellResult&) { return true; }));
  j["model"] = r.model;
  j["attention"] = std::move(attention);
  j["seed"] = g.seed;
  j["samples_per_cell"] = g.samples;
  j["max_new_tokens"] = r.max_new_tokens;
  j["task_list"] = task_names;
  j["lengths"] = g.lengths;
  j["depths"] = depths;
  j["tasks"] = std::move(tasks);
  j["cells"] = std::move(cells);
  j["seconds"] = r.seconds;
  j["prompt_tokens"] = r.prompt_tokens;
  j["generated_tokens"] = r.generated_tokens;
  return j;
}

}  // namespace lserve::eval
