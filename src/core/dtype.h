// Element types of tensors and their conversions. bf16 and f16 are stored as raw uint16_t
// bits; conversion to f32 is exact, conversion from f32 rounds to nearest even.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace lserve {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool };

// Bytes per element.
size_t dtype_size(DType dtype);
// Canonical name as safetensors spells it ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; returns false if unknown.
bool parse_dtype(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float f);

// Converts n elements of `src` (of dtype `from`) to f32. Supports F32, F16, BF16.
void convert_to_f32(const void* src, DType from, float* dst, size_t n);

}  // namespace lserve
