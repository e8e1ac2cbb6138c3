#include "cli/model_options.h"

#include <sched.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "model/weights.h"
#ifdef LSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace lserve::cli {

namespace {
constexpr const char* kDefaultModel = "models/lserve-tiny-16k";

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
  cmd->add_flag("--no-cuda-graphs", o.no_cuda_graphs,
               "with --device cuda: launch every kernel from the host instead of replaying decode steps as CUDA graphs");
  cmd->add_flag("--dependent-launch", o.dependent_launch,
                "with --device cuda: let the decode path's kernels start while the one before them drains "
                "(programmatic dependent launch; off by default: slower end to end where measured)");
  cmd->add_flag("--unfused-kv-append", o.unfused_kv_append,
                "with --device cuda: RoPE, the KV append and the key summaries as three kernels, not one (for comparison)");
  cmd->add_flag("--unfused-norm", o.unfused_norm,
                "with --device cuda: the residual add and RMSNorm after o_proj and down_proj as a kernel of their own, "
                "not the end of the linear's (for comparison)");
  cmd->add_flag("--overlap-steps,!--no-overlap-steps", o.overlap_steps,
                "with --device cuda: plan and queue each decode step while the one before it runs, fed by the "
                "token it draws on the GPU, so the GPU does not wait for the host between steps (on by default: "
                "faster end to end where measured; --no-overlap-steps runs one step after the other)");
  cmd->add_option("--threads,-t", o.threads,
                  "CPU threads (default: all cores; serve and bench-serve: all but one, for the HTTP threads)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-context", o.max_context, "longest sequence served (default: the model's max_position_embeddings)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-cache-memory", o.kv_cache_gib,
                  "KV cache size in GiB (default: what the command needs; serve and bench-serve: 1 GiB, more "
                  "where one sequence of the max context needs it)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--dummy-seed", o.dummy_seed, "seed of --load-format dummy weights");

  SparsityConfig& s = o.sparsity;
  auto* g = "Sparse attention (defaults are LServe's)";
  cmd->add_option("--attention", o.policy,
                  "attention policy: auto, dense, lserve, streaming, quest or psa (auto: lserve on the GPU for prompts "
                  "longer than the prefill window when the model carries a head pattern, else dense)")
      ->check(CLI::IsMember({"auto", "dense", "lserve", "streaming", "quest", "psa"}))->group(g)->capture_default_str();
  cmd->add_option("--page-size", s.page_size, "tokens per physical KV page")->check(CLI::Range(1, 4096))->group(g)->capture_default_str();
  cmd->add_option("--logical-page-size", s.logical_page_size, "tokens per logical page the selector scores")
      ->check(CLI::Range(1, 4096))->group(g)->capture_default_str();
  cmd->add_option("--token-budget", s.token_budget, "decode KV tokens per retrieval head (quest, lserve)")
      ->check(CLI::PositiveNumber)->group(g)->capture_default_str();
  cmd->add_option("--selector-interval", s.selector_interval, "decode steps a page selection is reused for")
      ->check(CLI::PositiveNumber)->group(g)->capture_default_str();
  cmd->add_option("--sink", s.decode_window.sink, "streaming heads: sink tokens in decode")->check(CLI::NonNegativeNumber)->group(g)->capture_default_str();
  cmd->add_option("--local", s.decode_window.local, "streaming heads: local window in decode")->check(CLI::PositiveNumber)->group(g)->capture_default_str();
  cmd->add_option("--prefill-sink", s.prefill_window.sink, "streaming heads: sink tokens in prefill")->check(CLI::NonNegativeNumber)->group(g)->capture_default_str();
  cmd->add_option("--prefill-local", s.prefill_window.local, "streaming heads: local window in prefill")->check(CLI::PositiveNumber)->group(g)->capture_default_str();
  cmd->add_option("--streaming-ratio", s.streaming_ratio, "fraction of KV heads that stream (overrides the pattern's rule; default 0.5 without a pattern)")->group(g);
  cmd->add_option("--head-pattern", s.head_pattern_file, "head pattern file (lserve format or DuoAttention's full_attention_heads.tsv)")->group(g);
  cmd->add_option("--selection", o.granularity, "page selection per KV head (shared by its query heads) or per query head")
      ->check(CLI::IsMember({"kv", "query"}))->group(g)->capture_default_str();
  cmd->add_option("--psa-mass", s.psa_mass, "psa: keep pages until this share of the estimated attention mass")->group(g)->capture_default_str();
  cmd->add_option("--psa-min-budget", s.psa_min_budget, "psa: fewest tokens kept")->group(g)->capture_default_str();
  cmd->add_option("--psa-max-budget", s.psa_max_budget, "psa: most tokens kept")->group(g)->capture_default_str();
}

void finish_sparsity(ModelOptions& o) {
  // auto stays dense until resolve_auto_policy sees the model and the prompts.
  o.sparsity.policy = o.policy == "auto" ? AttentionPolicy::Dense : parse_policy(o.policy);
  o.sparsity.granularity = o.granularity == "query" ? SelectionGranularity::QueryHead : SelectionGranularity::KvHead;
  o.sparsity.validate();
}

std::filesystem::path head_pattern_file(const LoadedModel& m, const SparsityConfig& s) {
  if (!s.head_pattern_file.empty()) return s.head_pattern_file;
  for (const char* name : {"head_pattern.txt", "full_attention_heads.tsv"})
    if (std::filesystem::exists(m.dir / name)) return m.dir / name;
  return {};
}

void resolve_auto_policy(ModelOptions& o, const LoadedModel& m, int64_t longest_prompt) {
  if (o.policy != "auto") return;
  const StreamingWindow& w = o.sparsity.prefill_window;
  const int64_t threshold = w.sink + w.local;
  std::string why;
  if (o.device != "cuda")
    why = "not on the GPU";
  else if (head_pattern_file(m, o.sparsity).empty())
    why = "the model carries no head pattern (make one with `lserve profile-heads`)";
  else if (longest_prompt <= threshold)
    why = fmt::format("the longest prompt ({} tokens) fits the {}-token prefill window", longest_prompt, threshold);
  o.sparsity.policy = why.empty() ? AttentionPolicy::LServe : AttentionPolicy::Dense;
  o.policy = std::string(policy_name(o.sparsity.policy));
  if (why.empty())
    spdlog::info("--attention auto: lserve (GPU, head pattern, prompts up to {} tokens, longer than the {}-token "
                 "prefill window)",
                 longest_prompt, threshold);
  else
    spdlog::info("--attention auto: dense ({})", why);
}

HeadPattern resolve_head_pattern(const LoadedModel& m, const SparsityConfig& s) {
  const ModelConfig& c = m.model->config();
  if (!s.has_streaming_heads()) return HeadPattern::all_retrieval(c.num_layers, c.num_kv_heads);
  const HeadRule rule{s.streaming_ratio, std::nullopt};
  const std::filesystem::path file = head_pattern_file(m, s);
  HeadPattern p = file.empty() ? HeadPattern::uniform(c.num_layers, c.num_kv_heads, s.streaming_ratio.value_or(0.5))
                               : HeadPattern::load(file, rule);
  p.validate(c.num_layers, c.num_kv_heads);
  if (file.empty())
    spdlog::warn("no head pattern for this model: {:.0f}% of KV heads stream, chosen without profiling "
                 "(accuracy needs `lserve profile-heads`)", p.streaming_fraction() * 100);
  else
    spdlog::info("head pattern {}: {} of {} KV heads stream", file.string(), p.num_streaming(), c.num_layers * c.num_kv_heads);
  return p;
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
    CudaBackendOptions cuda;
    cuda.graphs = !o.no_cuda_graphs;
    cuda.dependent_launch = o.dependent_launch;
    cuda.fused_rope_kv_append = !o.unfused_kv_append;
    cuda.fused_linear_norm = !o.unfused_norm;
    m.backend = make_cuda_backend(cuda);
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

std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& o, int64_t tokens,
                                       int64_t max_sequences, int64_t prefill_chunk) {
  return make_kv_cache(m, o, resolve_head_pattern(m, o.sparsity), tokens, max_sequences, prefill_chunk);
}

void default_server_threads(ModelOptions& o) {
  if (o.threads > 0 || o.device != "cpu") return;
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                                  : static_cast<int>(std::thread::hardware_concurrency());
  o.threads = std::max(1, cores - 1);
}

std::unique_ptr<KvCache> make_server_kv_cache(const LoadedModel& m, ModelOptions& o, int64_t max_context,
                                              int64_t max_sequences, int64_t prefill_chunk) {
  const bool given = o.kv_cache_gib > 0;
  if (!given) o.kv_cache_gib = 1.0;
  auto cache = make_kv_cache(m, o, max_context, max_sequences, prefill_chunk);
  if (!cache->has_pool(HeadKind::Retrieval)) return cache;
  auto capacity = [&] { return cache->allocator(HeadKind::Retrieval).num_pages() * cache->page_size(); };
  // The streaming pool takes its sequences' windows, up to three quarters of the memory (KvCache):
  // while it is at that cap, a GiB more gives the retrieval pool a quarter of it.
  for (int attempt = 0; attempt < 3 && !given && capacity() < max_context; ++attempt) {
    const int64_t missing_pages = (max_context - capacity() + cache->page_size() - 1) / cache->page_size() + 1;
    const auto gib = [](double bytes) { return bytes / static_cast<double>(1ull << 30); };
    double missing_gib = gib(static_cast<double>(missing_pages) *
                             static_cast<double>(cache->bytes_per_page(HeadKind::Retrieval)));
    if (cache->has_pool(HeadKind::Streaming)) {
      const double streaming_gib = gib(static_cast<double>(cache->allocator(HeadKind::Streaming).num_pages()) *
                                       static_cast<double>(cache->bytes_per_page(HeadKind::Streaming)));
      if (streaming_gib >= 0.75 * o.kv_cache_gib - gib(static_cast<double>(cache->bytes_per_page(HeadKind::Streaming))))
        missing_gib *= 4;
    }
    cache.reset();  // its memory first
    o.kv_cache_gib += missing_gib;
    spdlog::info("KV cache: {:.2f} GiB, to hold one sequence of the max context ({} tokens) beside {} sequences' "
                 "streaming windows (--kv-cache-memory sets it)",
                 o.kv_cache_gib, max_context, max_sequences);
    cache = make_kv_cache(m, o, max_context, max_sequences, prefill_chunk);
  }
  if (capacity() < max_context)
    fail("the KV cache holds {} tokens, less than the max context of {}: raise --kv-cache-memory (now {:.2f} GiB) or "
         "lower --max-context",
         capacity(), max_context, o.kv_cache_gib);
  return cache;
}

std::unique_ptr<KvCache> make_kv_cache(const LoadedModel& m, const ModelOptions& o, const HeadPattern& pattern,
                                       int64_t tokens, int64_t max_sequences, int64_t prefill_chunk) {
  const SparsityConfig& s = o.sparsity;
  const ModelConfig& c = m.model->config();
  KvCacheOptions kv;
  kv.page_size = s.page_size;
  kv.logical_page_size = s.selects_pages() ? s.logical_page_size : 0;
  kv.max_sequences = max_sequences;
  if (pattern.num_streaming() > 0) {
    // A step's queries need the sink, the local band before them and their own pages.
    const int64_t P = s.page_size;
    const int64_t widest = std::max(s.prefill_window.local + prefill_chunk, s.decode_window.local + 1);
    const int64_t sink = std::max(s.prefill_window.sink, s.decode_window.sink);
    kv.streaming_pages_per_sequence = (sink + P - 1) / P + (widest + P - 1) / P + 1;
  }
  if (o.kv_cache_gib > 0) {
    kv.memory_bytes = static_cast<size_t>(o.kv_cache_gib * (1ull << 30));
  } else {
    // Just enough: every position in the retrieval pool, the bounded window in the streaming pool.
    const int64_t ret_pages = (tokens + s.page_size - 1) / s.page_size;
    kv.retrieval_pages = ret_pages * max_sequences;
    kv.streaming_pages_per_sequence = std::min(kv.streaming_pages_per_sequence, ret_pages);
    kv.streaming_pages = kv.streaming_pages_per_sequence * max_sequences;
  }
  auto cache = std::make_unique<KvCache>(c, pattern, kv, *m.backend);
  spdlog::info("{}", cache->summary());
  return cache;
}

}  // namespace lserve::cli
