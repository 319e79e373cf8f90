// gemv.cu -- bandwidth-bound small-batch GEMV (with an optional causal-conv epilogue), the Mamba2
// decode step and the row norm, for the native engine's CUDA-graph decode. See gemv.h (the Mamba1
// step is mamba1_step.cu).
//
// GEMV: a block of 8 warps owns 8 / split rows; the `split` warps of a row stride over its k
// in 16-byte vectors (interleaved, so together they read contiguous 512 * split bytes), with 4
// vectors in flight per lane, weights loaded with ld.global.nc.L1::no_allocate (read once) and x
// through the read-only cache (re-read by every row). Accumulation in float32 registers, one per
// batch row (batch <= 16 is a template bound); warp shuffles, then shared memory across the split.
// Lane b of the row's first warp finishes batch row b (bias, conv epilogue, store).
// All the decode kernels here start with pdl_release(); pdl_wait() (common.cuh: programmatic dependent launch).
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


// Grid: ceil(n / (kWarps / split)) blocks of kWarps warps.
template <typename T, int NB, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const md_gemv_params p, int split) {
  constexpr int EPV = Pack<T>::N;
  __shared__ float red[kWarps][NB];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kWarps / split) + warp / split;
  const int slice = warp % split;
  const bool row_ok = row < p.n;
  const int batch = static_cast<int>(p.batch);
  pdl_release();
  pdl_wait();
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;

  if (row_ok) {
    const T* wrow = static_cast<const T*>(p.w) + row * p.w_row_stride;
    const T* x = static_cast<const T*>(p.x);
    if (VEC) {
      const int64_t kv = p.k / EPV, step = 32 * split;
      const uint4* w4 = reinterpret_cast<const uint4*>(wrow);
      for (int64_t v0 = slice * 32 + lane; v0 < kv; v0 += kUnroll * step) {
        uint4 wv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t vi = v0 + u * step;
          wv[u] = vi < kv ? ld_stream(w4 + vi) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t vi = v0 + u * step;
          if (vi >= kv) continue;  // not `break`: keeps the loop fully unrolled (wv stays in registers)
          float wf[EPV];
          unpack(wv[u], wf, T());
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            if (b < batch) {
              const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + b * p.x_row_stride) + vi);
              float xf[EPV];
              unpack(xv, xf, T());
#pragma unroll
              for (int j = 0; j < EPV; ++j) acc[b] = fmaf(wf[j], xf[j], acc[b]);
            }
          }
        }
      }
    } else {
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
  if (p.conv_dim > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_dim) v = conv_epilogue<T>(p, lane, row - p.conv_lo, v);
  static_cast<T*>(p.out)[lane * p.out_row_stride + row] = from_f<T>(v);
}

template <typename T, int NB>
cudaError_t launch_gemv_nb(const md_gemv_params& p, int split, bool vec, cudaStream_t s) {
  const int64_t rows_per_block = kWarps / split;
  const unsigned blocks = static_cast<unsigned>((p.n + rows_per_block - 1) / rows_per_block);
  // No L2 prefetch of the weights before pdl_wait(): measured 6% slower at mamba-1.4b batch 1 than without.
  return vec ? launch_pdl(gemv_kernel<T, NB, true>, blocks, kWarps * 32, 0, s, p, split)
             : launch_pdl(gemv_kernel<T, NB, false>, blocks, kWarps * 32, 0, s, p, split);
}

template <typename T>
cudaError_t launch_gemv_typed(const md_gemv_params& p, int split, cudaStream_t s) {
  constexpr int EPV = Pack<T>::N;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
  const bool vec = p.k % EPV == 0 && p.w_row_stride % EPV == 0 && p.x_row_stride % EPV == 0 && aligned(p.w) &&
                   aligned(p.x);
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

// ---- fused decode kernels --------------------------------------------------------------------




// Mamba2. Grid: (ceil(nheads * headdim / 4), batch); a warp per (head, p), NPL states per lane.
template <typename T, typename S, int NPL>
__global__ void __launch_bounds__(128) mamba2_step_kernel(const md_mamba2_step_params p) {
  pdl_release();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.y, row = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  if (row >= p.nheads * p.headdim) return;
  const int64_t h = row / p.headdim, pp = row % p.headdim, g = h / (p.nheads / p.ngroups);
  const T* Bp = static_cast<const T*>(p.B) + b * p.B_row_stride + g * p.dstate + lane * NPL;
  const T* Cp = static_cast<const T*>(p.C) + b * p.C_row_stride + g * p.dstate + lane * NPL;
  S* st = static_cast<S*>(p.state) + state_row(p.state_rows, b) * p.state_batch_stride + h * p.state_head_stride +
          pp * p.state_dim_stride + lane * NPL;
  float hs[NPL], Bv[NPL], Cv[NPL];
#pragma unroll
  for (int j = 0; j < NPL; ++j) { hs[j] = to_f(st[j]); Bv[j] = to_f(Bp[j]); Cv[j] = to_f(Cp[j]); }
  const float x = to_f(static_cast<const T*>(p.x)[b * p.x_row_stride + row]);
  float dt = to_f(static_cast<const T*>(p.dt)[b * p.dt_row_stride + h]) + (p.dt_bias ? p.dt_bias[h] : 0.f);
  dt = dt <= 20.f ? log1pf(expf(dt)) : dt;
  dt = fminf(fmaxf(dt, static_cast<float>(p.dt_min)), static_cast<float>(p.dt_max));
  const float dA = expf(dt * p.A[h]), dtx = dt * x;
  float y = 0.f;
#pragma unroll
  for (int j = 0; j < NPL; ++j) {
    hs[j] = fmaf(hs[j], dA, dtx * Bv[j]);
    y = fmaf(hs[j], Cv[j], y);
    st[j] = from_f<S>(hs[j]);
  }
  y = group_sum<32>(y);
  if (lane == 0) {
    if (p.D) y = fmaf(p.D[h], x, y);
    static_cast<T*>(p.y)[b * p.y_row_stride + row] = from_f<T>(y);
  }
}

// Row norm. Grid: (rows, hidden / group_size); group_size / 8 threads, 8 elements each.
__global__ void __launch_bounds__(1024) row_norm_kernel(const md_row_norm_params p) {
  pdl_release();
  pdl_wait();
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x, e = static_cast<int64_t>(blockIdx.y) * p.group_size + threadIdx.x * 8;
  float v[8], w[8];
  load8_any(p.x, p.dtype, r * p.x_row_stride + e, v);
  load8_any(p.weight, p.dtype, e, w);
  if (p.residual) {
    float o[8];
    load8_any(p.residual, p.gate ? p.dtype : p.residual_dtype, r * p.residual_row_stride + e, o);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = p.gate ? v[j] * silu(o[j]) : v[j] + o[j];
  }
  if (!p.gate && p.residual_out) store8_any(p.residual_out, p.residual_dtype, r * p.residual_out_row_stride + e, v);
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) ss = fmaf(v[j], v[j], ss);
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(p.group_size) + static_cast<float>(p.eps));
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] *= inv * w[j];
  store8_any(p.out, p.dtype, r * p.out_row_stride + e, v);
}


template <typename T, typename S>
cudaError_t launch_m2_typed(const md_mamba2_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.nheads * p.headdim + 3) / 4), static_cast<unsigned>(p.batch));
  switch (p.dstate / 32) {
    case 1: return launch_pdl(mamba2_step_kernel<T, S, 1>, grid, 128, 0, s, p);
    case 2: return launch_pdl(mamba2_step_kernel<T, S, 2>, grid, 128, 0, s, p);
    case 4: return launch_pdl(mamba2_step_kernel<T, S, 4>, grid, 128, 0, s, p);
    default: return launch_pdl(mamba2_step_kernel<T, S, 8>, grid, 128, 0, s, p);
  }
}

template <typename T>
cudaError_t launch_m2(const md_mamba2_step_params& p, cudaStream_t s) {
  return p.state_dtype == MD_FLOAT32 ? launch_m2_typed<T, float>(p, s) : launch_m2_typed<T, T>(p, s);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_gemv(const md_gemv_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "gemv: params is NULL");
  MD_CHECK(p->algo >= 0 && p->algo <= 3, "gemv: algo must be 0, 1, 2 or 3");
  MD_CHECK(p->batch >= 0 && p->batch <= MD_GEMV_TC_MAX_BATCH, "gemv: batch must be in 0..64");
  MD_CHECK(p->n >= 0 && p->k >= 0, "gemv: negative size");
  MD_CHECK(p->x && p->w && p->out, "gemv: x, w and out are required");
  MD_CHECK(p->split_k == 0 || p->split_k == 1 || p->split_k == 2 || p->split_k == 4 || p->split_k == 8,
           "gemv: split_k must be 0, 1, 2, 4 or 8");
  if (p->conv_dim > 0) {
    MD_CHECK(p->conv_width >= 2 && p->conv_width <= MD_MAX_CONV_WIDTH, "gemv: conv width must be in 2..8");
    MD_CHECK(p->conv_w && p->conv_state, "gemv: conv epilogue needs conv_w and conv_state");
    MD_CHECK(p->conv_lo >= 0 && p->conv_lo + p->conv_dim <= p->n, "gemv: conv rows out of range");
    MD_CHECK(md::valid_dtype(p->conv_state_dtype), "gemv: bad conv state dtype");
  }
  if (p->batch == 0 || p->n == 0) return cudaSuccess;
  const bool tc_ok = md::gemv_tc_ok(*p);
  MD_CHECK(p->algo < 2 || tc_ok, "gemv: the tensor-core form needs fp16 / bf16, k % 8 == 0, 16-byte aligned x and w "
                                  "rows and compute capability 9.0+");
  if (p->algo >= 2 || (p->algo == 0 && tc_ok && p->batch >= MD_GEMV_TC_MIN_BATCH)) return md::launch_gemv_tc(*p, stream);
  MD_CHECK(p->batch <= MD_GEMV_MAX_BATCH, "gemv: batch > 16 needs the tensor-core form (fp16 / bf16 on 9.0+)");
  const int split = p->split_k ? static_cast<int>(p->split_k) : md::auto_split(*p);
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_gemv_typed<float>(*p, split, stream);
    case MD_FLOAT16: return md::launch_gemv_typed<__half>(*p, split, stream);
    case MD_BFLOAT16: return md::launch_gemv_typed<__nv_bfloat16>(*p, split, stream);
    default: MD_CHECK(false, "gemv: bad dtype");
  }
}


extern "C" cudaError_t md_launch_mamba2_step(const md_mamba2_step_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "mamba2_step: params is NULL");
  MD_CHECK(p->dstate == 32 || p->dstate == 64 || p->dstate == 128 || p->dstate == 256,
           "mamba2_step: dstate must be 32, 64, 128 or 256");
  MD_CHECK(p->nheads > 0 && p->headdim > 0 && p->ngroups > 0 && p->nheads % p->ngroups == 0,
           "mamba2_step: nheads must be a positive multiple of ngroups");
  MD_CHECK(p->batch >= 0 && p->batch <= 65535, "mamba2_step: bad batch");
  MD_CHECK(p->x && p->B && p->C && p->dt && p->A && p->state && p->y, "mamba2_step: missing pointer");
  MD_CHECK(p->state_dtype == MD_FLOAT32 || p->state_dtype == p->dtype, "mamba2_step: state dtype");
  if (p->batch == 0) return cudaSuccess;
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_m2<float>(*p, stream);
    case MD_FLOAT16: return md::launch_m2<__half>(*p, stream);
    case MD_BFLOAT16: return md::launch_m2<__nv_bfloat16>(*p, stream);
    default: MD_CHECK(false, "mamba2_step: bad dtype");
  }
}

extern "C" cudaError_t md_launch_row_norm(const md_row_norm_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "row_norm: params is NULL");
  MD_CHECK(p->group_size > 0 && p->group_size % 256 == 0 && p->group_size <= 8192 && p->hidden % p->group_size == 0,
           "row_norm: group_size must be a multiple of 256, <= 8192, dividing hidden");
  MD_CHECK(p->gate || p->group_size == p->hidden, "row_norm: groups only with gate");
  MD_CHECK(p->x && p->weight && p->out && (!p->gate || p->residual), "row_norm: missing pointer");
  MD_CHECK(md::valid_dtype(p->dtype) && md::valid_dtype(p->residual_dtype), "row_norm: bad dtype");
  MD_CHECK(p->rows >= 0 && p->rows < (int64_t{1} << 31), "row_norm: bad rows");
  if (p->rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p->rows), static_cast<unsigned>(p->hidden / p->group_size));
  return md::launch_pdl(md::row_norm_kernel, grid, static_cast<unsigned>(p->group_size / 8), 0, stream, *p);
}
