// The flags every model-running subcommand shares (--model, --load-format, --device, --threads,
// --max-context, KV cache size) and the loading they drive.
#pragma once

#include <CLI/CLI.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/generation_config.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "sparse/head_pattern.h"
#include "sparse/sparsity_config.h"

namespace lserve::cli {

struct ModelOptions {
  std::string model;                 // HF folder; empty: the bundled default model
  std::string load_format = "auto";  // auto | dummy
  std::string device = "cpu";        // cpu | cuda
  bool no_cuda_graphs = false;       // cuda: every launch from the host (debugging, comparison)
  bool dependent_launch = false;     // cuda: kernels may start while the one before them drains
  bool unfused_kv_append = false;    // cuda: RoPE, KV append and key summaries as three kernels
  bool unfused_norm = false;         // cuda: the residual add and norm after o_proj / down_proj as their own kernel
  bool overlap_steps = true;         // plan and queue each decode step while the one before it runs
  int threads = 0;                   // 0: all cores
  int64_t max_context = 0;           // 0: the model's max_position_embeddings
  double kv_cache_gib = 0;           // 0: just what the command needs
  uint64_t dummy_seed = 0;
  SparsityConfig sparsity;           // --attention and its knobs (page size included)
  std::string policy = "auto";       // auto: resolve_auto_policy picks lserve or dense after loading
  std::string granularity = "kv";
};

void add_model_options(CLI::App* cmd, ModelOptions& options);

struct LoadedModel {
  std::filesystem::path dir;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::optional<Tokenizer> tokenizer;  // absent for a dummy model folder without tokenizer.json
  GenerationConfig generation;
};

// The bundled default model folder, searched beside the binary and in the working directory.
std::filesystem::path default_model_dir();

LoadedModel load_model(const ModelOptions& options);

// Finishes the sparsity options after parsing (policy name, granularity) and validates them.
void finish_sparsity(ModelOptions& options);

// --attention auto (the default) becomes lserve when the model runs on the GPU, carries a head
// pattern (or --head-pattern names one) and `longest_prompt` is longer than the streaming heads'
// prefill window, where sparse attention starts to save work; dense otherwise. Logs what it
// chose and why. Does nothing for an explicit policy.
void resolve_auto_policy(ModelOptions& options, const LoadedModel& m, int64_t longest_prompt);

// The head pattern file the model folder carries (head_pattern.txt, else DuoAttention's
// full_attention_heads.tsv), or --head-pattern; empty when there is none.
std::filesystem::path head_pattern_file(const LoadedModel& m, const SparsityConfig& sparsity);

// The head pattern the policy runs with: all retrieval without streaming heads; else
// --head-pattern, else the model folder's (head_pattern.txt, or DuoAttention's
// full_attention_heads.tsv), else an unprofiled uniform pattern (with a warning).
HeadPattern resolve_head_pattern(const LoadedModel& m, const SparsityConfig& sparsity);

// A KV cache of --kv-cache-memory, or (when unset) one just large enough for `max_sequences`
// sequences of `tokens` tokens each, prefilled in chunks of `prefill_chunk`.
std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& options, int64_t tokens,
                                       int64_t max_sequences = 1, int64_t prefill_chunk = 2048);
// A server's CPU threads when --threads is unset: every core but one. The HTTP threads wake on
// every token of every stream; with the last core taken by the compute threads, each wake-up
// preempts one of them and stalls the whole team at its next barrier (serving the bundled model
// on 2 cores, one non-streaming request of 200 tokens: 1.30 s on 2 threads, 0.35 s on 1; `lserve
// bench serve` on both: bench/results/serve/dense.txt).
void default_server_threads(ModelOptions& options);

// A server's shared KV pool: --kv-cache-memory, or (when unset) 1 GiB, grown where that is short of
// one sequence of `max_context` tokens beside the streaming windows of `max_sequences` (it then
// says so). Fails, naming the flags, where a given size is too small for that one sequence.
std::unique_ptr<KvCache> make_server_kv_cache(const LoadedModel& m, ModelOptions& options, int64_t max_context,
                                              int64_t max_sequences, int64_t prefill_chunk);
// The same under a given head pattern (profiling tries many).
std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& options, const HeadPattern& pattern,
                                       int64_t tokens, int64_t max_sequences = 1, int64_t prefill_chunk = 2048);

}  // namespace lserve::cli
