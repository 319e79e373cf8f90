// mamba1_scan.cuh -- Mamba1's selective scans (mamba1_walk.cu, mamba1_scan.cu), dispatched from md_launch_ssm_scan_ws.
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

// mamba1_walk.cu, tried first: whether it applies (the Mamba1 layout with dstate <= 16); the chunks it cuts the
// sequence into (0: too few threads, leave it to the kernels below; 1: one pass, no workspace; else two passes
// over mamba1_walk_workspace_bytes of scratch); the launch (eligible, validated params; workspace NULL when
// nchunks is 1).
bool mamba1_walk_eligible(const md_ssm_params& p);
int64_t mamba1_walk_chunks(const md_ssm_params& p);
size_t mamba1_walk_workspace_bytes(const md_ssm_params& p, int64_t nchunks);
cudaError_t launch_mamba1_walk(const md_ssm_params& p, int64_t nchunks, void* workspace, cudaStream_t stream);

}  // namespace md
