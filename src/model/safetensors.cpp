#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace lserve {

using nlohmann::json;

namespace {
// A header larger than this is not a weight file (HF's own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
}  // namespace

std::map<std::string, SafetensorsEntry> parse_safetensors(const uint8_t* file, size_t file_size,
                                                          const std::string& source) {
  if (file_size < 8) fail("{}: too short to be a safetensors file ({} bytes)", source, file_size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes)", source, header_len, file_size);

  json header;
  try {
    header = json::parse(file + 8, file + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", source, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", source);

  const uint8_t* data = file + 8 + header_len;
  const size_t data_size = file_size - 8 - header_len;
  std::map<std::string, SafetensorsEntry> out;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object()) fail("{}: tensor '{}' entry is not an object", source, name);
    auto dt = info.find("dtype");
    auto sh = info.find("shape");
    auto off = info.find("data_offsets");
    if (dt == info.end() || !dt->is_string() || sh == info.end() || !sh->is_array() || off == info.end() ||
        !off->is_array() || off->size() != 2)
      fail("{}: tensor '{}' needs dtype, shape and two data_offsets", source, name);
    SafetensorsEntry e{};
    if (!parse_dtype(dt->get<std::string>(), &e.dtype))
      fail("{}: tensor '{}' has unknown dtype '{}'", source, name, dt->get<std::string>());
    if (sh->size() > static_cast<size_t>(kMaxDims))
      fail("{}: tensor '{}' has {} dims (at most {} supported)", source, name, sh->size(), kMaxDims);
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) fail("{}: tensor '{}' has a bad shape {}", source, name, sh->dump());
      const uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40) || (v && numel > (1ull << 62) / v))
        fail("{}: tensor '{}' shape {} is too large", source, name, sh->dump());
      numel *= v;
      e.shape.dims[e.shape.ndim++] = static_cast<int64_t>(v);
    }
    if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      fail("{}: tensor '{}' has bad data_offsets {}", source, name, off->dump());
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size)
      fail("{}: tensor '{}' data [{}, {}) lies outside the {} data bytes", source, name, begin, end, data_size);
    if (end - begin != numel * dtype_size(e.dtype))
      fail("{}: tensor '{}' holds {} bytes but shape {} of {} needs {}", source, name, end - begin, sh->dump(),
           dtype_name(e.dtype), numel * dtype_size(e.dtype));
    e.data = data + begin;
    e.nbytes = end - begin;
    ranges.emplace_back(begin, end);
    out.emplace(name, e);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail("{}: tensor data ranges overlap", source);
  return out;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(path), tensors_(parse_safetensors(file_.data(), file_.size(), path.string())) {}

WeightFiles WeightFiles::open(const std::filesystem::path& model_dir) {
  WeightFiles w;
  const auto single = model_dir / "model.safetensors";
  const auto index_path = model_dir / "model.safetensors.index.json";
  std::vector<std::filesystem::path> shard_paths;
  if (std::filesystem::exists(index_path)) {
    json index;
    try {
      index = json::parse(read_text_file(index_path));
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", index_path.string(), e.what());
    }
    auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) fail("{}: missing 'weight_map' object", index_path.string());
    std::set<std::string> shards;
    for (const auto& [name, shard] : map->items()) {
      if (!shard.is_string()) fail("{}: shard of '{}' is not a string", index_path.string(), name);
      const std::string s = shard.get<std::string>();
      if (s.find('/') != std::string::npos || s == "..")
        fail("{}: shard name '{}' must be a file in the model folder", index_path.string(), s);
      shards.insert(s);
    }
    for (const auto& s : shards) shard_paths.push_back(model_dir / s);
  } else if (std::filesystem::exists(single)) {
    shard_paths.push_back(single);
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", model_dir.string());
  }
  for (const auto& p : shard_paths) {
    w.files_.push_back(std::make_unique<SafetensorsFile>(p));
    const SafetensorsFile* f = w.files_.back().get();
    for (const auto& [name, entry] : f->tensors()) {
      if (!w.index_.emplace(name, std::make_pair(f, &entry)).second)
        fail("{}: tensor '{}' appears in more than one shard", p.string(), name);
    }
  }
  return w;
}

const SafetensorsEntry& WeightFiles::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::string where = files_.empty() ? std::string("weights") : files_.front()->path().parent_path().string();
    fail("{}: tensor '{}' is missing from the weights", where, name);
  }
  return *it->second.second;
}

std::string WeightFiles::file_of(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? std::string("?") : it->second.first->path().string();
}

std::vector<std::string> WeightFiles::names() const {
  std::vector<std::string> v;
  for (const auto& [n, _] : index_) v.push_back(n);
  return v;
}

size_t WeightFiles::total_bytes() const {
  size_t n = 0;
  for (const auto& [_, fe] : index_) n += fe.second->nbytes;
  return n;
}

}  // namespace lserve
