// Safetensors reading: a file is an 8-byte little-endian header length, a JSON header naming
// each tensor's dtype, shape and [begin, end) byte offsets, then the raw data. We mmap the
// file and hand out views into it; nothing is copied. A sharded checkpoint is a set of such
// files plus model.safetensors.index.json mapping each tensor name to its shard.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace lserve {

struct SafetensorsEntry {
  DType dtype;
  Shape shape;
  const uint8_t* data;  // into the mapped file
  size_t nbytes;
};

// Parses a header. `file_size` bounds the data offsets. Throws Error naming `source` on any
// malformation (not JSON, offsets past the end or overlapping, shape/dtype/size mismatch).
// Exposed apart from the file so the fuzzer can drive it.
std::map<std::string, SafetensorsEntry> parse_safetensors(const uint8_t* file, size_t file_size,
                                                          const std::string& source);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::map<std::string, SafetensorsEntry> tensors_;
};

// All tensors of a model folder: model.safetensors, or the shards its index names.
class WeightFiles {
 public:
  static WeightFiles open(const std::filesystem::path& model_dir);

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Throws Error naming the tensor if absent.
  const SafetensorsEntry& get(const std::string& name) const;
  // The file a tensor lives in (for error messages).
  std::string file_of(const std::string& name) const;
  std::vector<std::string> names() const;
  size_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> index_;
};

}  // namespace lserve
