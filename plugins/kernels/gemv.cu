// gemv.cu -- bandwidth-bound small-batch GEMV (with an optional causal-conv epilogue) for the native engine's
// CUDA-graph decode. See gemv.h (the Mamba1 step is mamba1_step.cu, the Mamba2 step mamba2_step.cu, the row norm
// norms.cu).
//
// GEMV: a block of 8 warps owns 8 / split rows; the `split` warps of a row stride over its k
// in 16-byte vectors (interleaved, so together they read contiguous 512 * split bytes), with 4
// vectors in flight per lane, weights loaded with ld.global.nc.L1::no_allocate (read once) and x
// through the read-only cache (re-read by every row). Accumulation in float32 registers, one per
// batch row (batch <= 16 is a template bound); warp shuffles, then shared memory across the split.
// Lane b of the row's first warp finishes batch row b (bias, conv epilogue, store).
// All the decode kernels here start with pdl_release() and load their weights (which no kernel writes) before
// pdl_wait() (common.cuh: programmatic dependent launch), everything else after it.
// Norm prologue (gemv.h): at batch 1-2 the GEMV can do the row norm of its x itself, one launch less.
#include <cstdint>

#include "common.cuh"
#include "gemm_tc.cuh"
#include "gemv.h"
#include "gemv_epilogue.cuh"
#include "vec.cuh"

namespace md {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// Vectors v0, v0 + step, ... (kUnroll of them) of a weight row of kv vectors; zeros past its end.
__device__ __forceinline__ void load_weights(uint4 (&wv)[kUnroll], const uint4* w4, int64_t v0, int64_t step,
                                             int64_t kv) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t vi = v0 + u * step;
    wv[u] = vi < kv ? ld_stream(w4 + vi) : make_uint4(0, 0, 0, 0);
  }
}

constexpr int kNormChunks = MD_GEMV_NORM_MAX_K / (kWarps * 32 * 8);  // 8-element chunks per thread

// v of the norm prologue (gemv.h) for the 8 elements from e of row b (x and the gate in T, the residual in
// float32 or T).
template <typename T>
__device__ __forceinline__ void norm_input(const md_gemv_params& p, int b, int e, float (&v)[8]) {
  load8(static_cast<const T*>(p.x) + b * p.x_row_stride + e, v);
  float o[8];
  if (p.norm_gate) {
    load8(static_cast<const T*>(p.norm_gate) + b * p.norm_gate_row_stride + e, o);
    norm_combine8(v, o, true);
  } else if (p.norm_residual) {
    const int64_t i = b * p.norm_residual_row_stride + e;
    if (p.norm_residual_dtype == MD_FLOAT32) load8(static_cast<const float*>(p.norm_residual) + i, o);
    else load8(static_cast<const T*>(p.norm_residual) + i, o);
    norm_combine8(v, o, false);
  }
}

// The norm prologue (gemv.h): x <- row_norm(v) of the NB rows into s_x (rows of k, dtype), with the row norm
// kernel's arithmetic (vec.cuh); block 0 writes v to norm_residual_out. Every thread of the block, after the wait.
// v is loaded again (from L1) for the second pass instead of held: held, it took the kernel to 80 registers.
template <typename T, int NB>
__device__ __forceinline__ void norm_prologue(const md_gemv_params& p, T* s_x) {
  __shared__ float scratch[33];
  const int k = static_cast<int>(p.k);
  for (int b = 0; b < NB && b < p.batch; ++b) {
    float ss = 0.f;
#pragma unroll 1
    for (int c = 0; c < kNormChunks; ++c) {
      const int e = (threadIdx.x + c * kWarps * 32) * 8;
      if (e >= k) continue;
      float v[8];
      norm_input<T>(p, b, e, v);
      if (!p.norm_gate && blockIdx.x == 0)
        store8_any(p.norm_residual_out, p.norm_residual_dtype, b * p.norm_residual_out_row_stride + e, v);
      ss = sum_squares8(v, ss);
    }
    const float inv = rms_inverse(block_sum(ss, scratch), k, p.norm_eps);
#pragma unroll 1
    for (int c = 0; c < kNormChunks; ++c) {
      const int e = (threadIdx.x + c * kWarps * 32) * 8;
      if (e >= k) continue;
      float v[8], w[8];
      norm_input<T>(p, b, e, v);
      load8(static_cast<const T*>(p.norm_w) + e, w);
      norm_scale8(v, inv, w);
      store8(s_x + b * k + e, v);
    }
  }
  __syncthreads();
}

// Grid: ceil(n / (kWarps / split)) blocks of kWarps warps. NORM: the norm prologue (VEC only), its x rows in
// dynamic shared memory.
template <typename T, int NB, bool VEC, bool NORM = false>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const md_gemv_params p, int split) {
  constexpr int EPV = Pack<T>::N;
  __shared__ float red[kWarps][NB];
  extern __shared__ __align__(16) unsigned char gemv_smem[];  // NORM: x rows (NB, k)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kWarps / split) + warp / split;
  const int slice = warp % split;
  const bool row_ok = row < p.n;
  const int batch = static_cast<int>(p.batch);
  pdl_release();
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;
  const T* wrow = static_cast<const T*>(p.w) + (row_ok ? row : 0) * p.w_row_stride;
  const T* x = static_cast<const T*>(p.x);
  if (VEC) {
    // The first kUnroll vectors of each lane are loaded before the wait (no kernel writes the weights), so they
    // stream while the kernel before drains. (Keeping the next kUnroll in flight while using the current ones
    // took 56 registers instead of 40: fewer blocks a multiprocessor, b1 1.41 -> 1.47 ms.)
    const int64_t kv = row_ok ? p.k / EPV : 0, step = 32 * split, stride = kUnroll * step;
    const uint4* w4 = reinterpret_cast<const uint4*>(wrow);
    int64_t v0 = slice * 32 + lane;
    uint4 wv[kUnroll];
    // (Batch 1-2 only: at 4 and up this loop form made ptxas spill, and those batches take the tensor-core
    // form on 9.0, which loads its weights early too.)
    constexpr bool kEarly = NB <= 2;
    if (kEarly) load_weights(wv, w4, v0, step, kv);
    pdl_wait();
    T* s_x = reinterpret_cast<T*>(gemv_smem);
    if (NORM) {
      norm_prologue<T, NB>(p, s_x);
      x = s_x;
    }
    const int64_t x_stride = NORM ? p.k : p.x_row_stride;
    for (; v0 < kv; v0 += stride) {
      if (!kEarly) load_weights(wv, w4, v0, step, kv);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t vi = v0 + u * step;
        if (vi >= kv) continue;  // not `break`: keeps the loop fully unrolled (wv stays in registers)
        float wf[EPV];
        unpack(wv[u], wf, T());
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          if (b < batch) {
            const uint4* xrow = reinterpret_cast<const uint4*>(x + b * x_stride);
            const uint4 xv = xrow[vi];  // coherent: the kernel writing x may still run (programmatic launch)
            float xf[EPV];
            unpack(xv, xf, T());
#pragma unroll
            for (int j = 0; j < EPV; ++j) acc[b] = fmaf(wf[j], xf[j], acc[b]);
          }
        }
      }
      if (kEarly) load_weights(wv, w4, v0 + stride, step, kv);
    }
  } else {
    pdl_wait();
    if (row_ok) {
      for (int64_t kk = slice * 32 + lane; kk < p.k; kk += 32 * split) {
        const float wf = to_f(wrow[kk]);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          if (b < batch) acc[b] = fmaf(wf, to_f(x[b * p.x_row_stride + kk]), acc[b]);
        }
      }
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = group_sum<32>(acc[b]);
  if (split > 1) {
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < NB; ++b) red[warp][b] = acc[b];
    }
    __syncthreads();
    if (slice == 0) {
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        float s = 0.f;
        for (int q = 0; q < split; ++q) s += red[warp + q][b];
        acc[b] = s;
      }
    }
  }
  if (!row_ok || slice != 0 || lane >= batch) return;
  float v = 0.f;
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    if (lane == b) v = acc[b];
  }
  if (p.bias) v += to_f(static_cast<const T*>(p.bias)[row]);
  if (p.conv_dim > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_dim)
    v = conv_epilogue<T>(p, lane, row - p.conv_lo, v);
  static_cast<T*>(p.out)[lane * p.out_row_stride + row] = from_f<T>(v);
}

template <typename T, int NB>
cudaError_t launch_gemv_nb(const md_gemv_params& p, int split, bool vec, cudaStream_t s) {
  const int64_t rows_per_block = kWarps / split;
  const unsigned blocks = static_cast<unsigned>((p.n + rows_per_block - 1) / rows_per_block);
  // No L2 prefetch of the weights before pdl_wait(): measured 6% slower at mamba-1.4b batch 1 than without.
  if constexpr (NB <= MD_GEMV_NORM_MAX_BATCH) {
    if (p.norm_w) {  // md_launch_gemv checked vec
      const size_t smem = static_cast<size_t>(NB) * p.k * sizeof(T);
      return launch_pdl(gemv_kernel<T, NB, true, true>, blocks, kWarps * 32, smem, s, p, split);
    }
  }
  return vec ? launch_pdl(gemv_kernel<T, NB, true>, blocks, kWarps * 32, 0, s, p, split)
             : launch_pdl(gemv_kernel<T, NB, false>, blocks, kWarps * 32, 0, s, p, split);
}

template <typename T>
bool vec_ok(const md_gemv_params& p) {
  constexpr int EPV = Pack<T>::N;
  return p.k % EPV == 0 && p.w_row_stride % EPV == 0 && p.x_row_stride % EPV == 0 && is_aligned(p.w) && is_aligned(p.x);
}

// The norm prologue's conditions (gemv.h) beyond vec_ok: 16-byte rows of 8 elements of every norm operand.
bool norm_rows_ok(const md_gemv_params& p) {
  const int64_t res_size = elem_bytes(p.norm_residual_dtype);
  return p.k % 8 == 0 && p.k <= MD_GEMV_NORM_MAX_K && is_aligned(p.norm_w) &&
         rows_aligned(p.norm_residual, p.batch, p.norm_residual_row_stride, res_size) &&
         rows_aligned(p.norm_residual_out, p.batch, p.norm_residual_out_row_stride, res_size) &&
         rows_aligned(p.norm_gate, p.batch, p.norm_gate_row_stride, elem_bytes(p.dtype));
}

template <typename T>
cudaError_t launch_gemv_typed(const md_gemv_params& p, int split, cudaStream_t s) {
  const bool vec = vec_ok<T>(p);
  MD_CHECK(!p.norm_w || (vec && norm_rows_ok(p) && p.batch * p.k * sizeof(T) <= 32 * 1024),
           "gemv: the norm prologue needs k a multiple of 8 and <= 8192, 16-byte aligned rows and batch * k * "
           "element size <= 32 KB");
  if (p.batch <= 1) return launch_gemv_nb<T, 1>(p, split, vec, s);
  if (p.batch <= 2) return launch_gemv_nb<T, 2>(p, split, vec, s);
  if (p.batch <= 4) return launch_gemv_nb<T, 4>(p, split, vec, s);
  if (p.batch <= 8) return launch_gemv_nb<T, 8>(p, split, vec, s);
  return launch_gemv_nb<T, 16>(p, split, vec, s);
}

int auto_split(const md_gemv_params& p) {
  static int sms = 0;
  if (sms == 0) {
    sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
    if (sms <= 0) sms = 132;
  }
  const int64_t target = static_cast<int64_t>(sms) * 32;  // warps: half of a full machine
  int split = 1;
  while (split < kWarps && p.n * split < target && p.k >= static_cast<int64_t>(512) * split) split *= 2;
  return split;
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_gemv(const md_gemv_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "gemv: params is NULL");
  MD_CHECK(p->algo >= 0 && p->algo <= MD_GEMV_ALGO_WGMMA, "gemv: algo must be 0..5");
  MD_CHECK(p->batch >= 0 && p->batch <= MD_GEMV_TC_MAX_BATCH, "gemv: batch must be in 0..64");
  MD_CHECK(p->n >= 0 && p->k >= 0, "gemv: negative size");
  MD_CHECK(p->x && p->w && p->out, "gemv: x, w and out are required");
  MD_CHECK(p->split_k >= 0 && p->split_k <= 16, "gemv: split_k must be in 0..16");
  if (p->conv_dim > 0) {
    MD_CHECK(p->conv_width >= 2 && p->conv_width <= MD_MAX_CONV_WIDTH, "gemv: conv width must be in 2..8");
    MD_CHECK(p->conv_w && p->conv_state, "gemv: conv epilogue needs conv_w and conv_state");
    MD_CHECK(p->conv_lo >= 0 && p->conv_lo + p->conv_dim <= p->n, "gemv: conv rows out of range");
    MD_CHECK(md::valid_dtype(p->conv_state_dtype), "gemv: bad conv state dtype");
  }
  if (p->norm_w) {
    MD_CHECK(p->batch <= MD_GEMV_NORM_MAX_BATCH && (p->algo == 0 || p->algo == 1 || p->algo == MD_GEMV_ALGO_STAGED),
             "gemv: the norm prologue is the CUDA-core form's, batch <= 2");
    MD_CHECK(md::valid_dtype(p->norm_residual_dtype), "gemv: bad norm residual dtype");
    MD_CHECK(p->norm_gate || (p->norm_residual_out && p->norm_residual_out != p->norm_residual),
             "gemv: the add norm needs norm_residual_out, apart from norm_residual");
  }
  if (p->batch == 0 || p->n == 0) return cudaSuccess;
  if (p->algo == MD_GEMV_ALGO_STAGED) {
    MD_CHECK(md::gemv_staged_ok(*p), "gemv: the staged form needs no norm prologue, 16-byte vectors of x and w rows, "
                                     "compute capability 9.0+, and batch 1-2 with k <= 1,024 vectors or batch 3-16 "
                                     "in fp16 / bf16 with a block's rows in shared memory");
    return md::launch_gemv_staged(*p, stream);
  }
  const bool tc_ok = md::gemv_tc_ok(*p);
  MD_CHECK(p->algo < 2 || tc_ok, "gemv: the tensor-core form needs fp16 / bf16, k % 8 == 0, 16-byte aligned x and w "
                                  "rows and compute capability 9.0+");
  if (p->algo >= 2 || (p->algo == 0 && tc_ok && p->batch >= MD_GEMV_TC_MIN_BATCH))
    return md::launch_gemv_tc(*p, stream);
  MD_CHECK(p->batch <= MD_GEMV_MAX_BATCH, "gemv: batch > 16 needs the tensor-core form (fp16 / bf16 on 9.0+)");
  MD_CHECK(p->split_k == 0 || p->split_k == 1 || p->split_k == 2 || p->split_k == 4 || p->split_k == 8,
           "gemv: the CUDA-core form's split_k must be 0, 1, 2, 4 or 8");
  const int split = p->split_k ? static_cast<int>(p->split_k) : md::auto_split(*p);
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_gemv_typed<float>(*p, split, stream);
    case MD_FLOAT16: return md::launch_gemv_typed<__half>(*p, split, stream);
    case MD_BFLOAT16: return md::launch_gemv_typed<__nv_bfloat16>(*p, split, stream);
    default: MD_CHECK(false, "gemv: bad dtype");
  }
}
