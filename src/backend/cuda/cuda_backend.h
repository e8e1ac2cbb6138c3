// The CUDA backend: bf16 weights, activations and KV cache on one GPU, f32 accumulation
// everywhere. Matrix products through cuBLASLt; norms, RoPE, SwiGLU, embedding and KV append as
// fused kernels; paged attention on tensor cores (attention.h); sampling on the GPU (sampling.h).
// All work is queued on one stream owned by the backend; download() and synchronize() wait for
// it. Decode steps are recorded as CUDA graphs, one per batch shape, and replayed.
#pragma once

#include <memory>

#include "backend/backend.h"

struct CUstream_st;  // cudaStream_t, without the CUDA headers

namespace lserve {

struct CudaBackendOptions {
  int device = 0;
  // Route attention through the plain reference kernel (tests compare the fast kernels with it).
  bool reference_attention = false;
  // Record decode steps as CUDA graphs and replay them (Backend::run_step); off runs every
  // launch from the host, for debugging and comparison.
  bool graphs = true;
  // Page selection (quest, psa, lserve) on the GPU. Off refuses those policies with a clear
  // error (a switch for bisecting a problem to the selector).
  bool gpu_selection = true;
  // Linear layers of up to 8 rows (decode) on our own kernel, q/k/v and gate/up each in one
  // launch (skinny_linear.h); off runs every linear on cuBLASLt (tests compare the two).
  bool skinny_linear = true;
  // Keys per split of a selected page list in decode (whole pages; 0: kDecodeListKeys). Fewer
  // keys: more, shorter blocks and a longer merge.
  int32_t decode_list_keys = 0;
  // Programmatic dependent launch of the decode path's kernels (dependent_launch.cuh): each may
  // start while the one before it drains. Off by default: end to end at 256K on an H200 it made
  // the decode step slower, LServe's 5.33 -> 5.54 ms and dense's 13.19 -> 13.44 ms (one run
  // each way), although the linears alone gain from it. Process-wide: the last backend made sets it.
  bool dependent_launch = false;
  // RoPE, the KV append and the key summaries in one kernel (rope_kv_append.cu); off runs the
  // three kernels (tests compare the two).
  bool fused_rope_kv_append = true;
  // The residual add and RMSNorm after o_proj and down_proj in the last block of the linear's
  // own kernel, at one row (Backend::linear_add_rms_norm, skinny_linear.h); off launches
  // add_rms_norm after it (tests compare the two).
  bool fused_linear_norm = true;
};

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);
inline std::unique_ptr<Backend> make_cuda_backend(int device) { return make_cuda_backend(CudaBackendOptions{device}); }

// The stream a CUDA backend queues its work on (timers and tests record events on it). Fails
// for any other backend.
CUstream_st* cuda_stream_of(Backend& backend);

// How often a CUDA backend recorded a step as a CUDA graph and replayed one (tests check that
// decode runs from graphs), and where the time of its decode-only steps went (`lserve bench`
// prints it): host work before the step's kernels are queued (the batch, the selection plan,
// the attention plan); on the device's clock (CUDA events), the time from the step's start to
// its first kernel (the uploads, and the device waiting for that host work) and the kernels';
// and host work after the step's results came back (storing fresh selections, read counts).
// Fails for any other backend.
struct CudaStepStats {
  int64_t recorded = 0, replayed = 0;
  int64_t overlapped = 0;  // steps begun before the step before them had ended
  int64_t overlap_waits = 0;  // of those, steps whose plan waited for the selections made before
  int64_t timed_steps = 0;  // decode-only steps whose events completed
  double host_plan_s = 0, device_before_kernels_s = 0, device_kernels_s = 0, host_finish_s = 0, step_wall_s = 0;
  double host_select_plan_s = 0;  // of host_plan_s: planning the page selections (jobs, reused lists)
};
CudaStepStats cuda_step_stats(Backend& backend);
// Turns the timing of decode-only steps on (off by default: three event records and two clock
// reads a step that serving does not need). Fails for any other backend. With profile, each timed
// step also runs between cudaProfilerStart and cudaProfilerStop, so that a profiler started with
// its collection off (ncu --profile-from-start off) sees the decode steps only.
void enable_cuda_step_timing(Backend& backend, bool profile = false);

// Number of CUDA devices usable here (0 when there is no driver or no GPU); never throws.
int cuda_device_count();

}  // namespace lserve
