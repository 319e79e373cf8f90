// mamba1_scan.cuh -- Mamba1's selective scans (mamba1_walk.cu, mamba1_split.cu), dispatched from
// md_launch_ssm_scan_ws for the Mamba1 layout (headdim 1, one group) with dstate <= 16.
#pragma once

#include <cuda_runtime_api.h>

#include "mamba_kernels.h"

namespace md {

// mamba1_walk.cu, tried first: whether it applies; the chunks it cuts the sequence into (1: one pass, no
// workspace, where batch x channels fill the GPU; more: two passes over mamba1_walk_workspace_bytes of scratch, for
// a few long prompts; 0: mamba1_split.cu's walk); the launch (eligible, validated params; workspace NULL when
// nchunks is 1).
bool mamba1_walk_eligible(const md_ssm_params& p);
int64_t mamba1_walk_chunks(const md_ssm_params& p);
size_t mamba1_walk_workspace_bytes(const md_ssm_params& p, int64_t nchunks);
cudaError_t launch_mamba1_walk(const md_ssm_params& p, int64_t nchunks, void* workspace, cudaStream_t stream);

// mamba1_split.cu, for the rest (mamba1_walk_chunks 0, or no workspace for the two passes): how many threads
// (2, 4 or 8) split a channel's states; whether batch x channels give it the threads it wants at 8; the launch
// (eligible, validated params; no workspace).
int mamba1_split_lanes(const md_ssm_params& p);
bool mamba1_split_fills_gpu(const md_ssm_params& p);
cudaError_t launch_mamba1_split(const md_ssm_params& p, int lanes, cudaStream_t stream);

}  // namespace md
