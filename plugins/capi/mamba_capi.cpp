// mamba_capi.cpp -- the plain C ABI of libmamba_deploy_kernels.so (loaded with ctypes by
// mamba_deploy/ops/_lib.py). Params are the structs of plugins/kernels/mamba_kernels.h, gemv.h and sampling.h,
// passed by pointer (all fields 8 bytes wide); the stream is a cudaStream_t as void* (NULL: legacy default);
// every entry point returns the cudaError_t code of its launch (0: success) and leaves a message
// for md_get_last_error_string() when it fails.
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "gemv.h"
#include "mamba_kernels.h"
#include "sampling.h"

#define MD_API extern "C" __attribute__((visibility("default")))

namespace {

thread_local std::string g_last_error;

int finish(cudaError_t err, const char* op) {
  if (err == cudaSuccess) return 0;
  const char* why = err == cudaErrorInvalidValue && md_kernels_check_message()[0] ? md_kernels_check_message()
                                                                                    : cudaGetErrorString(err);
  g_last_error = std::string(op) + ": " + why;
  return static_cast<int>(err);
}

int invalid(const char* msg) {
  g_last_error = msg;
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

MD_API int md_version(void) { return MD_KERNELS_VERSION; }

MD_API const char* md_get_last_error_string(void) { return g_last_error.c_str(); }

// Programmatic dependent launch of the decode kernels (mamba_kernels.h), process-wide: 1 on, 0 off; returns
// the previous setting.
MD_API int md_set_programmatic_launch(int64_t enable) {
  const int previous = md_kernels_programmatic_launch();
  md_kernels_set_programmatic_launch(enable != 0);
  return previous;
}

#ifdef MD_KERNEL_TRACE
// A diagnostic build's tensor-core GEMV timestamps (trace.cuh): kTraceCalls x kTraceBlocks x 8 values, and the calls.
MD_API int md_tc_trace_read(uint64_t* rows, uint32_t* calls) {
  return finish(md_gemv_tc_trace_read(rows, calls), "md_tc_trace_read");
}
#endif

// sizeof the params struct of `kind`: 0 causal conv1d, 1 ssm, 2 add_norm, 3 gated_rms_norm, 4 gemv,
// 5 mamba1 step, 6 mamba2 step, 7 row norm, 8 philox, 9 attention decode, 10 sample, 11 mamba1 decode,
// 12 mamba1 decode's layer record, 13 mamba2 decode, 14 mamba2 decode's layer record; -1 unknown.
MD_API int64_t md_params_size(int64_t kind) {
  switch (kind) {
    case 0: return sizeof(md_causal_conv1d_params);
    case 1: return sizeof(md_ssm_params);
    case 2: return sizeof(md_add_norm_params);
    case 3: return sizeof(md_gated_rms_norm_params);
    case 4: return sizeof(md_gemv_params);
    case 5: return sizeof(md_mamba1_step_params);
    case 6: return sizeof(md_mamba2_step_params);
    case 7: return sizeof(md_row_norm_params);
    case 8: return sizeof(md_philox_params);
    case 9: return sizeof(md_attention_decode_params);
    case 10: return sizeof(md_sample_params);
    case 11: return sizeof(md_mamba1_decode_params);
    case 12: return sizeof(md_mamba1_layer);
    case 13: return sizeof(md_mamba2_decode_params);
    case 14: return sizeof(md_mamba2_layer);
    default: return -1;
  }
}

MD_API int md_causal_conv1d_fwd(const md_causal_conv1d_params* p, void* stream) {
  return finish(md_launch_causal_conv1d(p, static_cast<cudaStream_t>(stream)), "md_causal_conv1d_fwd");
}

MD_API int md_causal_conv1d_update(const md_causal_conv1d_params* p, void* stream) {
  if (p && p->seqlen != 1) return invalid("md_causal_conv1d_update: seqlen must be 1");
  return finish(md_launch_causal_conv1d(p, static_cast<cudaStream_t>(stream)), "md_causal_conv1d_update");
}

// Scratch the two prefill scans want (md_ssm_scan_workspace_size): callers allocate it and pass it in.
MD_API int64_t md_ssm_scan_workspace_bytes(const md_ssm_params* p) {
  return static_cast<int64_t>(md_ssm_scan_workspace_size(p));
}

// Which form the Mamba1 scan takes for `p` (md_ssm_scan_split_lanes): tests and benchmarks ask.
MD_API int md_selective_scan_split_lanes(const md_ssm_params* p) { return md_ssm_scan_split_lanes(p); }

MD_API int md_selective_scan_fwd(const md_ssm_params* p, void* workspace, int64_t workspace_bytes, void* stream) {
  if (p && p->headdim != 1) return invalid("md_selective_scan_fwd: Mamba1 layout has headdim 1");
  return finish(md_launch_ssm_scan_ws(p, workspace, static_cast<size_t>(workspace_bytes),
                                      static_cast<cudaStream_t>(stream)), "md_selective_scan_fwd");
}

MD_API int md_selective_state_update(const md_ssm_params* p, void* stream) {
  if (p && p->seqlen != 1) return invalid("md_selective_state_update: seqlen must be 1");
  return finish(md_launch_ssm_scan(p, static_cast<cudaStream_t>(stream)), "md_selective_state_update");
}

MD_API int md_mamba2_chunk_scan_fwd(const md_ssm_params* p, void* workspace, int64_t workspace_bytes,
                                    void* stream) {
  return finish(md_launch_ssm_scan_ws(p, workspace, static_cast<size_t>(workspace_bytes),
                                      static_cast<cudaStream_t>(stream)), "md_mamba2_chunk_scan_fwd");
}

MD_API int md_add_norm_fwd(const md_add_norm_params* p, void* stream) {
  return finish(md_launch_add_norm(p, static_cast<cudaStream_t>(stream)), "md_add_norm_fwd");
}

MD_API int md_gated_rms_norm_fwd(const md_gated_rms_norm_params* p, void* stream) {
  return finish(md_launch_gated_rms_norm(p, static_cast<cudaStream_t>(stream)), "md_gated_rms_norm_fwd");
}

// ---- the native engine's decode kernels (gemv.h) -------------------------------------------------

MD_API int md_gemv_fwd(const md_gemv_params* p, void* stream) {
  return finish(md_launch_gemv(p, static_cast<cudaStream_t>(stream)), "md_gemv_fwd");
}

MD_API int md_mamba1_step_fwd(const md_mamba1_step_params* p, void* stream) {
  return finish(md_launch_mamba1_step(p, static_cast<cudaStream_t>(stream)), "md_mamba1_step_fwd");
}

MD_API int md_mamba2_step_fwd(const md_mamba2_step_params* p, void* stream) {
  return finish(md_launch_mamba2_step(p, static_cast<cudaStream_t>(stream)), "md_mamba2_step_fwd");
}

MD_API int md_row_norm_fwd(const md_row_norm_params* p, void* stream) {
  return finish(md_launch_row_norm(p, static_cast<cudaStream_t>(stream)), "md_row_norm_fwd");
}

MD_API int md_attention_decode_fwd(const md_attention_decode_params* p, void* stream) {
  return finish(md_launch_attention_decode(p, static_cast<cudaStream_t>(stream)), "md_attention_decode_fwd");
}

MD_API int md_mamba1_decode_fwd(const md_mamba1_decode_params* p, void* stream) {
  return finish(md_launch_mamba1_decode(p, static_cast<cudaStream_t>(stream)), "md_mamba1_decode_fwd");
}

MD_API int md_mamba2_decode_fwd(const md_mamba2_decode_params* p, void* stream) {
  return finish(md_launch_mamba2_decode(p, static_cast<cudaStream_t>(stream)), "md_mamba2_decode_fwd");
}

// ---- the sampler's uniforms (sampling.h) ---------------------------------------------------------

MD_API int md_philox_uniform_fwd(const md_philox_params* p, void* stream) {
  return finish(md_launch_philox_uniform(p, static_cast<cudaStream_t>(stream)), "md_philox_uniform_fwd");
}

MD_API int md_sample_fwd(const md_sample_params* p, void* stream) {
  return finish(md_launch_sample(p, static_cast<cudaStream_t>(stream)), "md_sample_fwd");
}
