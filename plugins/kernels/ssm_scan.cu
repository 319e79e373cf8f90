// ssm_scan.cu -- the selective SSM recurrence from an initial state, for Mamba1's selective scan,
// Mamba2's SSD chunk scan and the one-token state update of both (see md_ssm_params).
// References: mamba_deploy/ops/selective_scan.py, chunk_scan.py, state_update.py.
//
// Rows r = (head, p) of one B/C group are tiled over blocks; kTPN consecutive threads own one row
// and kNPT states each (in registers, float32), interleaved by 4 so that shared-memory float4 reads
// of B_t / C_t are conflict-free. The sequence is walked in chunks of kTC steps: the block stages
// dt (discretised), dt*x, B and C for the chunk in shared memory (coalesced for either layout),
// runs the recurrence, reduces y over the row's threads with shuffles, then writes y (+ D*x, gated
// by silu(z)) coalesced. Each state element is read and written by the same thread, so state_in
// and state_out may alias.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "mamba1_scan.cuh"
#include "ssd_chunk.cuh"

namespace md {
namespace {

constexpr int kThreads = 128;
#ifndef MD_SCAN_T_UNROLL
#define MD_SCAN_T_UNROLL 4
#endif
constexpr int kTUnroll = MD_SCAN_T_UNROLL;  // time steps of the recurrence unrolled

struct ScanArgs {
  md_ssm_params p;
  int64_t rows_per_group;  // (nheads / ngroups) * headdim
  int64_t tiles_per_group;
  int clamp_dt;            // apply dt_min / dt_max
  int rows_fastest;        // x / y / z have a unit row stride: stage row-fastest
  int b_state_fastest;     // B / C have a unit state stride
  // Time-parallel form (md_launch_ssm_scan_ws): the sequence is cut into nchunks chunks of chunk_len steps.
  int64_t nchunks, chunk_len;
  float* ws_h;  // (nchunks, batch, nheads * headdim, dstate): state entering each chunk
  float* ws_P;  // same shape: product of the decays over each chunk
};

// The three passes of the kernel: the whole sequence in one walk (kFull), or the time-parallel form's
// chunk-local end states from zero (kLocalEnd, no y), then outputs from the carried states (kFromCarry).
enum ScanMode { kFull = 0, kLocalEnd = 1, kFromCarry = 2 };

__device__ __forceinline__ int64_t ws_index(const ScanArgs& a, int64_t c, int64_t b, int64_t r, int n) {
  return ((c * a.p.batch + b) * (a.p.nheads * a.p.headdim) + r) * a.p.dstate + n;
}

template <int NPT, int TPN>
struct Tile {
  static constexpr int kRows = kThreads / TPN;
  static constexpr int kDS = NPT * TPN;                    // padded dstate
  static constexpr int kTC = kDS <= 64 ? 64 : 4096 / kDS;  // time steps per chunk
  static constexpr int kBStride = kDS + 4;                 // keeps float4 alignment
  static constexpr int kRStride = kTC + 1;
  // state j of a thread with lane q: n = 4 * (q + TPN * (j / 4)) + j % 4
  static __device__ __forceinline__ int state_index(int q, int j) { return 4 * (q + TPN * (j / 4)) + (j & 3); }
};

template <int NPT, int TPN>
struct __align__(16) ScanSmem {
  using Tl = Tile<NPT, TPN>;
  float B[Tl::kTC][Tl::kBStride];
  float C[Tl::kTC][Tl::kBStride];
  float decay[Tl::kRows][Tl::kRStride];  // exp(dt * A) for scalar A, else dt
  float dtx[Tl::kRows][Tl::kRStride];
  float y[Tl::kRows][Tl::kRStride];
};

// (head, p) offset of row `r` (group-relative row index rg within group g) for a tensor's strides.
__device__ __forceinline__ int64_t row_offset(int64_t r, int64_t headdim, int64_t head_stride, int64_t dim_stride) {
  return (r / headdim) * head_stride + (r % headdim) * dim_stride;
}

// Element i of a (rows x tc) tile: row-fastest when the rows are contiguous in memory.
template <int ROWS>
__device__ __forceinline__ int2 row_step(const ScanArgs& a, int i, int tc) {
  return a.rows_fastest ? make_int2(i % ROWS, i / ROWS) : make_int2(i / tc, i % tc);
}

// Stage B, C (tc x kDS) and the per-row decay / dt*x (kRows x tc) of steps [t0, t0 + tc).
template <typename T, int NPT, int TPN, bool SCALAR_A>
__device__ void stage_chunk(const ScanArgs& a, ScanSmem<NPT, TPN>& sm, int64_t b, int64_t g, int64_t row0,
                            int64_t t0, int tc) {
  using Tl = Tile<NPT, TPN>;
  const md_ssm_params& p = a.p;
  const T* Bp = static_cast<const T*>(p.B) + b * p.B_batch_stride + g * p.B_group_stride + t0 * p.B_seq_stride;
  const T* Cp = static_cast<const T*>(p.C) + b * p.C_batch_stride + g * p.C_group_stride + t0 * p.C_seq_stride;
  auto bc_at = [&](int i) {  // (n, t); only steps < tc are ever read
    return a.b_state_fastest ? make_int2(i % Tl::kDS, i / Tl::kDS) : make_int2(i / tc, i % tc);
  };
  batched_loop<8, kThreads>(tc * Tl::kDS, [&](int i) {
    const int2 nt = bc_at(i);
    if (nt.x >= p.dstate) return make_float2(0.f, 0.f);
    return make_float2(to_f(Bp[nt.y * p.B_seq_stride + nt.x * p.B_state_stride]),
                       to_f(Cp[nt.y * p.C_seq_stride + nt.x * p.C_state_stride]));
  }, [&](int i, float2 v) {
    const int2 nt = bc_at(i);
    sm.B[nt.y][nt.x] = v.x;
    sm.C[nt.y][nt.x] = v.y;
  });
  const T* xp = static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride;
  const T* dtp = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + t0 * p.dt_seq_stride;
  batched_loop<4, kThreads>(Tl::kRows * tc, [&](int i) {  // (x, raw dt, dt_bias, A)
    const int2 rt = row_step<Tl::kRows>(a, i, tc);
    const int64_t rg = row0 + rt.x, r = g * a.rows_per_group + rg, head = r / p.headdim;
    if (rg >= a.rows_per_group) return make_float4(0.f, 0.f, 0.f, 0.f);
    return make_float4(
        to_f(xp[rt.y * p.x_seq_stride + row_offset(r, p.headdim, p.x_head_stride, p.x_dim_stride)]),
        to_f(dtp[rt.y * p.dt_seq_stride + row_offset(r, p.headdim, p.dt_head_stride, p.dt_dim_stride)]),
        p.dt_bias ? load_any(p.dt_bias, p.param_dtype, head * p.dt_bias_head_stride) : 0.f,
        SCALAR_A ? load_any(p.A, p.param_dtype, head * p.A_head_stride) : 0.f);
  }, [&](int i, float4 v) {
    const int2 rt = row_step<Tl::kRows>(a, i, tc);
    const float dt = discretise_dt(p, a.clamp_dt, v.y + v.z);
    const bool ok = row0 + rt.x < a.rows_per_group;
    sm.decay[rt.x][rt.y] = !ok ? 0.f : SCALAR_A ? exp2f(dt * v.w * kLog2e) : dt;
    sm.dtx[rt.x][rt.y] = ok ? dt * v.x : 0.f;
  });
}

// y = (C . h) + D * x, gated by silu(z); written for the chunk's valid rows and steps.
template <typename T, int NPT, int TPN>
__device__ void write_chunk(const ScanArgs& a, ScanSmem<NPT, TPN>& sm, int64_t b, int64_t g, int64_t row0,
                            int64_t t0, int tc) {
  using Tl = Tile<NPT, TPN>;
  const md_ssm_params& p = a.p;
  const T* xp = static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride;
  const T* zp = static_cast<const T*>(p.z) + b * p.z_batch_stride + t0 * p.z_seq_stride;
  T* yp = static_cast<T*>(p.y) + b * p.y_batch_stride + t0 * p.y_seq_stride;
  batched_loop<4, kThreads>(Tl::kRows * tc, [&](int i) {  // (D * x, z)
    const int2 rt = row_step<Tl::kRows>(a, i, tc);
    const int64_t rg = row0 + rt.x, r = g * a.rows_per_group + rg, head = r / p.headdim;
    if (rg >= a.rows_per_group) return make_float2(0.f, 0.f);
    const float dx = p.D ? load_any(p.D, p.param_dtype, head * p.D_head_stride) *
        to_f(xp[rt.y * p.x_seq_stride + row_offset(r, p.headdim, p.x_head_stride, p.x_dim_stride)]) : 0.f;
    const float z = p.z ? to_f(zp[rt.y * p.z_seq_stride + row_offset(r, p.headdim, p.z_head_stride, p.z_dim_stride)])
                        : 0.f;
    return make_float2(dx, z);
  }, [&](int i, float2 v) {
    const int2 rt = row_step<Tl::kRows>(a, i, tc);
    const int64_t rg = row0 + rt.x, r = g * a.rows_per_group + rg;
    if (rg >= a.rows_per_group) return;
    float y = sm.y[rt.x][rt.y] + v.x;
    if (p.z) y *= silu(v.y);
    yp[rt.y * p.y_seq_stride + row_offset(r, p.headdim, p.y_head_stride, p.y_dim_stride)] = from_f<T>(y);
  });
}

// Grid: (tiles_per_group * ngroups, batch, chunks). Block: kThreads = kRows rows x TPN threads.
template <typename T, typename S, int NPT, int TPN, bool SCALAR_A, int MODE>
__global__ void __launch_bounds__(kThreads, 1) ssm_scan_kernel(const ScanArgs a) {
  using Tl = Tile<NPT, TPN>;
  __shared__ ScanSmem<NPT, TPN> sm;
  const md_ssm_params& p = a.p;
  const int64_t b = blockIdx.y, g = blockIdx.x / a.tiles_per_group, c = blockIdx.z;
  const int64_t row0 = (blockIdx.x % a.tiles_per_group) * Tl::kRows;
  const int rl = threadIdx.x / TPN, q = threadIdx.x % TPN;
  const int64_t rg = row0 + rl, r = g * a.rows_per_group + rg, head = r / p.headdim;
  const bool row_ok = rg < a.rows_per_group;
  const int64_t t_begin = MODE == kFull ? 0 : c * a.chunk_len;
  const int64_t t_end = MODE == kFull ? p.seqlen : min(p.seqlen, t_begin + a.chunk_len);

  // The block's state row (state_rows). In the single walk it goes through shared memory: held in a register
  // across the walk it cost up to 14 more registers (one resident block less per multiprocessor); the other
  // passes read it where they use it (measured: their register counts do not change).
  __shared__ int64_t s_row;
  if (MODE == kFull) {
    if (threadIdx.x == 0) s_row = state_row(p.state_rows, b);
    __syncthreads();
  }
  float h[NPT], A2[NPT], P[NPT];
#pragma unroll
  for (int j = 0; j < NPT; ++j) {
    const int n = Tl::state_index(q, j);
    const bool ok = row_ok && n < p.dstate;
    A2[j] = (!SCALAR_A && ok) ? load_any(p.A, p.param_dtype, head * p.A_head_stride + n * p.A_state_stride) * kLog2e : 0.f;
    h[j] = 0.f;
    P[j] = 1.f;
    if (!ok) continue;
    if (MODE == kFromCarry) {
      h[j] = a.ws_h[ws_index(a, c, b, r, n)];
    } else if (p.state_in && (MODE == kFull || c == 0)) {
      const int64_t sb = MODE == kFull ? s_row : state_row(p.state_rows, b);
      h[j] = to_f(static_cast<const S*>(p.state_in)[sb * p.state_in_batch_stride +
          row_offset(r, p.headdim, p.state_in_head_stride, p.state_in_dim_stride) + n * p.state_in_state_stride]);
    }
  }
  for (int64_t t0 = t_begin; t0 < t_end; t0 += Tl::kTC) {
    const int tc = static_cast<int>(t_end - t0 < Tl::kTC ? t_end - t0 : Tl::kTC);
    stage_chunk<T, NPT, TPN, SCALAR_A>(a, sm, b, g, row0, t0, tc);
    __syncthreads();
#pragma unroll kTUnroll
    for (int t = 0; t < tc; ++t) {  // unrolled: independent steps' y reductions overlap
      const float dtx = sm.dtx[rl][t], decay = sm.decay[rl][t];
      float acc = 0.f;
#pragma unroll
      for (int j4 = 0; j4 < NPT; j4 += 4) {
        const int n = Tl::state_index(q, j4);
        const float4 Bv = *reinterpret_cast<const float4*>(&sm.B[t][n]);
        const float Bs[4] = {Bv.x, Bv.y, Bv.z, Bv.w};
        float Cs[4] = {0.f, 0.f, 0.f, 0.f};
        if (MODE != kLocalEnd) {
          const float4 Cv = *reinterpret_cast<const float4*>(&sm.C[t][n]);
          Cs[0] = Cv.x; Cs[1] = Cv.y; Cs[2] = Cv.z; Cs[3] = Cv.w;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float dA = SCALAR_A ? decay : exp2f(decay * A2[j4 + k]);
          h[j4 + k] = fmaf(dA, h[j4 + k], dtx * Bs[k]);
          if (MODE == kLocalEnd) P[j4 + k] *= dA;
          else acc = fmaf(Cs[k], h[j4 + k], acc);
        }
      }
      if (MODE != kLocalEnd) {
        acc = group_sum<TPN>(acc);
        if (q == 0) sm.y[rl][t] = acc;
      }
    }
    __syncthreads();
    if (MODE != kLocalEnd) write_chunk<T, NPT, TPN>(a, sm, b, g, row0, t0, tc);
    __syncthreads();
  }
  if (!row_ok) return;
  if (MODE == kLocalEnd) {  // chunk c's end state (from zeros, but from state_in for c == 0) enters chunk c + 1
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
      const int n = Tl::state_index(q, j);
      if (n < p.dstate) {
        a.ws_h[ws_index(a, c + 1, b, r, n)] = h[j];
        a.ws_P[ws_index(a, c + 1, b, r, n)] = P[j];
      }
    }
    return;
  }
  if (p.state_out == nullptr || (MODE == kFromCarry && c != a.nchunks - 1)) return;
  const int64_t sb = MODE == kFull ? s_row : state_row(p.state_rows, b);
#pragma unroll
  for (int j = 0; j < NPT; ++j) {
    const int n = Tl::state_index(q, j);
    if (n < p.dstate) {
      static_cast<S*>(p.state_out)[sb * p.state_out_batch_stride +
          row_offset(r, p.headdim, p.state_out_head_stride, p.state_out_dim_stride) + n * p.state_out_state_stride] =
          from_f<S>(h[j]);
    }
  }
}

// Between the passes of the time-parallel form: one thread per (batch, row, state) element walks the
// chunks, turning chunk-local end states into the states entering each chunk (ws_h[c], c >= 1), and
// copies state_in into ws_h[0], so that the last pass never reads state_in (state_out may alias it).
template <typename S>
__global__ void ssm_carry_kernel(const ScanArgs a) {
  const md_ssm_params& p = a.p;
  const int64_t rows = p.nheads * p.headdim;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.batch * rows * p.dstate) return;
  const int n = static_cast<int>(i % p.dstate);
  const int64_t r = (i / p.dstate) % rows, b = i / (p.dstate * rows);
  const int64_t sb = state_row(p.state_rows, b);
  a.ws_h[ws_index(a, 0, b, r, n)] = p.state_in ? to_f(static_cast<const S*>(p.state_in)[sb * p.state_in_batch_stride +
      row_offset(r, p.headdim, p.state_in_head_stride, p.state_in_dim_stride) + n * p.state_in_state_stride]) : 0.f;
  float h = a.ws_h[ws_index(a, 1, b, r, n)];  // chunk 0 started from state_in: already exact
  for (int64_t c = 2; c < a.nchunks; ++c) {
    const int64_t k = ws_index(a, c, b, r, n);
    h = fmaf(a.ws_P[k], h, a.ws_h[k]);
    a.ws_h[k] = h;
  }
}

template <typename T, typename S, int NPT, int TPN, int MODE>
cudaError_t launch_mode(const ScanArgs& a, dim3 grid, cudaStream_t stream) {
  if (a.p.A_state_stride == 0) {
    ssm_scan_kernel<T, S, NPT, TPN, true, MODE><<<grid, kThreads, 0, stream>>>(a);
  } else {
    ssm_scan_kernel<T, S, NPT, TPN, false, MODE><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T, typename S, int NPT, int TPN>
cudaError_t launch_bucket(ScanArgs a, cudaStream_t stream) {
  constexpr int rows = Tile<NPT, TPN>::kRows;
  a.tiles_per_group = (a.rows_per_group + rows - 1) / rows;
  const unsigned blocks = static_cast<unsigned>(a.tiles_per_group * a.p.ngroups), batch = static_cast<unsigned>(a.p.batch);
  if (a.nchunks <= 1) return launch_mode<T, S, NPT, TPN, kFull>(a, dim3(blocks, batch, 1), stream);
  cudaError_t err = launch_mode<T, S, NPT, TPN, kLocalEnd>(a, dim3(blocks, batch, unsigned(a.nchunks - 1)), stream);
  if (err != cudaSuccess) return err;
  const int64_t elems = a.p.batch * a.p.nheads * a.p.headdim * a.p.dstate;
  ssm_carry_kernel<S><<<static_cast<unsigned>((elems + 255) / 256), 256, 0, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return launch_mode<T, S, NPT, TPN, kFromCarry>(a, dim3(blocks, batch, unsigned(a.nchunks)), stream);
}

// dstate buckets: <= 16, 64, 128, 256 (states per thread x threads per row).
template <typename T, typename S>
cudaError_t launch_typed(const ScanArgs& a, cudaStream_t stream) {
  const int64_t ds = a.p.dstate;
  if (ds <= 16) return launch_bucket<T, S, 4, 4>(a, stream);
  if (ds <= 64) return launch_bucket<T, S, 8, 8>(a, stream);
  if (ds <= 128) return launch_bucket<T, S, 16, 8>(a, stream);
  return launch_bucket<T, S, 16, 16>(a, stream);
}

}  // namespace
}  // namespace md

namespace md {
namespace {

// Rows of one block in the dstate bucket launch_typed picks.
int64_t rows_per_block(int64_t dstate) { return dstate <= 16 ? 32 : dstate <= 128 ? 16 : 8; }

// How many chunks the time-parallel form cuts the sequence into: enough blocks to fill the GPU (about
// four resident per multiprocessor), chunks of at least kMinChunk steps, scratch at most kMaxWorkspace.
// 1 means the plain single walk (short sequences, or batch/rows already fill the GPU).
int64_t plan_chunks(const md_ssm_params* p) {
  constexpr int64_t kMinChunk = 64, kMaxWorkspace = int64_t(256) << 20;
  if (p->seqlen < 3 * kMinChunk || p->batch == 0) return 1;
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);  // unreadable: an H100-sized GPU
  const int64_t rows_per_group = (p->nheads / p->ngroups) * p->headdim, bpr = rows_per_block(p->dstate);
  const int64_t blocks = (rows_per_group + bpr - 1) / bpr * p->ngroups * p->batch;
  int64_t n = (4 * sms + blocks - 1) / blocks;
  n = std::min(n, p->seqlen / kMinChunk);
  const int64_t per_chunk = 2 * p->batch * p->nheads * p->headdim * p->dstate * int64_t(sizeof(float));
  n = std::min(n, kMaxWorkspace / per_chunk);
  return n >= 3 ? n : 1;
}

size_t workspace_bytes(const md_ssm_params* p, int64_t nchunks) {
  return nchunks <= 1 ? 0 : size_t(2 * nchunks * p->batch * p->nheads * p->headdim * p->dstate) * sizeof(float);
}

// The folded gated norm (md_ssm_params.norm_*) after a form that does not fold it itself, on the gated y as
// stored: y <- y * norm_weight, norm_sumsq <- sum over the head of y^2. Grid (seqlen, ceil(nheads / 4), batch); a
// warp a (b, t, h), its lanes striding over headdim.
template <typename T>
__global__ void __launch_bounds__(128) fold_norm_kernel(const md_ssm_params p) {
  const int64_t t = blockIdx.x, h = blockIdx.y * 4 + threadIdx.x / 32, b = blockIdx.z;
  if (h >= p.nheads) return;  // whole warps: the shuffles below see all 32 lanes
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + t * p.y_seq_stride + h * p.y_head_stride;
  const T* w = static_cast<const T*>(p.norm_weight) + h * p.headdim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x % 32; i < p.headdim; i += 32) {
    const float g = to_f(y[i * p.y_dim_stride]);
    ss = fmaf(g, g, ss);
    y[i * p.y_dim_stride] = from_f<T>(g * to_f(w[i]));
  }
  ss = group_sum<32>(ss);
  if (threadIdx.x % 32 == 0) {
    static_cast<float*>(p.norm_sumsq)[b * p.norm_sumsq_batch_stride + t * p.norm_sumsq_seq_stride + h] = ss;
  }
}

cudaError_t launch_fold_norm(const md_ssm_params& p, cudaStream_t stream) {
  if (p.seqlen == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.seqlen), static_cast<unsigned>((p.nheads + 3) / 4),
                  static_cast<unsigned>(p.batch));
  return MD_DISPATCH_DTYPE(p.x_dtype, T, [&] {
    fold_norm_kernel<T><<<grid, 128, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

// Every form but the SSD one (md_launch_ssm_scan_ws): Mamba1's walks, else the recurrence (time-parallel where the
// workspace allows).
cudaError_t launch_scan_form(const md_ssm_params* p, void* workspace, size_t workspace_size, cudaStream_t stream) {
  if (mamba1_walk_eligible(*p)) {  // a thread a channel where that fills the GPU, else states split over lanes
    const int64_t nchunks = mamba1_walk_chunks(*p);
    if (nchunks == 1) return launch_mamba1_walk(*p, 1, nullptr, stream);
    if (nchunks > 1 && workspace != nullptr && workspace_size >= mamba1_walk_workspace_bytes(*p, nchunks)) {
      return launch_mamba1_walk(*p, nchunks, workspace, stream);
    }
    return launch_mamba1_split(*p, mamba1_split_lanes(*p), stream);
  }
  ScanArgs a{};
  a.p = *p;
  a.rows_per_group = (p->nheads / p->ngroups) * p->headdim;
  a.clamp_dt = clamps_dt(*p);
  a.rows_fastest = (p->x_dim_stride == 1 || (p->headdim == 1 && p->x_head_stride == 1)) ? 1 : 0;
  a.b_state_fastest = p->B_state_stride == 1 ? 1 : 0;
  a.nchunks = 1;
  const int64_t nchunks = plan_chunks(p);
  if (workspace != nullptr && nchunks > 1 && workspace_size >= workspace_bytes(p, nchunks)) {
    a.nchunks = nchunks;
    a.chunk_len = (p->seqlen + nchunks - 1) / nchunks;
    a.ws_h = static_cast<float*>(workspace);
    a.ws_P = a.ws_h + workspace_bytes(p, nchunks) / (2 * sizeof(float));
  }
  return MD_DISPATCH_DTYPE(p->x_dtype, T, [&] {
    if (p->state_dtype == MD_FLOAT32) return launch_typed<T, float>(a, stream);
    return launch_typed<T, T>(a, stream);
  });
}

}  // namespace
}  // namespace md

extern "C" size_t md_ssm_scan_workspace_size(const md_ssm_params* p) {
  if (p == nullptr) return 0;
  if (md::mamba1_walk_eligible(*p)) return md::mamba1_walk_workspace_bytes(*p, md::mamba1_walk_chunks(*p));
  return md::ssd_eligible(*p) ? md::ssd_workspace_bytes(*p) : md::workspace_bytes(p, md::plan_chunks(p));
}

extern "C" int md_ssm_scan_split_lanes(const md_ssm_params* p) {
  if (p == nullptr || !md::mamba1_walk_eligible(*p) || md::mamba1_walk_chunks(*p) != 0) return 0;
  return md::mamba1_split_lanes(*p);
}

extern "C" cudaError_t md_launch_ssm_scan(const md_ssm_params* p, cudaStream_t stream) {
  return md_launch_ssm_scan_ws(p, nullptr, 0, stream);
}

extern "C" cudaError_t md_launch_ssm_scan_ws(const md_ssm_params* p, void* workspace, size_t workspace_size,
                                             cudaStream_t stream) {
  MD_CHECK(p != nullptr, "ssm_scan: params is NULL");
  MD_CHECK(p->batch >= 0 && p->seqlen >= 0, "ssm_scan: negative size");
  MD_CHECK(p->nheads > 0 && p->headdim > 0 && p->ngroups > 0, "ssm_scan: nheads, headdim, ngroups must be > 0");
  MD_CHECK(p->dstate > 0 && p->dstate <= MD_MAX_DSTATE, "ssm_scan: dstate must be in 1..256");
  MD_CHECK(p->nheads % p->ngroups == 0, "ssm_scan: nheads must be a multiple of ngroups");
  MD_CHECK(p->x && p->dt && p->A && p->B && p->C && p->y, "ssm_scan: x, dt, A, B, C, y are required");
  MD_CHECK(md::valid_dtype(p->param_dtype) && md::valid_dtype(p->state_dtype), "ssm_scan: bad dtype code");
  MD_CHECK(p->state_dtype == MD_FLOAT32 || p->state_dtype == p->x_dtype,
           "ssm_scan: state dtype must be float32 or the dtype of x");
  MD_CHECK(p->batch <= 65535, "ssm_scan: batch must be <= 65535");
  MD_CHECK(!p->norm_weight || (p->norm_sumsq && p->z && p->headdim > 1 && p->seqlen < (int64_t{1} << 31)),
           "ssm_scan: norm_weight (the folded gated norm) needs norm_sumsq, z and the Mamba2 layout");
  if (p->batch == 0) return cudaSuccess;
  if (workspace != nullptr && md::ssd_eligible(*p) && workspace_size >= md::ssd_workspace_bytes(*p)) {
    return md::launch_ssd(*p, workspace, stream);  // folds the gated norm itself
  }
  const cudaError_t err = md::launch_scan_form(p, workspace, workspace_size, stream);
  return err != cudaSuccess || p->norm_weight == nullptr ? err : md::launch_fold_norm(*p, stream);
}
