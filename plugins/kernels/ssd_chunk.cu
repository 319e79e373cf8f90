// ssd_chunk.cu -- Mamba2's chunk scan in the SSD form on tensor cores, for 16-bit x / B / C.
// Reference: mamba_deploy/ops/chunk_scan.py (chunk_scan_ref); the recurrence in ssm_scan.cu stays the
// path for float32 inputs, for short sequences and for shapes outside ssd_eligible.
//
// The sequence is cut into chunks of kQ = 64 steps (the last one zero-padded: a padded step has dt = 0, so
// it neither decays nor feeds the state). With a_t = dt_t * A and cum_t = a_0 + ... + a_t inside a chunk:
//   1. ssd_state_kernel, per (chunk, head): the chunk's own end state from zero,
//        S_c = X^T (w * B),  w_s = dt_s * exp(cum_last - cum_s)                    (P x Q) . (Q x N)
//      and the chunk's decay exp(cum_last).
//   2. ssd_pass_kernel, per state element: walks the chunks, turning S_c into the state entering chunk c
//      (from state_in), and writes state_out.
//   3. ssd_output_kernel, per (chunk, head):
//        y = ((C B^T) * L * dt_s) X + (exp(cum_t) C) S_in^T + D x, gated by silu(z),  L[t, s] = exp(cum_t - cum_s), s <= t.
// Operands that are float32 products (w * B, the masked C B^T, exp(cum) C, S_in) enter the 16-bit
// matrix products as hi + lo pairs (hi = round(v), lo = round(v - hi)), so the result keeps about 16
// mantissa bits instead of the 8 (bf16) or 11 (fp16) of one rounding; accumulation is float32.
#include <mma.h>

#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "ssd_chunk.cuh"
#include "vec.cuh"

namespace md {
namespace {

using namespace nvcuda;

constexpr int kQ = 64;         // steps per chunk
constexpr int kPad = 8;        // 16-bit row padding (16 bytes): rows stay 32-byte aligned per 16-row tile
constexpr int kStateThreads = 128;
constexpr int kOutThreads = 256;
constexpr int64_t kMinSeqlen = 256;                       // shorter sequences: the recurrence
constexpr int64_t kMaxWorkspace = int64_t(512) << 20;     // else the recurrence (memory stays flat)

struct SsdArgs {
  md_ssm_params p;
  int64_t nchunks;
  int clamp_dt;
  float* states;  // (batch, nchunks, nheads, headdim, dstate): S_c, then the state entering chunk c
  float* decays;  // (batch, nchunks, nheads): exp(cum_last) of chunk c
};

template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragAc = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <typename T>
__device__ __forceinline__ void split(float v, T* hi, T* lo) {
  const T h = from_f<T>(v);
  *hi = h;
  *lo = from_f<T>(v - to_f(h));
}

// dt_s[t] (discretised; 0 past the sequence) and cum_s[t] = sum of dt * A over steps 0..t of the chunk.
// Every thread of the block calls it; threads 0..kQ-1 do the work.
__device__ void chunk_dt(const SsdArgs& a, int64_t b, int64_t h, int64_t t0, int tc, float* dt_s, float* cum_s) {
  const md_ssm_params& p = a.p;
  const int t = threadIdx.x;
  if (t < kQ) {
    float dt = 0.f;
    if (t < tc) {
      dt = load_any(p.dt, p.x_dtype, b * p.dt_batch_stride + (t0 + t) * p.dt_seq_stride + h * p.dt_head_stride);
      if (p.dt_bias) dt += load_any(p.dt_bias, p.param_dtype, h * p.dt_bias_head_stride);
      dt = discretise_dt(p, a.clamp_dt, dt);
    }
    dt_s[t] = dt;
    float v = dt * load_any(p.A, p.param_dtype, h * p.A_head_stride);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float u = __shfl_up_sync(0xffffffffu, v, o);
      if ((t & 31) >= o) v += u;
    }
    cum_s[t] = v;
  }
  __syncthreads();
  const float first_warp = cum_s[31];
  __syncthreads();
  if (t >= 32 && t < kQ) cum_s[t] += first_warp;
  __syncthreads();
}

// Whether 8-element pieces of rows starting at `base`, `row_stride` apart, can move as 16-byte vectors.
template <typename T>
__device__ __forceinline__ bool vectorisable(const T* base, int64_t row_stride, int64_t col_stride) {
  return col_stride == 1 && reinterpret_cast<uintptr_t>(base) % 16 == 0 && (row_stride * sizeof(T)) % 16 == 0;
}

// 8 elements of a row, col_stride apart, as floats.
template <typename T>
__device__ __forceinline__ void row8(const T* src, int64_t col_stride, bool vec, float* f) {
  if (vec) {
    load8(src, f);
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) f[k] = to_f(src[k * col_stride]);
}

// 8 floats -> hi and lo halves (16-byte stores into shared memory).
template <typename T>
__device__ __forceinline__ void split8(const float* f, T* hi, T* lo) {
  __align__(16) T h[8], l[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) split(f[k], &h[k], &l[k]);
  *reinterpret_cast<uint4*>(hi) = *reinterpret_cast<const uint4*>(h);
  *reinterpret_cast<uint4*>(lo) = *reinterpret_cast<const uint4*>(l);
}

// rows x cols (cols a multiple of 8) elements at src into dst (row-major, ld), zero rows past `valid_rows`.
template <typename T>
__device__ void load_tile(T* dst, int ld, const T* src, int64_t row_stride, int64_t col_stride, int rows, int cols,
                          int valid_rows) {
  const bool vec = vectorisable(src, row_stride, col_stride);
  const int per_row = cols / 8;
  for (int i = threadIdx.x; i < rows * per_row; i += blockDim.x) {
    const int r = i / per_row, c = (i % per_row) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid_rows) {
      const T* at = src + r * row_stride + c * col_stride;
      if (vec) {
        v = __ldg(reinterpret_cast<const uint4*>(at));
      } else {
        __align__(16) T e[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) e[k] = at[k * col_stride];
        v = *reinterpret_cast<const uint4*>(e);
      }
    }
    *reinterpret_cast<uint4*>(dst + r * ld + c) = v;
  }
}

// Grid (nchunks, nheads, batch), kStateThreads threads.
template <typename T>
__global__ void __launch_bounds__(kStateThreads) ssd_state_kernel(const SsdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const md_ssm_params& p = a.p;
  const int64_t c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * kQ;
  const int tc = static_cast<int>(p.seqlen - t0 < kQ ? p.seqlen - t0 : kQ);
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate), ldx = P + kPad, ldb = N + kPad;
  const int64_t g = h / (p.nheads / p.ngroups);
  T* sX = reinterpret_cast<T*>(smem);  // (kQ, ldx)
  T* sBhi = sX + kQ * ldx;             // (kQ, ldb)
  T* sBlo = sBhi + kQ * ldb;
  float* dt_s = reinterpret_cast<float*>(sBlo + kQ * ldb);
  float* cum_s = dt_s + kQ;
  float* w_s = cum_s + kQ;  // dt_s * exp(cum_last - cum_s): the weight of step s in the chunk's end state

  chunk_dt(a, b, h, t0, tc, dt_s, cum_s);
  load_tile(sX, ldx, static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride + h * p.x_head_stride,
            p.x_seq_stride, p.x_dim_stride, kQ, P, tc);
  const T* Bp = static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride + g * p.B_group_stride;
  const float last = cum_s[kQ - 1];
  if (threadIdx.x < kQ) w_s[threadIdx.x] = dt_s[threadIdx.x] * expf(last - cum_s[threadIdx.x]);
  __syncthreads();
  const bool vec = vectorisable(Bp, p.B_seq_stride, p.B_state_stride);
  for (int i = threadIdx.x; i < kQ * (N / 8); i += blockDim.x) {
    const int t = i / (N / 8), n = (i % (N / 8)) * 8;
    float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (t < tc) {
      row8(Bp + t * p.B_seq_stride + n * p.B_state_stride, p.B_state_stride, vec, f);
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] *= w_s[t];
    }
    split8(f, &sBhi[t * ldb + n], &sBlo[t * ldb + n]);
  }
  __syncthreads();

  float* out = a.states + ((b * a.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  const int warp = threadIdx.x / 32, tiles_n = N / 16;
  for (int tile = warp; tile < (P / 16) * tiles_n; tile += kStateThreads / 32) {
    const int tp = tile / tiles_n, tn = tile % tiles_n;
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k = 0; k < kQ; k += 16) {
      FragAc<T> xt;  // X^T (P x Q): element (p, t) at sX[t * ldx + p]
      wmma::load_matrix_sync(xt, sX + k * ldx + tp * 16, ldx);
      FragB<T> bw;
      wmma::load_matrix_sync(bw, sBhi + k * ldb + tn * 16, ldb);
      wmma::mma_sync(acc, xt, bw, acc);
      wmma::load_matrix_sync(bw, sBlo + k * ldb + tn * 16, ldb);
      wmma::mma_sync(acc, xt, bw, acc);
    }
    wmma::store_matrix_sync(out + tp * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
  }
  if (threadIdx.x == 0) a.decays[(b * a.nchunks + c) * p.nheads + h] = expf(last);
}

// One thread per (batch, head, p, n): S_c -> the state entering chunk c; the state after the last chunk -> state_out.
template <typename S>
__global__ void ssd_pass_kernel(const SsdArgs a) {
  const md_ssm_params& p = a.p;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.batch * p.nheads * p.headdim * p.dstate) return;
  const int64_t n = i % p.dstate, d = (i / p.dstate) % p.headdim, h = (i / (p.dstate * p.headdim)) % p.nheads;
  const int64_t b = i / (p.dstate * p.headdim * p.nheads), sb = state_row(p.state_rows, b);
  float h_prev = p.state_in ? to_f(static_cast<const S*>(p.state_in)[sb * p.state_in_batch_stride +
      h * p.state_in_head_stride + d * p.state_in_dim_stride + n * p.state_in_state_stride]) : 0.f;
  const int64_t per_chunk = p.nheads * p.headdim * p.dstate;
  float* __restrict__ states = a.states + b * a.nchunks * per_chunk + (h * p.headdim + d) * p.dstate + n;
  const float* __restrict__ decays = a.decays + b * a.nchunks * p.nheads + h;
  constexpr int kAhead = 8;  // chunks whose loads are in flight together (the walk itself is serial)
  for (int64_t c0 = 0; c0 < a.nchunks; c0 += kAhead) {
    float own[kAhead], decay[kAhead];
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      if (c0 + k < a.nchunks) {
        own[k] = states[(c0 + k) * per_chunk];
        decay[k] = __ldg(decays + (c0 + k) * p.nheads);
      }
    }
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      if (c0 + k < a.nchunks) {
        states[(c0 + k) * per_chunk] = h_prev;
        h_prev = fmaf(decay[k], h_prev, own[k]);
      }
    }
  }
  if (p.state_out) {
    static_cast<S*>(p.state_out)[sb * p.state_out_batch_stride + h * p.state_out_head_stride +
        d * p.state_out_dim_stride + n * p.state_out_state_stride] = from_f<S>(h_prev);
  }
}

struct OutLayout {  // shared-memory offsets (bytes) of ssd_output_kernel
  int ldx, ldb, ldf, ldm;
  size_t C, B, X, Shi, Slo, F, M, dt, cum, ecum, total;
};

template <typename T>
__host__ __device__ OutLayout out_layout(int P, int N) {
  OutLayout o{};
  o.ldx = P + kPad;
  o.ldb = N + kPad;
  o.ldf = (P > kQ ? P : kQ) + 4;  // float32 rows: C B^T (kQ wide), then y (P wide)
  o.ldm = kQ + kPad;
  size_t at = 0;
  auto take = [&](size_t bytes) { const size_t here = at; at += (bytes + 127) / 128 * 128; return here; };
  o.C = take(sizeof(T) * kQ * o.ldb);
  o.B = take(sizeof(T) * kQ * o.ldb);    // B, then the lo part of exp(cum) C
  o.X = take(sizeof(T) * kQ * o.ldx);
  o.Shi = take(sizeof(T) * P * o.ldb);
  o.Slo = take(sizeof(T) * P * o.ldb);
  o.F = take(sizeof(float) * kQ * o.ldf);
  o.M = take(2 * sizeof(T) * kQ * o.ldm);  // hi, lo of the masked C B^T
  o.dt = take(sizeof(float) * kQ);
  o.cum = take(sizeof(float) * kQ);
  o.ecum = take(sizeof(float) * kQ);
  o.total = at;
  return o;
}

// Grid (nchunks, nheads, batch), kOutThreads threads.
template <typename T>
__global__ void __launch_bounds__(kOutThreads) ssd_output_kernel(const SsdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const md_ssm_params& p = a.p;
  const int64_t c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * kQ;
  const int tc = static_cast<int>(p.seqlen - t0 < kQ ? p.seqlen - t0 : kQ);
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate);
  const OutLayout o = out_layout<T>(P, N);
  T* sC = reinterpret_cast<T*>(smem + o.C);
  T* sB = reinterpret_cast<T*>(smem + o.B);
  T* sX = reinterpret_cast<T*>(smem + o.X);
  T* sShi = reinterpret_cast<T*>(smem + o.Shi);
  T* sSlo = reinterpret_cast<T*>(smem + o.Slo);
  float* sF = reinterpret_cast<float*>(smem + o.F);
  T* sMhi = reinterpret_cast<T*>(smem + o.M);
  T* sMlo = sMhi + kQ * o.ldm;
  float* dt_s = reinterpret_cast<float*>(smem + o.dt);
  float* cum_s = reinterpret_cast<float*>(smem + o.cum);
  float* ecum_s = reinterpret_cast<float*>(smem + o.ecum);  // exp(cum_t): the decay of the entering state
  const int64_t g = h / (p.nheads / p.ngroups);
  const int warp = threadIdx.x / 32, nwarps = kOutThreads / 32;

  chunk_dt(a, b, h, t0, tc, dt_s, cum_s);
  load_tile(sC, o.ldb, static_cast<const T*>(p.C) + b * p.C_batch_stride + t0 * p.C_seq_stride + g * p.C_group_stride,
            p.C_seq_stride, p.C_state_stride, kQ, N, tc);
  load_tile(sB, o.ldb, static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride + g * p.B_group_stride,
            p.B_seq_stride, p.B_state_stride, kQ, N, tc);
  load_tile(sX, o.ldx, static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride + h * p.x_head_stride,
            p.x_seq_stride, p.x_dim_stride, kQ, P, tc);
  const float* S_in = a.states + ((b * a.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  for (int i = threadIdx.x; i < P * (N / 8); i += blockDim.x) {
    const int d = i / (N / 8), n = (i % (N / 8)) * 8;
    float f[8];
    load8(S_in + d * N + n, f);
    split8(f, &sShi[d * o.ldb + n], &sSlo[d * o.ldb + n]);
  }
  if (threadIdx.x < kQ) ecum_s[threadIdx.x] = expf(cum_s[threadIdx.x]);
  __syncthreads();

  // C B^T, lower block triangle (tiles ts <= tt) -> sF
  for (int tile = warp; tile < 10; tile += nwarps) {
    int tt = 0;
    while ((tt + 1) * (tt + 2) / 2 <= tile) ++tt;
    const int ts = tile - tt * (tt + 1) / 2;
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k = 0; k < N; k += 16) {
      FragA<T> cf;
      wmma::load_matrix_sync(cf, sC + tt * 16 * o.ldb + k, o.ldb);
      FragBc<T> bf;  // B^T (N x Q): element (n, s) at sB[s * ldb + n]
      wmma::load_matrix_sync(bf, sB + ts * 16 * o.ldb + k, o.ldb);
      wmma::mma_sync(acc, cf, bf, acc);
    }
    wmma::store_matrix_sync(sF + tt * 16 * o.ldf + ts * 16, acc, o.ldf, wmma::mem_row_major);
  }
  __syncthreads();

  // M = C B^T * exp(cum_t - cum_s) * dt_s on s <= t (hi, lo); exp(cum_t) C -> hi in sC, lo in sB
  for (int i = threadIdx.x; i < kQ * (kQ / 8); i += blockDim.x) {
    const int t = i / (kQ / 8), s0 = (i % (kQ / 8)) * 8;
    float m[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int s = s0 + k;
      m[k] = s <= t ? sF[t * o.ldf + s] * expf(cum_s[t] - cum_s[s]) * dt_s[s] : 0.f;
    }
    split8(m, &sMhi[t * o.ldm + s0], &sMlo[t * o.ldm + s0]);
  }
  for (int i = threadIdx.x; i < kQ * (N / 8); i += blockDim.x) {
    const int t = i / (N / 8), n = (i % (N / 8)) * 8;
    float f[8];
    unpack(*reinterpret_cast<const uint4*>(&sC[t * o.ldb + n]), f, T());
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] *= ecum_s[t];
    split8(f, &sC[t * o.ldb + n], &sB[t * o.ldb + n]);
  }
  __syncthreads();

  // y tiles (kQ x P): M X + (exp(cum) C) S_in^T, into sF
  const int tiles_p = P / 16;
  for (int tile = warp; tile < (kQ / 16) * tiles_p; tile += nwarps) {
    const int tt = tile / tiles_p, tp = tile % tiles_p;
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k = 0; k <= tt * 16; k += 16) {  // causal: key tiles up to the diagonal
      FragB<T> xf;
      wmma::load_matrix_sync(xf, sX + k * o.ldx + tp * 16, o.ldx);
      FragA<T> mf;
      wmma::load_matrix_sync(mf, sMhi + tt * 16 * o.ldm + k, o.ldm);
      wmma::mma_sync(acc, mf, xf, acc);
      wmma::load_matrix_sync(mf, sMlo + tt * 16 * o.ldm + k, o.ldm);
      wmma::mma_sync(acc, mf, xf, acc);
    }
    for (int k = 0; k < N; k += 16) {
      FragA<T> chi, clo;
      wmma::load_matrix_sync(chi, sC + tt * 16 * o.ldb + k, o.ldb);
      wmma::load_matrix_sync(clo, sB + tt * 16 * o.ldb + k, o.ldb);
      FragBc<T> sf;  // S_in^T (N x P): element (n, d) at sS[d * ldb + n]
      wmma::load_matrix_sync(sf, sShi + tp * 16 * o.ldb + k, o.ldb);
      wmma::mma_sync(acc, chi, sf, acc);
      wmma::mma_sync(acc, clo, sf, acc);
      wmma::load_matrix_sync(sf, sSlo + tp * 16 * o.ldb + k, o.ldb);
      wmma::mma_sync(acc, chi, sf, acc);
    }
    __syncwarp();
    wmma::store_matrix_sync(sF + tt * 16 * o.ldf + tp * 16, acc, o.ldf, wmma::mem_row_major);
  }
  __syncthreads();

  // y + D x, gated by silu(z)
  const float Dh = p.D ? load_any(p.D, p.param_dtype, h * p.D_head_stride) : 0.f;
  const T* zp = static_cast<const T*>(p.z) + b * p.z_batch_stride + t0 * p.z_seq_stride + h * p.z_head_stride;
  T* yp = static_cast<T*>(p.y) + b * p.y_batch_stride + t0 * p.y_seq_stride + h * p.y_head_stride;
  const bool z_vec = p.z && vectorisable(zp, p.z_seq_stride, p.z_dim_stride);
  const bool y_vec = vectorisable(yp, p.y_seq_stride, p.y_dim_stride);
  for (int i = threadIdx.x; i < tc * (P / 8); i += blockDim.x) {
    const int t = i / (P / 8), d = (i % (P / 8)) * 8;
    float y[8], x[8];
    unpack(*reinterpret_cast<const uint4*>(&sX[t * o.ldx + d]), x, T());
#pragma unroll
    for (int k = 0; k < 8; ++k) y[k] = sF[t * o.ldf + d + k] + Dh * x[k];
    if (p.z) {
      float z[8];
      row8(zp + t * p.z_seq_stride + d * p.z_dim_stride, p.z_dim_stride, z_vec, z);
#pragma unroll
      for (int k = 0; k < 8; ++k) y[k] *= silu(z[k]);
    }
    T* out = yp + t * p.y_seq_stride + d * p.y_dim_stride;
    if (y_vec) {
      store8(out, y);
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) out[k * p.y_dim_stride] = from_f<T>(y[k]);
    }
  }
}

template <typename T>
size_t state_smem(int P, int N) {
  return sizeof(T) * kQ * ((P + kPad) + 2 * (N + kPad)) + 3 * sizeof(float) * kQ;
}

int max_smem_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10); }

template <typename T, typename S>
cudaError_t launch_typed(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate);
  const dim3 grid(static_cast<unsigned>(a.nchunks), static_cast<unsigned>(p.nheads), static_cast<unsigned>(p.batch));
  const size_t state_bytes = state_smem<T>(P, N), out_bytes = out_layout<T>(P, N).total;
  cudaError_t err = cudaFuncSetAttribute(ssd_state_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(state_bytes));
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(ssd_output_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(out_bytes));
  if (err != cudaSuccess) return err;
  // the largest carveout: two output blocks (about 113 KB each at headdim 64, dstate 128) per multiprocessor
  err = cudaFuncSetAttribute(ssd_output_kernel<T>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  ssd_state_kernel<T><<<grid, kStateThreads, state_bytes, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const int64_t elems = p.batch * p.nheads * p.headdim * p.dstate;
  ssd_pass_kernel<S><<<static_cast<unsigned>((elems + 255) / 256), 256, 0, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  ssd_output_kernel<T><<<grid, kOutThreads, out_bytes, stream>>>(a);
  return cudaGetLastError();
}

int64_t nchunks_of(const md_ssm_params& p) { return (p.seqlen + kQ - 1) / kQ; }

}  // namespace

bool ssd_eligible(const md_ssm_params& p) {
  if (p.x_dtype != MD_FLOAT16 && p.x_dtype != MD_BFLOAT16) return false;
  if (p.A_state_stride != 0 || p.dt_dim_stride != 0 || p.seqlen < kMinSeqlen || p.batch == 0) return false;
  if (p.headdim % 16 != 0 || p.headdim > 128 || p.dstate % 16 != 0 || p.dstate > 256) return false;
  if (p.batch > 65535 || p.nheads > 65535 || nchunks_of(p) > (int64_t(1) << 31) - 1) return false;
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate);
  const size_t smem = std::max(out_layout<__half>(P, N).total, state_smem<__half>(P, N));
  return smem <= static_cast<size_t>(max_smem_optin()) && ssd_workspace_bytes(p) <= size_t(kMaxWorkspace);
}

size_t ssd_workspace_bytes(const md_ssm_params& p) {
  const int64_t nc = nchunks_of(p);
  return size_t(p.batch * nc * p.nheads * (p.headdim * p.dstate + 1)) * sizeof(float);
}

cudaError_t launch_ssd(const md_ssm_params& p, void* workspace, cudaStream_t stream) {
  SsdArgs a{};
  a.p = p;
  a.nchunks = nchunks_of(p);
  a.clamp_dt = clamps_dt(p);
  a.states = static_cast<float*>(workspace);
  a.decays = a.states + a.nchunks * p.batch * p.nheads * p.headdim * p.dstate;
  if (p.x_dtype == MD_FLOAT16) {
    return p.state_dtype == MD_FLOAT32 ? launch_typed<__half, float>(a, stream) : launch_typed<__half, __half>(a, stream);
  }
  return p.state_dtype == MD_FLOAT32 ? launch_typed<__nv_bfloat16, float>(a, stream)
                                     : launch_typed<__nv_bfloat16, __nv_bfloat16>(a, stream);
}

}  // namespace md
