/* sampling.h -- the sampler's kernels (mamba_deploy/runtime/sampler.py): counter-based uniforms, and the
 * whole sampling of one token per row.
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

/* One token per logits row, exactly as runtime/sampler.py's docstring defines it (its torch form,
 * SamplerState.sample_torch, is the reference): padded columns masked, the repetition penalty on the slot's
 * seen tokens, greedy argmax at temperature 0, else the temperature, top-k, top-p and min-p on integer
 * weights, and the inverse CDF at the uniform of the slot's (seed, step) (the Philox of
 * md_launch_philox_uniform). No sort: each row's blocks (a cluster of up to 8 on compute capability 9.0+,
 * each holding a slice of the row in shared memory) find the kept set's total and the drawn token by radix
 * selection on (value, token id) with weighted histograms. Then, per row: step[slot] += 1,
 * seen[slot][token] = 1, last_token[slot] = token, out[row] = token.
 *   logits            (rows, vocab) logits_dtype, unit stride along vocab
 *   slots             (rows,) int64, distinct: the sampler row of each logits row
 *   temperature, top_p, min_p, repetition_penalty  (slots,) float32; top_k, seed, step, last_token (slots,) int64
 *   seen              (slots, vocab) uint8 (bool), unit stride along vocab
 *   scratch           (rows, vocab) float32, unit stride along vocab: the caller's, overwritten (used only
 *                     where a row's slices do not fit in shared memory)
 *   out               (rows,) int64
 * vocab_limit: columns >= it are never drawn; weight_bits: S of the docstring (vocab * 2^S <= 2^53). */
typedef struct md_sample_params {
  int64_t rows;
  int64_t vocab;
  int64_t vocab_limit;
  int64_t weight_bits;
  int64_t logits_dtype;
  const void* logits;
  int64_t logits_row_stride;
  const void* slots;
  const void* temperature;
  const void* top_k;
  const void* top_p;
  const void* min_p;
  const void* repetition_penalty;
  const void* seed;
  void* step;
  void* seen;
  int64_t seen_row_stride;
  void* last_token;
  void* scratch;
  int64_t scratch_row_stride;
  void* out;
} md_sample_params;

cudaError_t md_launch_sample(const md_sample_params* p, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MAMBA_DEPLOY_SAMPLING_H_ */
