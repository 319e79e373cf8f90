// ssd_chunk.cuh -- Mamba2's chunk scan in the SSD form on tensor cores (ssd_chunk.cu), called by the
// chunk-scan launcher in ssm_scan.cu when ssd_eligible says the shapes and dtypes fit.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "mamba_kernels.h"

namespace md {

// 16-bit x / B / C, scalar A per head (Mamba2), headdim and dstate multiples of 16 (<= 128 / 256), seqlen
// >= 256, and one batch row's scratch (below) at most 512 MiB.
bool ssd_eligible(const md_ssm_params& p);

// Scratch of launch_ssd: per batch row, the state entering each 64-step chunk (float32, or the 16-bit state's
// dtype) and each chunk's dt and running sum of dt * A; at most 512 MiB (a larger batch runs in slices of rows
// through it).
size_t ssd_workspace_bytes(const md_ssm_params& p);

// Runs the kernels on `stream`; `workspace` holds ssd_workspace_bytes(p). state_out may alias state_in.
cudaError_t launch_ssd(const md_ssm_params& p, void* workspace, cudaStream_t stream);

}  // namespace md
