// ssd_chunk.cu -- Mamba2's chunk scan in the SSD form on tensor cores, for 16-bit x / B / C.
// Reference: mamba_deploy/ops/chunk_scan.py (chunk_scan_ref); the recurrence in ssm_scan.cu stays the
// path for float32 inputs, for sequences under 32 steps and for shapes outside ssd_eligible.
//
// The sequence is cut into chunks of kQ = 64 steps (the last one zero-padded: a padded step has dt = 0, so
// it neither decays nor feeds the state). With a_t = dt_t * A and cum_t = a_0 + ... + a_t inside a chunk:
//   1. ssd_dt_kernel, per (chunk, head): dt_s and cum_s into the scratch.
//   2. ssd_carry_kernel, per (head, 16 rows of headdim): walks the chunks in order with the state in tensor-core
//      accumulators, writing the state entering each chunk, S_in(c), and then
//        S_in(c + 1) = exp(cum_last) S_in(c) + (w * X)^T B,  w_s = dt_s * exp(cum_last - cum_s)   (P x Q) . (Q x N)
//      and finally state_out. (It replaced a kernel per (chunk, head) for each chunk's own end state plus a
//      pass over the chunks per state element: the float32 chunk states went to memory three times, not once.)
//   3. ssd_output_kernel, per (chunk, head):
//        y = ((C B^T) * L * dt_s) X + exp(cum_t) (C S_in^T) + D x, gated by silu(z),
//        L[t, s] = exp(cum_t - cum_s), s <= t.
// Operands that are float32 products (w * X, the masked C B^T, S_in) enter the 16-bit
// matrix products as hi + lo pairs (hi = round(v), lo = round(v - hi)), so the result keeps about 16
// mantissa bits instead of the 8 (bf16) or 11 (fp16) of one rounding; accumulation is float32.
#include <algorithm>
#include <cmath>

#include "ssd_chunk.cuh"
#include "ssd_common.cuh"

namespace md {
namespace ssd {
namespace {

constexpr int kOutThreads = 256;
constexpr int kZ = kQ * 128 / 8 / kOutThreads;  // 8-element groups of y a thread of ssd_output_kernel writes
// Shorter sequences: the recurrence. Measured on the H200 (benchmarks/chunk_scan.py, mamba2-1.3b's layer), the
// SSD form beats it from 32 steps at every batch: 1 x 32 19.5 us against 30.3 for 1 x 31 in the recurrence, 64 x
// 32 602 against 987; at 100 steps 3-4x (1 x 100 22.5 / 81.6 us, 64 x 100 924 / 2,662). The bound was 256.
constexpr int64_t kMinSeqlen = 32;
constexpr int64_t kMaxWorkspace = int64_t(512) << 20;     // scratch of a launch: larger batches go in slices of rows

// acc += a b_j^T summed over the NB tiles b_j, over k < K: a 16 rows of K (row-major, ld), each b_j 16 rows of K
// (row-major, ld, read as the column-major K x 16 operand); the products of a k step in b's order.
template <typename T, int NB>
__device__ __forceinline__ void mma_rows_by_cols(FragAcc& acc, const T* a, const T* const (&b)[NB], int ld, int K) {
  for (int k = 0; k < K; k += 16) {
    FragA<T> af;
    wmma::load_matrix_sync(af, a + k, ld);
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      FragBc<T> bf;
      wmma::load_matrix_sync(bf, b[j] + k, ld);
      wmma::mma_sync(acc, af, bf, acc);
    }
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
  o.B = take(sizeof(T) * kQ * o.ldb);
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

  if (threadIdx.x < kQ) {
    const float* dts = a.dts + ((b * a.nchunks + c) * p.nheads + h) * 2 * kQ;
    dt_s[threadIdx.x] = dts[threadIdx.x];
    cum_s[threadIdx.x] = dts[kQ + threadIdx.x];
  }
  const TileShare n_share(N, kOutThreads), p_share(P, kOutThreads);
  copy_tile(sC, o.ldb, static_cast<const T*>(p.C) + b * p.C_batch_stride + t0 * p.C_seq_stride + g * p.C_group_stride,
            p.C_seq_stride, p.C_state_stride, tc, n_share);
  copy_tile(sB, o.ldb, static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride + g * p.B_group_stride,
            p.B_seq_stride, p.B_state_stride, tc, n_share);
  copy_tile(sX, o.ldx, static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride + h * p.x_head_stride,
            p.x_seq_stride, p.x_dim_stride, tc, p_share);
  cp_async_commit();
  // this thread's 8-element groups of z (group i = threadIdx.x + k kOutThreads: step i / (P / 8)), in flight
  // through the products
  const T* zp = static_cast<const T*>(p.z) + b * p.z_batch_stride + t0 * p.z_seq_stride + h * p.z_head_stride;
  const bool z_vec = p.z && vectorisable(zp, p.z_seq_stride, p.z_dim_stride);
  uint4 z_raw[kZ];
#pragma unroll
  for (int k = 0; k < kZ; ++k) {
    const int i = threadIdx.x + k * kOutThreads, t = i / (P / 8), d = (i % (P / 8)) * 8;
    z_raw[k] = make_uint4(0, 0, 0, 0);
    if (z_vec && t < tc) z_raw[k] = __ldg(reinterpret_cast<const uint4*>(zp + t * p.z_seq_stride + d));
  }
  // S_in -> hi, lo: kBatch 8-element loads in flight a thread before their first use
  const float* S_in = a.states + ((b * a.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  constexpr int kBatch = 4;
  for (int i0 = threadIdx.x; i0 < P * (N / 8); i0 += kBatch * kOutThreads) {
    float f[kBatch][8];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = i0 + k * kOutThreads;
      if (i < P * (N / 8)) load8(S_in + (i / (N / 8)) * N + (i % (N / 8)) * 8, f[k]);
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = i0 + k * kOutThreads, d = i / (N / 8), n = (i % (N / 8)) * 8;
      if (i < P * (N / 8)) split8(f[k], &sShi[d * o.ldb + n], &sSlo[d * o.ldb + n]);
    }
  }
  if (threadIdx.x < kQ) ecum_s[threadIdx.x] = expf(cum_s[threadIdx.x]);
  cp_async_wait<0>();
  __syncthreads();

  // C B^T, lower block triangle (tiles ts <= tt) -> sF
  for (int tile = warp; tile < 10; tile += nwarps) {
    int tt = 0;
    while ((tt + 1) * (tt + 2) / 2 <= tile) ++tt;
    const int ts = tile - tt * (tt + 1) / 2;
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
    const T* b_rows[1] = {sB + ts * 16 * o.ldb};  // B^T (N x Q): element (n, s) at sB[s * ldb + n]
    mma_rows_by_cols(acc, sC + tt * 16 * o.ldb, b_rows, o.ldb, N);
    wmma::store_matrix_sync(sF + tt * 16 * o.ldf + ts * 16, acc, o.ldf, wmma::mem_row_major);
  }
  __syncthreads();

  // M = C B^T * exp(cum_t - cum_s) * dt_s on s <= t (hi, lo)
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
  __syncthreads();

  // y tiles (kQ x P): exp(cum_t) (C S_in^T) + M X, into sF. The decay scales the rows of C S_in^T after the
  // product, so C enters it exact and only S_in as hi + lo.
  const int tiles_p = P / 16, lane = threadIdx.x % 32;
  for (int tile = warp; tile < (kQ / 16) * tiles_p; tile += nwarps) {
    const int tt = tile / tiles_p, tp = tile % tiles_p;
    float* tile_f = sF + tt * 16 * o.ldf + tp * 16;
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
    const T* s_rows[2] = {sShi + tp * 16 * o.ldb, sSlo + tp * 16 * o.ldb};  // S_in^T (N x P): (n, d) at sS[d * ldb + n]
    mma_rows_by_cols(acc, sC + tt * 16 * o.ldb, s_rows, o.ldb, N);
    wmma::store_matrix_sync(tile_f, acc, o.ldf, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * 16; e += 32) tile_f[(e / 16) * o.ldf + e % 16] *= ecum_s[tt * 16 + e / 16];
    __syncwarp();
    wmma::load_matrix_sync(acc, tile_f, o.ldf, wmma::mem_row_major);
    for (int k = 0; k <= tt * 16; k += 16) {  // causal: key tiles up to the diagonal
      FragB<T> xf;
      wmma::load_matrix_sync(xf, sX + k * o.ldx + tp * 16, o.ldx);
      FragA<T> mf;
      wmma::load_matrix_sync(mf, sMhi + tt * 16 * o.ldm + k, o.ldm);
      wmma::mma_sync(acc, mf, xf, acc);
      wmma::load_matrix_sync(mf, sMlo + tt * 16 * o.ldm + k, o.ldm);
      wmma::mma_sync(acc, mf, xf, acc);
    }
    __syncwarp();
    wmma::store_matrix_sync(tile_f, acc, o.ldf, wmma::mem_row_major);
  }
  __syncthreads();

  // y + D x, gated by silu(z)
  const float Dh = p.D ? load_any(p.D, p.param_dtype, h * p.D_head_stride) : 0.f;
  T* yp = static_cast<T*>(p.y) + b * p.y_batch_stride + t0 * p.y_seq_stride + h * p.y_head_stride;
  const bool y_vec = vectorisable(yp, p.y_seq_stride, p.y_dim_stride);
#pragma unroll
  for (int k = 0; k < kZ; ++k) {
    const int i = threadIdx.x + k * kOutThreads, t = i / (P / 8), d = (i % (P / 8)) * 8;
    if (t >= tc) continue;
    float y[8], x[8];
    unpack(*reinterpret_cast<const uint4*>(&sX[t * o.ldx + d]), x, T());
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = sF[t * o.ldf + d + e] + Dh * x[e];
    if (p.z) {
      float z[8];
      if (z_vec) {
        unpack(z_raw[k], z, T());
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) z[e] = to_f(zp[t * p.z_seq_stride + (d + e) * p.z_dim_stride]);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) y[e] *= silu(z[e]);
    }
    T* out = yp + t * p.y_seq_stride + d * p.y_dim_stride;
    if (y_vec) {
      store8(out, y);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) out[e * p.y_dim_stride] = from_f<T>(y[e]);
    }
  }
}

int64_t nchunks_of(const md_ssm_params& p) { return (p.seqlen + kQ - 1) / kQ; }

// Scratch of one batch row: the float32 state entering each chunk, and each chunk's dt_s and cum_s.
size_t row_workspace_bytes(const md_ssm_params& p) {
  return size_t(nchunks_of(p) * p.nheads * (p.headdim * p.dstate + 2 * kQ)) * sizeof(float);
}

int max_smem_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10); }

// Rows [b0, b0 + nb) of the batch as a batch of their own.
template <typename T, typename S>
md_ssm_params batch_rows(const md_ssm_params& p, int64_t b0, int64_t nb) {
  md_ssm_params q = p;
  q.batch = nb;
  q.x = static_cast<const T*>(p.x) + b0 * p.x_batch_stride;
  q.dt = static_cast<const T*>(p.dt) + b0 * p.dt_batch_stride;
  q.B = static_cast<const T*>(p.B) + b0 * p.B_batch_stride;
  q.C = static_cast<const T*>(p.C) + b0 * p.C_batch_stride;
  if (p.z) q.z = static_cast<const T*>(p.z) + b0 * p.z_batch_stride;
  q.y = static_cast<T*>(p.y) + b0 * p.y_batch_stride;
  if (p.state_rows) {
    q.state_rows = p.state_rows + b0;
  } else {
    if (p.state_in) q.state_in = static_cast<const S*>(p.state_in) + b0 * p.state_in_batch_stride;
    if (p.state_out) q.state_out = static_cast<S*>(p.state_out) + b0 * p.state_out_batch_stride;
  }
  return q;
}

template <typename T, typename S>
cudaError_t launch_typed(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const size_t out_bytes = out_layout<T>(static_cast<int>(p.headdim), static_cast<int>(p.dstate)).total;
  cudaError_t err = cudaFuncSetAttribute(ssd_output_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(out_bytes));
  if (err != cudaSuccess) return err;
  // the largest carveout: two output blocks (about 113 KB each at headdim 64, dstate 128) per multiprocessor
  err = cudaFuncSetAttribute(ssd_output_kernel<T>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  if ((err = launch_states<T, S>(a, stream)) != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.nchunks), static_cast<unsigned>(p.nheads), static_cast<unsigned>(p.batch));
  ssd_output_kernel<T><<<grid, kOutThreads, out_bytes, stream>>>(a);
  return cudaGetLastError();
}

// The batch in slices of rows whose scratch fits kMaxWorkspace, one after another in the same scratch.
template <typename T, typename S>
cudaError_t launch_slices(const md_ssm_params& p, int64_t nchunks, void* workspace, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(ssd_workspace_bytes(p) / row_workspace_bytes(p));
  for (int64_t b0 = 0; b0 < p.batch; b0 += rows) {
    SsdArgs a{};
    a.p = batch_rows<T, S>(p, b0, std::min(rows, p.batch - b0));
    a.nchunks = nchunks;
    a.clamp_dt = clamps_dt(p);
    a.states = static_cast<float*>(workspace);
    a.dts = a.states + rows * nchunks * p.nheads * p.headdim * p.dstate;
    const cudaError_t err = launch_typed<T, S>(a, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace ssd

using ssd::kMaxWorkspace;
using ssd::kMinSeqlen;
using ssd::launch_slices;
using ssd::max_smem_optin;
using ssd::nchunks_of;
using ssd::row_workspace_bytes;

bool ssd_eligible(const md_ssm_params& p) {
  if (p.x_dtype != MD_FLOAT16 && p.x_dtype != MD_BFLOAT16) return false;
  if (p.A_state_stride != 0 || p.dt_dim_stride != 0 || p.seqlen < kMinSeqlen || p.batch == 0) return false;
  if (p.headdim % 16 != 0 || p.headdim > 128 || p.dstate % 16 != 0 || p.dstate > 256) return false;
  if (p.batch > 65535 || p.nheads > 65535 || nchunks_of(p) > (int64_t(1) << 31) - 1) return false;
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate);
  const size_t smem = std::max(ssd::out_layout<__half>(P, N).total, ssd::states_smem_bytes(N));
  return smem <= static_cast<size_t>(max_smem_optin()) && row_workspace_bytes(p) <= size_t(kMaxWorkspace);
}

size_t ssd_workspace_bytes(const md_ssm_params& p) {
  const size_t row = row_workspace_bytes(p);
  return std::min<size_t>(p.batch, std::max<size_t>(1, size_t(kMaxWorkspace) / row)) * row;
}

cudaError_t launch_ssd(const md_ssm_params& p, void* workspace, cudaStream_t stream) {
  const int64_t nchunks = nchunks_of(p);
  if (p.x_dtype == MD_FLOAT16) {
    return p.state_dtype == MD_FLOAT32 ? launch_slices<__half, float>(p, nchunks, workspace, stream)
                                       : launch_slices<__half, __half>(p, nchunks, workspace, stream);
  }
  using Bf16 = __nv_bfloat16;
  return p.state_dtype == MD_FLOAT32 ? launch_slices<Bf16, float>(p, nchunks, workspace, stream)
                                     : launch_slices<Bf16, Bf16>(p, nchunks, workspace, stream);
}

}  // namespace md
