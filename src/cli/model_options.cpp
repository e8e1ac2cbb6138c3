#include "cli/model_options.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "core/error.h"
#include "model/weights.h"
#ifdef LSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace lserve::cli {

namespace {
constexpr const char* kDefaultModel = "models/tiny-llama";

std::filesystem::path executable_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}
}  // namespace

void add_model_options(CLI::App* cmd, ModelOptions& o) {
  cmd->add_option("--model,-m", o.model, "HF model folder (default: the bundled " + std::string(kDefaultModel) + ")");
  cmd->add_option("--load-format", o.load_format, "auto: safetensors from the folder; dummy: random weights of its config.json")
      ->check(CLI::IsMember({"auto", "dummy"}));
  cmd->add_option("--device", o.device, "where the model runs: cpu, or cuda (GPU 0; needs a build with LSERVE_CUDA=ON)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--threads,-t", o.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-context", o.max_context, "longest sequence served (default: the model's max_position_embeddings)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-cache-memory", o.kv_cache_gib, "KV cache size in GiB (default: what the command needs)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--page-size", o.page_size, "tokens per physical KV page")->check(CLI::Range(1, 4096));
  cmd->add_option("--dummy-seed", o.dummy_seed, "seed of --load-format dummy weights");
}

std::filesystem::path default_model_dir() {
  const auto exe = executable_dir();
  for (const auto& base : {exe / "..", exe, std::filesystem::current_path()}) {
    auto dir = base / kDefaultModel;
    if (std::filesystem::exists(dir / "config.json")) return std::filesystem::weakly_canonical(dir);
  }
  fail("no --model given and the bundled default model ({}) was not found beside the binary or in the "
       "working directory",
       kDefaultModel);
}

LoadedModel load_model(const ModelOptions& o) {
  LoadedModel m;
  std::filesystem::path config_path;
  if (o.model.empty()) {
    m.dir = default_model_dir();
  } else if (std::filesystem::is_regular_file(o.model) && o.load_format == "dummy") {
    config_path = o.model;  // a bare config.json is enough for dummy weights
    m.dir = config_path.parent_path();
  } else {
    m.dir = o.model;
    if (!std::filesystem::is_directory(m.dir)) fail("{}: model folder not found", m.dir.string());
  }
  if (config_path.empty()) config_path = m.dir / "config.json";
  ModelConfig config = ModelConfig::from_file(config_path);
  spdlog::info("model: {}", config.summary());

  int64_t max_context = o.max_context ? o.max_context : config.max_position_embeddings;
  if (max_context > config.max_position_embeddings)
    fail("--max-context {} exceeds the model's max_position_embeddings ({})", max_context,
         config.max_position_embeddings);
  if (config.sliding_window && *config.sliding_window < max_context) {
    // Sliding-window attention arrives with the streaming-head kernels; until then serve only
    // what full attention computes exactly.
    spdlog::warn("model uses a {}-token sliding window; max context limited to it", *config.sliding_window);
    max_context = *config.sliding_window;
  }

  if (o.device == "cuda") {
#ifdef LSERVE_HAVE_CUDA
    m.backend = make_cuda_backend(0);
#else
    fail("--device cuda: this lserve was built without the CUDA backend (configure with -DLSERVE_CUDA=ON)");
#endif
  } else {
    m.backend = make_cpu_backend(o.threads);
  }
  spdlog::info("backend: {}", m.backend->name());
  ModelWeights weights = o.load_format == "dummy" ? make_dummy_weights(config, *m.backend, o.dummy_seed)
                                                  : load_weights(config, m.dir, *m.backend);
  m.model = std::make_unique<LlamaModel>(std::move(config), std::move(weights), *m.backend, max_context);
  if (std::filesystem::exists(m.dir / "tokenizer.json")) m.tokenizer = Tokenizer::from_dir(m.dir);
  m.generation = GenerationConfig::from_dir(m.dir);
  return m;
}

std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& o, int64_t tokens) {
  KvCacheOptions kv;
  kv.page_size = o.page_size;
  const ModelConfig& c = m.model->config();
  const size_t page_bytes = KvCache::bytes_per_page(c, o.page_size, m.backend->compute_dtype());
  kv.memory_bytes = o.kv_cache_gib > 0 ? static_cast<size_t>(o.kv_cache_gib * (1ull << 30))
                                       : page_bytes * static_cast<size_t>((tokens + o.page_size - 1) / o.page_size);
  auto cache = std::make_unique<KvCache>(c, kv, *m.backend);
  spdlog::info("{}", cache->summary());
  return cache;
}

}  // namespace lserve::cli
