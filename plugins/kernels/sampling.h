/* sampling.h -- counter-based uniforms for the sampler (mamba_deploy/runtime/sampler.py).
 *
 * Same contract as mamba_kernels.h: a params struct of device pointers and sizes (every field 8 bytes
 * wide, mirrored by ctypes in mamba_deploy/ops/_lib.py), no allocation, no synchronisation, launched
 * on the caller's stream, cudaError_t returned (cudaErrorInvalidValue for bad params, with
 * md_kernels_check_message() saying why).
 */
#ifndef MAMBA_DEPLOY_SAMPLING_H_
#define MAMBA_DEPLOY_SAMPLING_H_

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = uniform(Philox4x32-10(key = seeds[r], counter = (steps[r] low, steps[r] high, 0, 0))),
 * r = rows[i] (rows NULL: r = i); uniform(first output word w) = ((w >> 9) + 0.5) * 2^-23, exact in
 * float32, in (0, 1). The reference is mamba_deploy/ops/philox.py (philox_uniform).
 *   seeds, steps  int64 (read as uint64 bits), indexed by r; contiguous
 *   rows          (n,) int64 or NULL; every value must index seeds and steps (not checked: device data)
 *   out           (n,) float32, contiguous */
typedef struct md_philox_params {
  int64_t n;
  const void* seeds;
  const void* steps;
  const void* rows;
  void* out;
} md_philox_params;

cudaError_t md_launch_philox_uniform(const md_philox_params* p, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MAMBA_DEPLOY_SAMPLING_H_ */
