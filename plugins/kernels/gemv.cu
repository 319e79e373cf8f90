// gemv.cu -- bandwidth-bound small-batch GEMV (with an optional causal-conv epilogue) and the
// fused Mamba1 decode step, for the native engine's CUDA-graph decode. See gemv.h.
//
// GEMV: a block of 8 warps owns 8 / split rows; the `split` warps of a row stride over its k
// in 16-byte vectors (interleaved, so together they read contiguous 512 * split bytes), with 4
// vectors in flight per lane, weights loaded with ld.global.nc.L1::no_allocate (read once) and x
// through the read-only cache (re-read by every row). Accumulation in float32 registers, one per
// batch row (batch <= 16 is a template bound); warp shuffles, then shared memory across the split.
// Lane b of the row's first warp finishes batch row b (bias, conv epilogue, store).
#include <cstdint>

#include "common.cuh"
#include "gemv.h"

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

// 16 bytes -> 16 / sizeof(T) floats.
template <typename T> struct Pack { static constexpr int N = 16 / sizeof(T); };
__device__ __forceinline__ void unpack(const uint4& v, float* f, float) {
  f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y); f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack(const uint4& v, float* f, __half) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) { const float2 t = __half22float2(h[i]); f[2 * i] = t.x; f[2 * i + 1] = t.y; }
}
__device__ __forceinline__ void unpack(const uint4& v, float* f, __nv_bfloat16) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) { const float2 t = __bfloat1622float2(h[i]); f[2 * i] = t.x; f[2 * i + 1] = t.y; }
}

template <typename T>
__device__ __forceinline__ float conv_epilogue(const md_gemv_params& p, int64_t b, int64_t c, float v) {
  const float xin = to_f(from_f<T>(v));  // the GEMV output in the model dtype, as the reference
  const int W = static_cast<int>(p.conv_width);
  const int64_t so = state_row(p.state_rows, b) * p.conv_state_batch_stride + c * p.conv_state_dim_stride;
  float win[MD_MAX_CONV_WIDTH];
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH; ++i) {
    if (i < W - 1) win[i] = to_f(from_f<T>(load_any(p.conv_state, p.conv_state_dtype, so + i * p.conv_state_width_stride)));
    else if (i == W - 1) win[i] = xin;
    else win[i] = 0.f;
  }
  const T* cw = static_cast<const T*>(p.conv_w) + c * W;
  float acc = p.conv_b ? to_f(static_cast<const T*>(p.conv_b)[c]) : 0.f;
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH; ++i) {
    if (i < W) acc = fmaf(to_f(cw[i]), win[i], acc);
  }
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH - 1; ++i) {
    if (i < W - 1) store_any(p.conv_state, p.conv_state_dtype, so + i * p.conv_state_width_stride, win[i + 1]);
  }
  return p.conv_silu ? silu(acc) : acc;
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
  if (vec) gemv_kernel<T, NB, true><<<blocks, kWarps * 32, 0, s>>>(p, split);
  else gemv_kernel<T, NB, false><<<blocks, kWarps * 32, 0, s>>>(p, split);
  return cudaGetLastError();
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
    int dev = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 132;
  }
  const int64_t target = static_cast<int64_t>(sms) * 32;  // warps: half of a full machine
  int split = 1;
  while (split < kWarps && p.n * split < target && p.k >= static_cast<int64_t>(512) * split) split *= 2;
  return split;
}

// ---- fused decode kernels --------------------------------------------------------------------

constexpr int kStepThreads = 128;
constexpr int kMaxRank = 1024;
constexpr int kMaxState = 16;

// 8 consecutive elements (16-byte aligned) -> floats.
template <typename T>
__device__ __forceinline__ void load8(const T* ptr, float* f) {
  const uint4* v = reinterpret_cast<const uint4*>(ptr);
  if constexpr (sizeof(T) == 2) {
    unpack(__ldg(v), f, T());
  } else {
    unpack(__ldg(v), f, T());
    unpack(__ldg(v + 1), f + 4, T());
  }
}
__device__ __forceinline__ void load8_any(const void* ptr, int64_t dtype, int64_t i, float* f) {
  if (dtype == MD_FLOAT32) load8(static_cast<const float*>(ptr) + i, f);
  else if (dtype == MD_FLOAT16) load8(static_cast<const __half*>(ptr) + i, f);
  else load8(static_cast<const __nv_bfloat16*>(ptr) + i, f);
}
__device__ __forceinline__ void store8_any(void* ptr, int64_t dtype, int64_t i, const float* f) {
#pragma unroll
  for (int j = 0; j < 8; ++j) store_any(ptr, dtype, i + j, f[j]);
}

// Mamba1. Grid: (ceil(dim / 8), ceil(batch / RB)); a half-warp per channel (lane n owns state n) for RB
// batch rows: each 16-byte chunk of the channel's dt_proj row is loaded once and serves the RB rows' dot
// products, so dt_proj is read ceil(batch / RB) times per step instead of batch times. Each row's arithmetic
// is that of one row alone (same order), so results do not depend on RB or on the other rows. The RB rows'
// states are loaded together with the dt_proj chunk, so their latencies overlap.
template <typename T, typename S, int RB>
__global__ void __launch_bounds__(kStepThreads) mamba1_step_kernel(const md_mamba1_step_params p) {
  extern __shared__ __align__(16) float smem[];  // dt inputs [RB][R8 * 8]; B, C [RB][kMaxState]; x, z [RB][8]
  const int n = threadIdx.x & 15;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * (kStepThreads / 16) + (threadIdx.x >> 4);
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * RB;
  const int rows = static_cast<int>(p.batch - b0 < RB ? p.batch - b0 : RB);  // uniform over the block
  const int R = static_cast<int>(p.dt_rank), R8 = (R + 7) / 8, N = static_cast<int>(p.dstate);
  const bool ok = d < p.dim;
  const int64_t dd = ok ? d : 0;  // out-of-range half-warps compute on channel 0 and store nothing
  const int RP = R8 * 8, c = threadIdx.x >> 4;  // c: this half-warp's channel in the block
  float* s_dt = smem;
  float* s_B = smem + RB * RP;
  float* s_C = s_B + RB * kMaxState;
  float* s_x = s_C + RB * kMaxState;
  float* s_z = s_x + RB * 8;
  if (threadIdx.x < RB * 8) {
    const int r = threadIdx.x / 8, k = threadIdx.x % 8;
    const int64_t ch = static_cast<int64_t>(blockIdx.x) * 8 + k;
    const bool in = r < rows && ch < p.dim;
    s_x[threadIdx.x] = in ? to_f(static_cast<const T*>(p.x)[(b0 + r) * p.x_row_stride + ch]) : 0.f;
    s_z[threadIdx.x] = in ? to_f(static_cast<const T*>(p.z)[(b0 + r) * p.z_row_stride + ch]) : 0.f;
  }
  for (int i = threadIdx.x; i < RB * RP; i += kStepThreads) {
    const int r = i / RP, k = i - r * RP;
    s_dt[i] = r < rows && k < R ? to_f(static_cast<const T*>(p.xdbl)[(b0 + r) * p.xdbl_row_stride + k]) : 0.f;
  }
  for (int i = threadIdx.x; i < RB * kMaxState; i += kStepThreads) {
    const int r = i / kMaxState, k = i % kMaxState;
    const T* xd = static_cast<const T*>(p.xdbl) + (b0 + r) * p.xdbl_row_stride + R;
    s_B[i] = r < rows && k < N ? to_f(xd[k]) : 0.f;
    s_C[i] = r < rows && k < N ? to_f(xd[N + k]) : 0.f;
  }
  __syncthreads();
  S* state = static_cast<S*>(p.state) + dd * p.state_dim_stride + n;  // + row * state_batch_stride
  int srow[RB];  // state rows (a pool of < 2^31 rows)
  float h0[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    if (r >= rows) continue;
    srow[r] = static_cast<int>(state_row(p.state_rows, b0 + r));
    h0[r] = n < N ? to_f(state[srow[r] * p.state_batch_stride]) : 0.f;
  }
  const T* wrow = static_cast<const T*>(p.wdt) + dd * RP;
  float dt[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) dt[r] = 0.f;
  for (int r8 = n; r8 < R8; r8 += 16) {
    float wf[8];
    load8(wrow + r8 * 8, wf);
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const float4 lo = *reinterpret_cast<const float4*>(s_dt + r * RP + r8 * 8);
      const float4 hi = *reinterpret_cast<const float4*>(s_dt + r * RP + r8 * 8 + 4);
      const float in[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) dt[r] = fmaf(wf[j], in[j], dt[r]);
    }
  }
  const float bias = p.dt_bias[dd], A = n < N ? p.A[dd * N + n] : 0.f;
  float y_mine = 0.f;  // lane r < rows: C . state of row r (every lane of the half-warp gets the same sum)
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    if (r >= rows) continue;
    float v = group_sum<16>(dt[r]) + bias;
    v = v <= 20.f ? log1pf(expf(v)) : v;
    float y = 0.f;
    if (n < N) {
      const float h = fmaf(h0[r], expf(v * A), v * s_x[r * 8 + c] * s_B[r * kMaxState + n]);
      if (ok) state[srow[r] * p.state_batch_stride] = from_f<S>(h);
      y = h * s_C[r * kMaxState + n];
    }
    y = group_sum<16>(y);
    if (n == r) y_mine = y;
  }
  if (!ok || n >= rows) return;  // lane n finishes row n: one gate division per lane, none in the row loop
  const float x = s_x[n * 8 + c], z = s_z[n * 8 + c];
  const float y = fmaf(p.D[dd], x, y_mine) * (z / (1.f + expf(-z)));
  static_cast<T*>(p.y)[(b0 + n) * p.y_row_stride + dd] = from_f<T>(y);
}

// Mamba2. Grid: (ceil(nheads * headdim / 4), batch); a warp per (head, p), NPL states per lane.
template <typename T, typename S, int NPL>
__global__ void __launch_bounds__(128) mamba2_step_kernel(const md_mamba2_step_params p) {
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

template <typename T, typename S, int RB>
cudaError_t launch_step_rows(const md_mamba1_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.dim + 7) / 8), static_cast<unsigned>((p.batch + RB - 1) / RB));
  const size_t smem = sizeof(float) * RB * ((p.dt_rank + 7) / 8 * 8 + 2 * kMaxState + 2 * 8);
  mamba1_step_kernel<T, S, RB><<<grid, kStepThreads, smem, s>>>(p);
  return cudaGetLastError();
}

// Rows per block: the batch up to 8 (a larger RB would only add registers; dt_proj is then re-read
// ceil(batch / 8) times, from L2).
template <typename T, typename S>
cudaError_t launch_step_state(const md_mamba1_step_params& p, cudaStream_t s) {
  if (p.batch <= 1) return launch_step_rows<T, S, 1>(p, s);
  if (p.batch <= 2) return launch_step_rows<T, S, 2>(p, s);
  if (p.batch <= 4) return launch_step_rows<T, S, 4>(p, s);
  return launch_step_rows<T, S, 8>(p, s);
}

template <typename T>
cudaError_t launch_step_typed(const md_mamba1_step_params& p, cudaStream_t s) {
  return p.state_dtype == MD_FLOAT32 ? launch_step_state<T, float>(p, s) : launch_step_state<T, T>(p, s);
}

template <typename T, typename S>
cudaError_t launch_m2_typed(const md_mamba2_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.nheads * p.headdim + 3) / 4), static_cast<unsigned>(p.batch));
  switch (p.dstate / 32) {
    case 1: mamba2_step_kernel<T, S, 1><<<grid, 128, 0, s>>>(p); break;
    case 2: mamba2_step_kernel<T, S, 2><<<grid, 128, 0, s>>>(p); break;
    case 4: mamba2_step_kernel<T, S, 4><<<grid, 128, 0, s>>>(p); break;
    default: mamba2_step_kernel<T, S, 8><<<grid, 128, 0, s>>>(p); break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_m2(const md_mamba2_step_params& p, cudaStream_t s) {
  return p.state_dtype == MD_FLOAT32 ? launch_m2_typed<T, float>(p, s) : launch_m2_typed<T, T>(p, s);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_gemv(const md_gemv_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "gemv: params is NULL");
  MD_CHECK(p->batch >= 0 && p->batch <= MD_GEMV_MAX_BATCH, "gemv: batch must be in 0..16");
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
  const int split = p->split_k ? static_cast<int>(p->split_k) : md::auto_split(*p);
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_gemv_typed<float>(*p, split, stream);
    case MD_FLOAT16: return md::launch_gemv_typed<__half>(*p, split, stream);
    case MD_BFLOAT16: return md::launch_gemv_typed<__nv_bfloat16>(*p, split, stream);
    default: MD_CHECK(false, "gemv: bad dtype");
  }
}

extern "C" cudaError_t md_launch_mamba1_step(const md_mamba1_step_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "mamba1_step: params is NULL");
  MD_CHECK(p->dstate > 0 && p->dstate <= md::kMaxState, "mamba1_step: dstate must be in 1..16");
  MD_CHECK(p->dt_rank > 0 && p->dt_rank <= md::kMaxRank, "mamba1_step: dt_rank must be in 1..1024");
  MD_CHECK(p->batch >= 0 && p->batch <= 65535 && p->dim >= 0, "mamba1_step: bad batch or dim");
  MD_CHECK(p->x && p->z && p->xdbl && p->wdt && p->dt_bias && p->A && p->D && p->state && p->y,
           "mamba1_step: every pointer is required");
  MD_CHECK((reinterpret_cast<uintptr_t>(p->wdt) & 15) == 0, "mamba1_step: wdt must be 16-byte aligned");
  MD_CHECK(p->state_dtype == MD_FLOAT32 || p->state_dtype == p->dtype, "mamba1_step: state dtype");
  if (p->batch == 0 || p->dim == 0) return cudaSuccess;
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_step_typed<float>(*p, stream);
    case MD_FLOAT16: return md::launch_step_typed<__half>(*p, stream);
    case MD_BFLOAT16: return md::launch_step_typed<__nv_bfloat16>(*p, stream);
    default: MD_CHECK(false, "mamba1_step: bad dtype");
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
  md::row_norm_kernel<<<grid, static_cast<unsigned>(p->group_size / 8), 0, stream>>>(*p);
  return cudaGetLastError();
}
