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

namespace lserve::cli {

struct ModelOptions {
  std::string model;                 // HF folder; empty: the bundled default model
  std::string load_format = "auto";  // auto | dummy
  std::string device = "cpu";        // cpu | cuda
  int threads = 0;                   // 0: all cores
  int64_t max_context = 0;           // 0: the model's max_position_embeddings
  double kv_cache_gib = 0;           // 0: just what the command needs
  int page_size = 64;
  uint64_t dummy_seed = 0;
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

// A KV cache of --kv-cache-memory, or (when unset) one just large enough for `tokens` tokens.
std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& options, int64_t tokens);

}  // namespace lserve::cli
