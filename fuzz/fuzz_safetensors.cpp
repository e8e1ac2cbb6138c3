// Fuzzes the safetensors header parser: any bytes must parse or throw lserve::Error, never
// crash, read out of bounds, or hand out a tensor view outside the file.
#include <cstdint>
#include <cstdlib>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tensors = lserve::parse_safetensors(data, size, "fuzz");
    for (const auto& [name, e] : tensors) {
      if (e.data < data || e.data + e.nbytes > data + size) std::abort();  // view escapes the file
      volatile uint8_t sink = 0;
      if (e.nbytes) sink = e.data[e.nbytes - 1];  // touch the last byte: ASan checks the range
      (void)sink;
    }
  } catch (const lserve::Error&) {
  }
  return 0;
}
