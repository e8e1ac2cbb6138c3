// Carrying a step's page lists into the next step on the device. A decode step begun while the
// step before it still runs (overlapped steps) cannot have that step's fresh selections on the
// host yet; those it reuses stay where the selector wrote them, in the selection block the two
// steps share, and the rest of the block comes from the host through a staging copy.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lserve::cuda {

// What becomes of a unit's count and list (keep[unit]).
inline constexpr int32_t kListFromHost = -2;  // the staged count and list replace the block's
inline constexpr int32_t kListKept = -1;      // the block's stay as they are
// keep[unit] >= 0: the block's stay, and page keep[unit] (a page appended since the selection)
// is added at the end unless the list already ends at or past it.

// For every unit of [units] (count at counts[unit], list at lists[unit * capacity ..]):
// staged_counts / staged_lists (same layout) or the block's own, as keep[unit] says.
void carry_reused_lists(int32_t* counts, int32_t* lists, const int32_t* staged_counts, const int32_t* staged_lists,
                        const int32_t* keep, int64_t units, int32_t capacity, cudaStream_t stream);

}  // namespace lserve::cuda
