// Page selection on the GPU for retrieval heads in decode: the same steps and the same rules as
// the host selector (sparse/page_selector.h, the reference it is tested against):
//   1. score every logical page of the sequence for each query head of the unit by the Quest
//      bound sum_c max(q_c kmax_c, q_c kmin_c), pooled onto the physical page by max;
//   2. per head, the softmax of scale * score over pages; the unit's mass estimate is the mean
//      over its heads (in double, as on the host);
//   3. keep the first and the last page, then pages by descending mass (ties: lower index) up to
//      the budget, or, under PSA, until the kept mass reaches the threshold within its bounds.
// A context of no more pages than a fixed budget keeps every page. The scores, masses and
// large sorts live in a scratch buffer the caller sizes per job (select_scratch_bytes); a job's
// work is spread over many blocks, so one sequence's selection fills the GPU. Two launches: the
// scores (with each chunk's softmax statistics), then the masses, whose last block per job
// picks the pages (it learns it is last from a counter per job in `arrivals`).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lserve::cuda {

inline constexpr int kSelectMaxHeads = 16;    // query heads per unit (a KV head's group)
inline constexpr int kSelectMaxHeadDim = 256;
inline constexpr int kSelectMaxLogicalPerPage = 64;  // page_size / logical_page_size

// One (decoding sequence, selection unit) whose pages are picked now.
struct SelectJob {
  int32_t q_row;        // the batch row of the sequence's query
  int32_t head0;        // first query head of the unit
  int32_t num_heads;    // query heads of the unit (the KV head's group)
  int32_t pool_index;   // the KV head's index in the retrieval pool
  int32_t pages_begin;  // the sequence's page table: page_indices[pages_begin .. + num_pages)
  int32_t num_pages, num_tokens;
  int32_t max_pages, min_pages;  // the budget rule in pages (min: PSA's lower bound)
  double mass_threshold;         // 0: a fixed budget
  int32_t out;          // the picked pages (indices within the sequence, ascending) go to
                        // out_pages[out ..], their count to out_counts[count_index]
  int32_t count_index;
  int32_t scratch;      // this job's offset into the scratch buffer, bytes / 16
  int32_t active;       // 0: the selection is reused this step (a recorded step's fixed grid
                        // holds a job for every unit; only the active ones select)
};

struct SelectParams {
  const __nv_bfloat16* q;  // [rows, num_heads, head_dim]
  int32_t num_heads, head_dim;  // head_dim: a multiple of 8
  int32_t max_job_heads;        // the most query heads of any job of the launch (0: kSelectMaxHeads)
  int32_t grid_pages;           // select_grid_pages() of the launch's longest job (0: 8192 pages)
  const __nv_bfloat16* key_min;  // [pool pages, pool heads, page_size / logical, head_dim]
  const __nv_bfloat16* key_max;
  int32_t pool_heads, page_size, logical_page_size;
  float scale;
  const int32_t* page_indices;
  int32_t* out_pages;
  int32_t* out_counts;
  unsigned char* scratch;
  uint32_t* arrivals;  // one counter per job of a launch: zero before the first launch, and the
                       // kernels leave them zero (so a recorded launch can be replayed)
};

// Scratch one job needs (16-byte aligned): scores [heads][pages] f32, per-chunk maxima and
// partial sums, mass [pages] f64, and for budgets of more than 2048 candidates their sort.
// logical_per_page: page_size / logical_page_size; max_pages: the job's budget in pages.
size_t select_scratch_bytes(int32_t num_heads, int32_t num_pages, int32_t logical_per_page, int32_t max_pages);

// The pages a launch's grid is sized for, given its longest job: a power of two of the mass
// kernel's chunks, so that a recorded launch keeps its grid while contexts grow a little (the
// caller records again once it changes). Longer jobs are still right, only slower.
int32_t select_grid_pages(int32_t max_pages);

void select_pages(const SelectParams& p, const SelectJob* jobs, int32_t num_jobs, cudaStream_t stream);

}  // namespace lserve::cuda
