// gemm_tc.cuh -- the forms of md_launch_gemv beside the CUDA-core one (gemv.cu): the tensor-core forms (gemm_tc.cu,
// gemv_skinny.cu), batch 1..64, fp16 / bf16, and the staged form (gemv_staged.cu).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime_api.h>

#include "gemv.h"

namespace md {

// f(std::integral_constant<int, NB>{}) for NB = ceil(batch / 8) batch tiles (the n8 side), 1..8.
template <typename F>
cudaError_t with_batch_tiles(int64_t batch, F&& f) {
  switch ((batch + 7) / 8) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// Whether the tensor-core kernel takes these params on the current device: a 16-bit dtype, batch <= 64,
// k a multiple of 8, x and w 16-byte aligned with row strides of whole 16-byte vectors, compute capability 9.0+.
bool gemv_tc_ok(const md_gemv_params& p);

// Whether batches 17..64 (every batch with algo MD_GEMV_ALGO_WGMMA) take the wgmma form: a library built for
// sm_90a (MD_WGMMA_BUILT) on a 9.0 device, algo not MD_GEMV_ALGO_MMA_SYNC.
bool wgmma_form(const md_gemv_params& p);

// out = x @ w.T (+ bias) (+ the conv epilogue), as md_launch_gemv; the caller checked gemv_tc_ok. Takes the
// skinny form where skinny_form says so.
cudaError_t launch_gemv_tc(const md_gemv_params& p, cudaStream_t stream);

// The skinny form (gemv_skinny.cu: blocks of 16 columns, k split over a cluster of up to 16 blocks): n <= 256
// and no conv epilogue. split_k there: the cluster's blocks (0 = chosen).
constexpr int64_t kSkinnyMaxN = 256;
bool skinny_form(const md_gemv_params& p);
cudaError_t launch_gemv_skinny(const md_gemv_params& p, cudaStream_t stream);

// The staged form (gemv_staged.cu, algo MD_GEMV_ALGO_STAGED): no norm prologue, 16-byte vectors of x and w rows,
// compute capability 9.0+; batch 1-2 in any dtype with k <= 1,024 vectors (CUDA cores), batch 3-16 in fp16 / bf16
// where a block's rows (tiles of 16) fit in shared memory whole (tensor cores). x is read by coherent loads: under
// programmatic launch the kernel writing it runs during this one's lifetime (through the non-coherent path batch
// 2 read stale rows inside the engine's graphs, session 20).
constexpr int64_t kStagedMaxBatch = 16;
bool gemv_staged_ok(const md_gemv_params& p);
cudaError_t launch_gemv_staged(const md_gemv_params& p, cudaStream_t stream);

}  // namespace md
