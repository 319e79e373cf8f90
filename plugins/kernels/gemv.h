/* gemv.h -- small-batch GEMV and the fused decode kernels of the native engine (Mamba1 step,
 * Mamba2 state update, row norms, a hybrid's decode attention).
 *
 * Same contract as mamba_kernels.h: params structs of device pointers, sizes and ELEMENT strides
 * (every field 8 bytes wide, mirrored by ctypes in mamba_deploy/ops/_lib.py), no allocation, no
 * synchronisation, launched on the caller's stream, cudaError_t returned (cudaErrorInvalidValue
 * for bad params, with md_kernels_check_message() saying why).
 */
#ifndef MAMBA_DEPLOY_GEMV_H_
#define MAMBA_DEPLOY_GEMV_H_

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MD_GEMV_MAX_BATCH 16    /* CUDA-core form: any dtype */
#define MD_GEMV_TC_MAX_BATCH 64 /* tensor-core form: fp16 / bf16 on compute capability 9.0+ (gemm_tc.cu) */
#define MD_GEMV_TC_MIN_BATCH 3  /* algo 0 takes the tensor-core form from this batch on, where it can */
#define MD_GEMV_ALGO_MMA_SYNC 3 /* the tensor-core form without wgmma (what non-sm_90a builds run) */
#define MD_GEMV_ALGO_STAGED 4   /* weights staged in shared memory before the wait (gemv_staged.cu) */
#define MD_GEMV_ALGO_WGMMA 5    /* the tensor-core form through wgmma at every batch (else as algo 2) */
#define MD_GEMV_NORM_MAX_BATCH 2  /* the norm prologue: rows, and k below */
#define MD_GEMV_NORM_MAX_K 8192

/* out[b, n] = sum_k x[b, k] * w[n, k] (+ bias[n]), float32 accumulation.
 * algo: 1 = CUDA cores (batch <= 16, any dtype); 2 = tensor cores (batch <= 64; fp16 / bf16, k a multiple of
 * 8, x and w 16-byte aligned with row strides of whole 16-byte vectors, compute capability 9.0+: the weights
 * are read once for all rows; batch 17..64 through wgmma where the library was built for sm_90a and the
 * device is 9.0); 3 = tensor cores through mma.sync only; 4 = staged (16-byte vectors, compute capability
 * 9.0+, no norm prologue; batch 1-2 in any dtype with k <= 1,024 vectors, batch 3-16 in fp16 / bf16 on tensor
 * cores where a block's rows fit in shared memory: each block copies its rows of w into shared memory by bulk
 * copies issued before it waits for the kernel before it); 5 = algo 2 with batch 1..16 through wgmma too (where
 * algo 2 takes wgmma at 17..64); 0 = tensor cores from batch MD_GEMV_TC_MIN_BATCH on where they apply, else CUDA
 * cores.
 *   x    (batch, k)  row stride x_row_stride, unit k stride     dtype (fp32 / fp16 / bf16)
 *   w    (n, k)      row stride w_row_stride, unit k stride     dtype
 *   bias (n,) or NULL                                            dtype
 *   out  (batch, n)  row stride out_row_stride, unit n stride   dtype
 * 16-byte weight loads when k, the row strides and the pointers allow (else a scalar path).
 * split_k: CUDA-core form: warps sharing one row (1, 2, 4 or 8; 0 = chosen from n and k). Tensor-core form for
 * n <= 256 without the conv epilogue (the skinny form: blocks of 16 columns): blocks of the cluster that splits k
 * (1..16; 0 = chosen). Ignored by the other tensor-core forms.
 * Optional causal-conv epilogue (conv_dim > 0): for rows n in [conv_lo, conv_lo + conv_dim), with
 * c = n - conv_lo, the GEMV value v (rounded to dtype) is the new input of a depthwise causal
 * conv1d step (causal_conv1d_update_ref, SiLU if conv_silu):
 *   out[b, n] = silu(sum_i conv_w[c, i] * win[i] + conv_b[c]),  win = (state[b, c, :], v)
 *   state[b, c, :] <- win[1:]          state (batch, conv_dim, width - 1), conv_state_dtype
 * conv_w (conv_dim, width) contiguous, conv_b (conv_dim,) or NULL, both dtype; width <= 8.
 * Optional norm prologue (norm_w not NULL; the CUDA-core form, batch <= MD_GEMV_NORM_MAX_BATCH, k a multiple
 * of 8 and <= MD_GEMV_NORM_MAX_K, batch * k * element size <= 32 KB, 16-byte aligned rows): the row norm
 * (md_row_norm_params, one group of k) is done by every block before its products, and x is its output:
 *   v = x + norm_residual (x alone if NULL)   or, with norm_gate,   v = x * silu(norm_gate)
 *   x <- (v * rsqrt(mean(v^2) + norm_eps) * norm_w) rounded to dtype;    norm_w (k,) dtype
 * The add form (no gate) writes v to norm_residual_out (batch, k) in norm_residual_dtype, which must not
 * overlap norm_residual (other blocks read it meanwhile). norm_gate (batch, k) dtype. */
typedef struct md_gemv_params {
  int64_t batch, n, k;
  int64_t dtype;
  int64_t split_k;
  const void* x;
  int64_t x_row_stride;
  const void* w;
  int64_t w_row_stride;
  const void* bias;
  void* out;
  int64_t out_row_stride;
  int64_t conv_lo, conv_dim, conv_width, conv_silu, conv_state_dtype;
  const void* conv_w;
  const void* conv_b;
  void* conv_state;
  int64_t conv_state_batch_stride, conv_state_dim_stride, conv_state_width_stride;
  const int64_t* state_rows; /* NULL or (batch,): conv_state rows (mamba_kernels.h) */
  int64_t algo;
  const void* norm_w;
  const void* norm_residual;
  void* norm_residual_out;
  const void* norm_gate;
  int64_t norm_residual_dtype, norm_residual_row_stride, norm_residual_out_row_stride, norm_gate_row_stride;
  double norm_eps;
} md_gemv_params;

/* Fused Mamba1 decode step after x_proj: dt_proj + softplus + selective state update + D + gate.
 *   x, z       (batch, dim)            rows strided (x_row_stride, z_row_stride)    dtype
 *   xdbl       (batch, dt_rank + 2 * dstate): [dt_low | B | C]  row stride           dtype
 *   wdt        (dim, 8 * ceil(dt_rank / 8)): dt_proj.weight zero padded, contiguous, 16-byte aligned
 *   dt_bias, D (dim,) float32;  A (dim, dstate) float32, contiguous
 *   state      (batch, dim, dstate), unit dstate stride, float32 or dtype; updated in place
 *   y          (batch, dim)  row stride y_row_stride                                dtype
 * dt = softplus(x_dt + dt_bias); state = exp(dt A) state + dt B x; y = (C.state + D x) silu(z).
 * 16 lanes per channel (lane n owns state n): dstate <= 16, dt_rank <= 1024; a block steps 8 channels for
 * up to 8 batch rows, reading each dt_proj row once for them (state_rows: rows < 2^31). With dt given
 * (dt = x_dt @ dt_proj.T from the caller's GEMM), a thread per (row, channel) instead. */
typedef struct md_mamba1_step_params {
  int64_t batch, dim, dstate, dt_rank;
  int64_t dtype, state_dtype;
  const void* x;
  int64_t x_row_stride;
  const void* z;
  int64_t z_row_stride;
  const void* xdbl;
  int64_t xdbl_row_stride;
  const void* wdt;
  const float* dt_bias;
  const float* A;
  const float* D;
  void* state;
  int64_t state_batch_stride, state_dim_stride;
  void* y;
  int64_t y_row_stride;
  const int64_t* state_rows; /* NULL or (batch,): state rows (mamba_kernels.h) */
  const void* dt;            /* NULL, or (batch, dim) dt before bias, in dtype: then wdt and xdbl[:, :dt_rank] are */
  int64_t dt_row_stride;     /* not read, and a thread per (row, channel) streams the state (large batches) */
  int64_t dt_tc;             /* 1 (dt NULL, 16-bit dtype, dstate 16, dt_rank % 8 == 0, 16-byte aligned rows): dt_proj on
                                tensor cores for 8 rows a block, dt kept in float32, the state streamed as with dt */
} md_mamba1_step_params;

/* Mamba2 decode state update (selective_state_update_ref, rank-4 state, no gate): one warp per
 * (batch, head) and 1 p row (batch < 4) or 4, each lane dstate / 32 consecutive states of each row, moved 16
 * bytes an access (8 for a 16-bit state) where dstate >= 128 and the rows of state, B and C are aligned for it.
 *   x, y (batch, nheads * headdim); B, C (batch, ngroups * dstate); dt (batch, nheads): row strides,
 *   unit inner stride, dtype;  A, D, dt_bias (nheads,) float32;
 *   state (batch, nheads, headdim, dstate), unit dstate stride, float32 or dtype, in place.
 * dstate in {32, 64, 128, 256} (a multiple of 32, <= 256). */
typedef struct md_mamba2_step_params {
  int64_t batch, nheads, headdim, dstate, ngroups;
  int64_t dtype, state_dtype;
  double dt_min, dt_max;
  const void* x;
  int64_t x_row_stride;
  const void* B;
  int64_t B_row_stride;
  const void* C;
  int64_t C_row_stride;
  const void* dt;
  int64_t dt_row_stride;
  const float* A;
  const float* D;
  const float* dt_bias;
  void* state;
  int64_t state_batch_stride, state_head_stride, state_dim_stride;
  void* y;
  int64_t y_row_stride;
  const int64_t* state_rows; /* NULL or (batch,): state rows (mamba_kernels.h) */
  /* The gated norm of one group over all nheads * headdim channels, folded (NULL norm_weight: off; headdim a
   * multiple of 4, nheads * headdim of 16): y <- g * norm_weight[c] (dtype) with g = (C . h + D x) * silu(z[b, c])
   * in float32, and norm_sumsq[b * norm_sumsq_row_stride + k] <- the sum of g^2 over channels 16 k .. 16 k + 15
   * (float32; nheads * headdim / 16 of them a row, added in channel order within a warp's 4, then warp order).
   * rmsnorm(g) * w = y * rsqrt(sum_k norm_sumsq / (nheads * headdim) + eps): the factor md_row_norm_params.x_sumsq
   * applies after the projection that follows. */
  const void* z;
  int64_t z_row_stride;
  const void* norm_weight;
  void* norm_sumsq;
  int64_t norm_sumsq_row_stride;
} md_mamba2_step_params;

/* Row RMSNorm for decode, 8 elements per thread through 16-byte accesses, one block per (row, group):
 *   gate == 0: v = x * f + residual (residual NULL: x * f); residual_out <- v (residual_dtype); group = hidden;
 *              f = 1, or the folded gated norm's factor of the row (x_sumsq below)
 *   gate == 1: v = x * silu(z) (Mamba2's gated norm), per group of group_size
 *   out = v * rsqrt(mean_group(v^2) + eps) * weight
 * x, z, out: dtype; weight (hidden,) dtype; residual / residual_out: residual_dtype (fp32 or dtype),
 * may alias. group_size % 256 == 0 (whole warps), <= 8192; every row 16-byte aligned (checked). */
typedef struct md_row_norm_params {
  int64_t rows, hidden, group_size, gate;
  double eps;
  int64_t dtype, residual_dtype;
  const void* x;
  int64_t x_row_stride;
  const void* residual;  /* or z when gate */
  int64_t residual_row_stride;
  const void* weight;
  void* out;
  int64_t out_row_stride;
  void* residual_out;
  int64_t residual_out_row_stride;
  /* NULL: off. Else (gate == 0) x is first scaled, row by row, by rsqrt(s / x_sumsq_dim + x_sumsq_eps), s the sum
   * of the row's x_sumsq_count floats at x_sumsq (the folded gated norm's factor: md_ssm_params.norm_sumsq). */
  const void* x_sumsq;
  int64_t x_sumsq_row_stride, x_sumsq_count, x_sumsq_dim;
  double x_sumsq_eps;
  /* 0: x is dtype. Else (gate == 0) x is float32: x_parts partial sums of a k-split projection (its k slices),
   * x_part_stride floats apart; x = their sum in slice order, rounded to dtype (what the projection's output in
   * dtype would hold), before x_sumsq's factor. */
  int64_t x_parts, x_part_stride;
} md_row_norm_params;

/* Decode attention of one new token per row over a KV cache of fixed length per state slot: rotary_ref, then
 * attention_ref with seqlen 1 (mamba_deploy/ops/attention.py), for a hybrid's attention layers.
 *   s = state_rows[b] (or b); pos = length[s], the tokens slot s held before this one (read, not written:
 *   the caller advances length once per step, after every attention layer)
 *   q (batch, heads * head_dim), k, v (batch, heads_kv * head_dim): row strides, unit inner stride, dtype
 *   rotary_dim > 0: channels [0, rotary_dim) of each q and k head rotated by angle pos * inv_freq[i]
 *     (non-interleaved pairs i, i + rotary_dim / 2); inv_freq (rotary_dim / 2,) float32; q then rounded to dtype
 *   key, value (slots, heads_kv, max_seq_len, head_dim), unit head_dim stride, dtype: the rotated k and v
 *     are written at [s, :, pos] (not when pos >= max_seq_len; the caller keeps pos < max_seq_len)
 *   out (batch, heads * head_dim) row stride, dtype:
 *     out[b, h] = softmax_t(scale * q_h . key[s, h / (heads / heads_kv), t]) . value[s, same, t], t = 0..pos
 * float32 math. head_dim <= 256, heads a multiple of heads_kv, group = heads / heads_kv <= 8 and
 * group * head_dim <= 1024. One block per (row, kv head), its warps splitting the positions. */
typedef struct md_attention_decode_params {
  int64_t batch, heads, heads_kv, head_dim, max_seq_len, rotary_dim;
  int64_t dtype;
  double scale;
  const void* q;
  int64_t q_row_stride;
  const void* k;
  int64_t k_row_stride;
  const void* v;
  int64_t v_row_stride;
  const float* inv_freq;
  void* key;
  void* value;
  int64_t cache_slot_stride, cache_head_stride, cache_pos_stride;
  const int64_t* length;
  void* out;
  int64_t out_row_stride;
  const int64_t* state_rows; /* NULL or (batch,): state rows (mamba_kernels.h) of key, value and length */
} md_attention_decode_params;

/* The persistent batch-1 decode of a Mamba1 model's layer stack (decode_mamba1.cu, decode_persistent.cuh): every
 * layer of one token (add + RMS norm, in_proj + causal conv update, x_proj, dt_proj + softplus + state update + D +
 * gate, out_proj) in ONE cooperative launch of one block a multiprocessor. A producer warp a block streams the
 * block's rows of every weight matrix, layer after layer, into a ring of shared memory by bulk copies, while
 * the block's 8 consumer warps compute; the blocks meet at 4 grid barriers a layer (a counter in `sync`).
 * The arithmetic of each phase is that of the separate kernels: the norm is row_norm_kernel's (its sums
 * grouped as that kernel's block groups them), each projection gemv's staged form at batch 1, the step
 * mamba1_step_kernel's.
 * Batch row 0 only; residual in float32 (residual_in_fp32); compute capability 9.0+.
 *   layers      (n_layer,) md_mamba1_layer in DEVICE memory (each pointer 16-byte aligned)
 *   hidden      (d_model,) dtype: in: the token's embedding; out: the last layer's out_proj output
 *   residual    (d_model,) float32: out: the residual stream entering the final norm
 *   xz (2 d_inner,), xdbl (dt_rank + 2 dstate,), y (d_inner,) dtype: scratch (phase outputs, readable after)
 *   state_rows  NULL or (1,) device int64: the state slot of the row (else slot 0)
 *   conv / ssm state pools: (slots, d_inner, conv_width - 1) conv_state_dtype and (slots, d_inner, dstate)
 *     state_dtype (float32 or dtype), contiguous past the slot stride (elements)
 *   sync        16 bytes of device memory: word 0 the barrier count and word 1 the launch's failure word (both
 *               zeroed by the launcher); a barrier that gave up waiting (2 s; the outputs are then garbage) sets
 *               words 1 and 2 to 1 (word 2 never cleared here: whether any launch failed)
 *   trace       NULL, or (blocks, 8 n_layer + 3) int64 of %globaltimer ns, for measurements: per block and layer
 *               the ends of norm, in_proj, barrier 1, x_proj, barrier 2, step, barrier 3, out_proj; then the
 *               consumers' start, the producer's total wait for free slots, the producer's last copy issued
 * d_model <= 4,096; d_model and d_inner multiples of 8 with rows of at most 16 KB (d_inner <= 8,192 in fp16 /
 * bf16, 4,096 in fp32); dstate <= 16; dt_rank <= 1,024; conv_width 2..8. */
typedef struct md_mamba1_layer {
  const void* norm_w;   /* (d_model,) */
  const void* in_w;     /* (2 d_inner, d_model) contiguous */
  const void* in_b;     /* (2 d_inner,) or NULL */
  const void* conv_w;   /* (d_inner, conv_width) contiguous */
  const void* conv_b;   /* (d_inner,) */
  void* conv_state;
  const void* x_w;      /* (dt_rank + 2 dstate, d_inner) contiguous */
  const void* wdt;      /* (d_inner, 8 ceil(dt_rank / 8)): dt_proj.weight zero padded (md_mamba1_step_params) */
  const float* dt_bias; /* (d_inner,) float32, as A (d_inner, dstate) and D (d_inner,) */
  const float* A;
  const float* D;
  void* ssm_state;
  const void* out_w;    /* (d_model, d_inner) contiguous */
  const void* out_b;    /* (d_model,) or NULL */
} md_mamba1_layer;

typedef struct md_mamba1_decode_params {
  int64_t n_layer, d_model, d_inner, dt_rank, dstate, conv_width;
  int64_t dtype, state_dtype, conv_state_dtype;
  double norm_eps;
  const md_mamba1_layer* layers;
  int64_t conv_state_slot_stride, ssm_state_slot_stride;
  const int64_t* state_rows;
  void* hidden;
  void* residual;
  void* xz;
  void* xdbl;
  void* y;
  void* sync;
  int64_t* trace;
} md_mamba1_decode_params;

/* The persistent batch-1 decode of a Mamba2 model's layer stack (decode_mamba2.cu; as md_launch_mamba1_decode, whose
 * notes on layers, hidden, residual, state pools, sync and trace hold here): add + RMS norm, in_proj + causal conv
 * update of xBC, the state update (mamba2_step_kernel's), the gated RMS norm (every block for itself), out_proj;
 * three grid barriers a layer. in_proj's output xz (2 d_inner + 2 ngroups dstate + nheads,) is [z | x B C | dt];
 * y (d_inner,): the step's output. norm_group: the gated norm's group (d_inner, or 256, 512, 1,024 or 2,048).
 * dstate 32, 64 or 128; nheads * headdim == d_inner; ngroups divides nheads. */
typedef struct md_mamba2_layer {
  const void* norm_w;   /* (d_model,) */
  const void* in_w;     /* (2 d_inner + 2 ngroups dstate + nheads, d_model) contiguous */
  const void* in_b;     /* or NULL */
  const void* conv_w;   /* (d_inner + 2 ngroups dstate, conv_width) contiguous */
  const void* conv_b;
  void* conv_state;
  const float* dt_bias; /* (nheads,) float32, as A and D */
  const float* A;
  const float* D;
  void* ssm_state;      /* pool (slots, nheads, headdim, dstate) */
  const void* gnorm_w;  /* (d_inner,) the gated norm's weight */
  const void* out_w;    /* (d_model, d_inner) contiguous */
  const void* out_b;    /* (d_model,) or NULL */
} md_mamba2_layer;

typedef struct md_mamba2_decode_params {
  int64_t n_layer, d_model, d_inner, nheads, headdim, dstate, ngroups, norm_group, conv_width;
  int64_t dtype, state_dtype, conv_state_dtype;
  double norm_eps, dt_min, dt_max;
  const md_mamba2_layer* layers;
  int64_t conv_state_slot_stride, ssm_state_slot_stride;
  const int64_t* state_rows;
  void* hidden;
  void* residual;
  void* xz;
  void* y;
  void* sync;
  int64_t* trace; /* NULL, or as md_mamba1_decode_params.trace with stamps 0-7: the ends of norm, in_proj, barrier 1,
                     the step, barrier 2, the gated norm, out_proj, barrier 3 */
} md_mamba2_decode_params;

cudaError_t md_launch_gemv(const md_gemv_params* p, cudaStream_t stream);
cudaError_t md_launch_mamba1_step(const md_mamba1_step_params* p, cudaStream_t stream);
cudaError_t md_launch_mamba2_step(const md_mamba2_step_params* p, cudaStream_t stream);
cudaError_t md_launch_row_norm(const md_row_norm_params* p, cudaStream_t stream);
cudaError_t md_launch_attention_decode(const md_attention_decode_params* p, cudaStream_t stream);
cudaError_t md_launch_mamba1_decode(const md_mamba1_decode_params* p, cudaStream_t stream);
cudaError_t md_launch_mamba2_decode(const md_mamba2_decode_params* p, cudaStream_t stream);
/* Diagnostic builds only (CMake -DMAMBA_DEPLOY_KERNEL_TRACE=ON): the tensor-core GEMV's per-block timestamps of its
   last calls and the number of calls (trace.cuh, benchmarks/gemv_timeline.py) */
cudaError_t md_gemv_tc_trace_read(uint64_t* rows, uint32_t* calls);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MAMBA_DEPLOY_GEMV_H_ */
