/* mamba_kernels.h -- framework-free CUDA launchers for the Mamba ops.
 *
 * Contract (shared by the C ABI in plugins/capi, the TensorRT plugins and the native engine):
 *  - every launcher takes a params struct of device pointers, sizes and ELEMENT strides (int64),
 *    a cudaStream_t, and returns the cudaError_t of its launch (cudaErrorInvalidValue for bad
 *    params, checked on the host before anything is launched);
 *  - launchers never allocate and never synchronise; scratch, where one wants it, is passed in;
 *  - all math is float32; inputs may be float32 / float16 / bfloat16 (md_dtype codes);
 *  - every struct field is 8 bytes wide (int64_t, double or a pointer), so the layout is the same
 *    for C, C++ and a ctypes.Structure mirror; md_params_size() reports sizeof for checking;
 *  - "state_in" / "state_out" pairs may alias (in-place update); state_in == NULL means zeros,
 *    state_out == NULL means "do not write the new state";
 *  - `state_rows`, the last field of every params struct that touches a recurrent state: NULL, or a
 *    device array of `batch` int64 state rows: batch row b reads and writes state row state_rows[b]
 *    (its batch stride times it), so decode runs on any set of slots of a state pool without
 *    copies. The rows must be distinct and within the state tensors (not checked: device memory).
 * The references each launcher reproduces live in mamba_deploy/ops/ (one Python module per op).
 */
#ifndef MAMBA_DEPLOY_KERNELS_H_
#define MAMBA_DEPLOY_KERNELS_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MD_KERNELS_VERSION 18 /* 2: the prefill scans take a workspace; 3: GEMV / decode entry points;
                               4: Philox uniforms (sampling.h) and state_rows (decode over state slots);
                               5: mamba1_step takes a precomputed dt (large batches);
                               6: programmatic dependent launch of the decode kernels;
                               7: decode attention over per-slot KV caches (gemv.h);
                               8: the whole sampler as one kernel (sampling.h);
                               9: md_gemv_params.algo, the tensor-core GEMV for batch <= 64;
                               10: the GEMV's norm prologue (md_gemv_params.norm_*);
                               11: md_ssm_scan_split_lanes (the Mamba1 scan with states split over lanes);
                               12: the GEMV's staged form (algo MD_GEMV_ALGO_STAGED);
                               13: the persistent decodes (md_launch_mamba1_decode, md_launch_mamba2_decode, gemv.h);
                               14: the gated norm folded into the Mamba2 scan (md_ssm_params.norm_*) and its
                                   factor applied by the row norm (md_row_norm_params.x_sumsq*);
                               15: the gated norm folded into the Mamba2 decode step (md_mamba2_step_params.z,
                                   norm_*);
                               16: the Mamba1 step's dt_proj on tensor cores (md_mamba1_step_params.dt_tc);
                               17: the GEMV's wgmma form at every batch (algo MD_GEMV_ALGO_WGMMA);
                               18: the row norm sums a k-split projection's partial sums (md_row_norm_params.x_parts) */
#define MD_MAX_CONV_WIDTH 8 /* causal conv width (d_conv) supported: 1..8 */
#define MD_MAX_DSTATE 256   /* SSM state size supported: 1..256 */
#define MD_MAX_NORM_HIDDEN 16384 /* norm row / group length supported */

typedef enum md_dtype { MD_FLOAT32 = 0, MD_FLOAT16 = 1, MD_BFLOAT16 = 2 } md_dtype;

/* Depthwise causal conv1d over a sequence continuing from a past state (causal_conv1d_ref), and
 * its single-token update (causal_conv1d_update_ref: seqlen == 1, x/y strides of the seq axis
 * unused).
 *   x, y       (batch, dim, seqlen)     x_dtype
 *   weight     (dim, width)             weight_dtype (bias too)
 *   bias       (dim,) or NULL
 *   state_in   (batch, dim, width - 1)  state_dtype, NULL = zeros
 *   state_out  (batch, dim, width - 1)  state_dtype, NULL = not written; may alias state_in:
 *              new state = last width - 1 columns of cat(state_in, x). */
typedef struct md_causal_conv1d_params {
  int64_t batch, dim, seqlen, width;
  int64_t silu; /* 1: y = silu(conv), 0: y = conv */
  int64_t x_dtype, weight_dtype, state_dtype;
  const void* x;
  int64_t x_batch_stride, x_dim_stride, x_seq_stride;
  const void* weight;
  int64_t weight_dim_stride, weight_width_stride;
  const void* bias;
  int64_t bias_stride;
  const void* state_in;
  int64_t state_in_batch_stride, state_in_dim_stride, state_in_width_stride;
  void* state_out;
  int64_t state_out_batch_stride, state_out_dim_stride, state_out_width_stride;
  void* y;
  int64_t y_batch_stride, y_dim_stride, y_seq_stride;
  const int64_t* state_rows; /* NULL or (batch,): state_in / state_out rows */
} md_causal_conv1d_params;

/* Selective SSM over a sequence from an initial state, in one form for all three SSM ops:
 *   dt  <- clamp(softplus(dt + dt_bias), dt_min, dt_max)          (softplus if dt_softplus)
 *   h_t <- exp(dt * A) * h_{t-1} + dt * B_t * x_t                   per (batch, head, p, n)
 *   y_t <- C_t . h_t + D * x_t;  y_t *= silu(z_t) if z != NULL
 * Index space: batch, seq (t), head (h), p in [0, headdim), state n in [0, dstate); groups
 * g = h / (nheads / ngroups) share B and C. Every tensor is described by its strides over these
 * axes (stride 0 = broadcast):
 *   Mamba1 selective_scan_ref:   nheads = dim, headdim = 1, ngroups = 1
 *     x=u, z, y: (batch, dim, seqlen) -> head stride = stride(1), seq stride = stride(2), p stride 0
 *     dt=delta (batch, dim, seqlen); A (dim, dstate): A_state_stride = stride(1)
 *     B, C (batch, dstate, seqlen): group stride 0; state (batch, dim, dstate): p stride 0
 *   Mamba1 selective_state_update_ref: the same with seqlen = 1 (x (batch, dim): seq stride 0)
 *   Mamba2 chunk_scan_ref: x, z, y (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads):
 *     dt_dim_stride = 0; A (nheads,): A_state_stride = 0 (scalar A per head);
 *     B, C (batch, seqlen, ngroups, dstate); state (batch, nheads, headdim, dstate)
 *   Mamba2 selective_state_update_ref: the same with seqlen = 1.
 * dtypes: x_dtype for x, z, y, dt, B, C; param_dtype for A, D, dt_bias; state_dtype for
 * state_in / state_out.  Requires nheads % ngroups == 0, dstate <= MD_MAX_DSTATE.
 * state_out may alias state_in (each element is read and written by the same thread). */
typedef struct md_ssm_params {
  int64_t batch, seqlen, nheads, headdim, dstate, ngroups;
  int64_t x_dtype, param_dtype, state_dtype;
  int64_t dt_softplus;
  double dt_min, dt_max; /* clamp after softplus; use 0 and INFINITY for none */
  const void* x;
  int64_t x_batch_stride, x_seq_stride, x_head_stride, x_dim_stride;
  const void* dt;
  int64_t dt_batch_stride, dt_seq_stride, dt_head_stride, dt_dim_stride;
  const void* A;
  int64_t A_head_stride, A_state_stride;
  const void* B;
  int64_t B_batch_stride, B_seq_stride, B_group_stride, B_state_stride;
  const void* C;
  int64_t C_batch_stride, C_seq_stride, C_group_stride, C_state_stride;
  const void* D; /* NULL: no skip */
  int64_t D_head_stride;
  const void* z; /* NULL: no gate */
  int64_t z_batch_stride, z_seq_stride, z_head_stride, z_dim_stride;
  const void* dt_bias; /* NULL: none */
  int64_t dt_bias_head_stride;
  const void* state_in;
  int64_t state_in_batch_stride, state_in_head_stride, state_in_dim_stride, state_in_state_stride;
  void* state_out;
  int64_t state_out_batch_stride, state_out_head_stride, state_out_dim_stride, state_out_state_stride;
  void* y;
  int64_t y_batch_stride, y_seq_stride, y_head_stride, y_dim_stride;
  const int64_t* state_rows; /* NULL or (batch,): state_in / state_out rows */
  /* The gated RMSNorm of one norm group over all nheads * headdim channels, folded (NULL norm_weight: off; the
   * Mamba2 layout with z only): y <- g * norm_weight[h * headdim + p] (x_dtype) with g = y * silu(z), and
   * norm_sumsq[b, t, h] <- sum over p of g^2 (float32, rows of nheads floats, unit head stride). Then
   * rmsnorm(g) * w = y * rsqrt(sum_h norm_sumsq / (nheads * headdim) + eps): one factor a token, which the caller
   * applies after the projection that follows (md_row_norm_params.x_sumsq). g is float32 in the SSD form, y
   * rounded to x_dtype and gated elsewhere. */
  const void* norm_weight;
  void* norm_sumsq;
  int64_t norm_sumsq_batch_stride, norm_sumsq_seq_stride;
} md_ssm_params;

/* Fused residual add + RMSNorm / LayerNorm (add_norm_ref), over rows of `hidden` contiguous
 * elements (row strides in elements):
 *   residual_out <- x + residual (residual NULL: x), in residual_out_dtype (float32 normally)
 *   out <- norm(residual_out) * weight (+ bias), in out_dtype
 * residual_out may alias residual (same dtype). weight/bias: (hidden,), weight_dtype, bias NULL ok.
 * residual_out may be NULL (not written). */
typedef struct md_add_norm_params {
  int64_t rows, hidden;
  int64_t is_rms; /* 1: RMSNorm, 0: LayerNorm */
  double eps;
  int64_t x_dtype, residual_dtype, residual_out_dtype, out_dtype, weight_dtype;
  const void* x;
  int64_t x_row_stride;
  const void* residual;
  int64_t residual_row_stride;
  const void* weight;
  const void* bias;
  void* out;
  int64_t out_row_stride;
  void* residual_out;
  int64_t residual_out_row_stride;
} md_add_norm_params;

/* Mamba2 gated grouped RMSNorm (gated_rms_norm_ref, norm_before_gate=False):
 *   h = x * silu(z) (z NULL: x); out = h * rsqrt(mean_group(h^2) + eps) * weight
 * x, z, out: rows of `hidden` contiguous elements (x_dtype; out in out_dtype); weight (hidden,);
 * group_size divides hidden. */
typedef struct md_gated_rms_norm_params {
  int64_t rows, hidden, group_size;
  double eps;
  int64_t x_dtype, out_dtype, weight_dtype;
  const void* x;
  int64_t x_row_stride;
  const void* z;
  int64_t z_row_stride;
  const void* weight;
  void* out;
  int64_t out_row_stride;
} md_gated_rms_norm_params;

/* Launchers. Each checks its params (cudaErrorInvalidValue when wrong; md_kernels_check_message()
 * then says why), launches on `stream` and returns cudaGetLastError() of the launch. */
cudaError_t md_launch_causal_conv1d(const md_causal_conv1d_params* p, cudaStream_t stream);
cudaError_t md_launch_ssm_scan(const md_ssm_params* p, cudaStream_t stream);
cudaError_t md_launch_add_norm(const md_add_norm_params* p, cudaStream_t stream);
cudaError_t md_launch_gated_rms_norm(const md_gated_rms_norm_params* p, cudaStream_t stream);

/* Time-parallel form of md_launch_ssm_scan for long sequences at small batch: the sequence is cut
 * into chunks walked in parallel from zero states, a carry pass turns their end states into the state
 * entering each chunk, and the chunks are walked again from those to write y. Same results (up to
 * float32 rounding); about twice the arithmetic for several times the parallelism. `workspace` is
 * float32 scratch of at least md_ssm_scan_workspace_size(p) bytes; when it is NULL, too small, or the
 * size is 0 (short sequence, or batch x rows already fill the GPU) this is md_launch_ssm_scan. */
cudaError_t md_launch_ssm_scan_ws(const md_ssm_params* p, void* workspace, size_t workspace_size,
                                  cudaStream_t stream);

/* Scratch md_launch_ssm_scan_ws wants for `p` on the current device (0: none, the single walk). */
size_t md_ssm_scan_workspace_size(const md_ssm_params* p);

/* How many threads split each channel's states when md_launch_ssm_scan_ws, given the workspace
 * md_ssm_scan_workspace_size asks for, takes the Mamba1 walk of mamba1_split.cu for `p` on the current device
 * (2, 4 or 8); 0 when another kernel takes it. */
int md_ssm_scan_split_lanes(const md_ssm_params* p);

/* Why a launcher on this host thread last returned cudaErrorInvalidValue ("" if none did). */
const char* md_kernels_check_message(void);

/* Programmatic dependent launch (compute capability 9.0+), process-wide, off by default: when on, the decode
 * kernels (GEMV, row norm, the Mamba steps, the conv update, the norms) are launched so that each may start
 * while the previous kernel on its stream finishes (in a CUDA graph too); they load weights first and wait
 * for the previous kernel before touching anything else. Results are the same either way. */
void md_kernels_set_programmatic_launch(int enable);
int md_kernels_programmatic_launch(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MAMBA_DEPLOY_KERNELS_H_ */
