// mamba1_scan.cuh -- Mamba1's time-parallel selective scan (mamba1_scan.cu), dispatched from md_launch_ssm_scan_ws.
#pragma once

#include <cuda_runtime_api.h>

#include "mamba_kernels.h"

namespace md {

// Whether the scan of `p` takes mamba1_scan.cu's kernel: the Mamba1 layout (headdim 1, one group) with
// dstate <= 16, at least 64 steps, and 192 steps or more than 1024 tokens in all (batch x seqlen). It needs
// no workspace.
bool mamba1_scan_eligible(const md_ssm_params& p);

// Launch it (eligible params, already validated by md_launch_ssm_scan_ws).
cudaError_t launch_mamba1_scan(const md_ssm_params& p, cudaStream_t stream);

}  // namespace md
