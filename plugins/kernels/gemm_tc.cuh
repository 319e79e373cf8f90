// gemm_tc.cuh -- the tensor-core form of md_launch_gemv (gemm_tc.cu), for batch 1..64 in fp16 / bf16.
#pragma once

#include <cuda_runtime_api.h>

#include "gemv.h"

namespace md {

// Whether the tensor-core kernel takes these params on the current device: a 16-bit dtype, batch <= 64,
// k a multiple of 8, x and w 16-byte aligned with row strides of whole 16-byte vectors, compute capability 9.0+.
bool gemv_tc_ok(const md_gemv_params& p);

// Whether batches 17..64 take the wgmma form: a library built for sm_90a (MD_WGMMA_BUILT) on a 9.0 device,
// algo not MD_GEMV_ALGO_MMA_SYNC.
bool wgmma_form(const md_gemv_params& p);

// out = x @ w.T (+ bias) (+ the conv epilogue), as md_launch_gemv; the caller checked gemv_tc_ok.
cudaError_t launch_gemv_tc(const md_gemv_params& p, cudaStream_t stream);

}  // namespace md
