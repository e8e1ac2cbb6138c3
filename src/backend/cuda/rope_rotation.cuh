// NeoX RoPE's rotation of one pair of a head's row, (i, i + head_dim / 2), by the model's f32
// cos | sin table: the one formula rope.cu and rope_kv_append.cu both apply, so that the
// rotated values (rounded to bf16 once) are the same wherever they are computed.
#pragma once

#include "backend/cuda/kernels.h"

namespace lserve::cuda {

struct Rotation {
  const float* cos_sin;
  int64_t max_pos;
  int half;
  // The rotated pair (i, i + half) of a row at `pos`; a position outside the table leaves the
  // row as it is (as rope_kernel does).
  __device__ void apply(const bf16* row, int32_t pos, int i, bf16& a, bf16& b) const {
    if (pos < 0 || pos >= max_pos) {
      a = row[i];
      b = row[i + half];
      return;
    }
    const int d = 2 * half;
    const float c = cos_sin[int64_t{pos} * d + i], s = cos_sin[int64_t{pos} * d + half + i];
    const float x1 = __bfloat162float(row[i]), x2 = __bfloat162float(row[i + half]);
    a = __float2bfloat16_rn(x1 * c - x2 * s);
    b = __float2bfloat16_rn(x2 * c + x1 * s);
  }
};

}  // namespace lserve::cuda
