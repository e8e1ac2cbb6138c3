#include "core/tensor.h"

#include <cstdlib>
#include <utility>

namespace lserve {

void check_failed(const char* condition, const std::string& message, const char* file, int line) {
  throw Error(fmt::format("internal error: {} ({}) at {}:{}", message.empty() ? "check failed" : message,
                          condition, file, line));
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  LSERVE_CHECK(shape.ndim >= 1 && begin >= 0 && begin + count <= shape[0], "rows out of range");
  Tensor t = *this;
  t.shape.dims[0] = count;
  const size_t row_bytes = static_cast<size_t>(numel() / std::max<int64_t>(shape[0], 1)) * dtype_size(dtype);
  t.data = static_cast<char*>(data) + static_cast<size_t>(begin) * row_bytes;
  return t;
}

HostBuffer::HostBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  const size_t rounded = (bytes + 63) / 64 * 64;
  data_ = std::aligned_alloc(64, rounded);
  if (!data_) fail("out of host memory allocating {} bytes", bytes);
}

HostBuffer::~HostBuffer() { std::free(data_); }

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Tensor HostBuffer::view(DType dtype, Shape shape) const {
  Tensor t{data_, dtype, shape, Device::Cpu};
  LSERVE_CHECK(t.nbytes() <= size_, "view of {} bytes over a buffer of {}", t.nbytes(), size_);
  return t;
}

}  // namespace lserve
