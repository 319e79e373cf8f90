// mamba1_step.cu -- the fused Mamba1 decode step after x_proj: dt_proj + softplus + selective state update
// + D skip + SiLU(z) gate, on state rows of a slot pool. See gemv.h (md_mamba1_step_params) and the
// reference selective_state_update_ref (mamba_deploy/ops).
//
// Three forms: for small batches the dt_proj dot products are done here, each dt_proj chunk serving up to 8
// rows (mamba1_step_kernel); for larger batches the caller computes dt with one GEMM (dt_proj read once
// for every row) and passes it (p.dt), and the step is a pure stream over the state (mamba1_step_dt_kernel);
// or, asked for with p.dt_tc (16-bit), dt_proj runs here on tensor cores for 8 rows a block and the state streams
// as in the GEMM form (mamba1_step_tc_kernel): one launch less a layer than the GEMM form.
#include <cstdint>

#include "common.cuh"
#include "gemv.h"
#include "mma_sync.cuh"
#include "vec.cuh"

namespace md {
namespace {

constexpr int kStepThreads = 128;
constexpr int kMaxRank = 1024;
constexpr int kMaxState = 16;


// Mamba1. Grid: (ceil(dim / 8), ceil(batch / RB)); a half-warp per channel (lane n owns state n) for RB
// batch rows: each 16-byte chunk of the channel's dt_proj row is loaded once and serves the RB rows' dot
// products, so dt_proj is read ceil(batch / RB) times per step instead of batch times. Each row's arithmetic
// is that of one row alone (same order), so results do not depend on RB or on the other rows. The RB rows'
// states are loaded right after the wait, so their latency overlaps the gathering of the shared inputs.
template <typename T, typename S, int RB>
__global__ void __launch_bounds__(kStepThreads) mamba1_step_kernel(const md_mamba1_step_params p) {
  pdl_release();
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
  // The weights (no kernel writes them) are loaded before the wait: dt_proj's first chunk, A, dt_bias, D.
  const T* wrow = static_cast<const T*>(p.wdt) + dd * RP;
  float w_first[8] = {};
  if (n < R8) load8(wrow + n * 8, w_first);
  const float bias = p.dt_bias[dd], A = n < N ? p.A[dd * N + n] : 0.f, Dd = p.D[dd];
  pdl_wait();
  // The states first: their loads are in flight while the shared inputs below are gathered.
  S* state = static_cast<S*>(p.state) + dd * p.state_dim_stride + n;  // + row * state_batch_stride
  int srow[RB];  // state rows (a pool of < 2^31 rows)
  float h0[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    if (r >= rows) continue;
    srow[r] = static_cast<int>(state_row(p.state_rows, b0 + r));
    h0[r] = n < N ? to_f(state[srow[r] * p.state_batch_stride]) : 0.f;
  }
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
  float dt[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) dt[r] = 0.f;
  // dt_proj chunk r8 (8 floats of this channel's row) times the RB rows' dt inputs.
  auto dot_chunk = [&](const float (&wf)[8], int r8) {
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const float4 lo = *reinterpret_cast<const float4*>(s_dt + r * RP + r8 * 8);
      const float4 hi = *reinterpret_cast<const float4*>(s_dt + r * RP + r8 * 8 + 4);
      const float in[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) dt[r] = fmaf(wf[j], in[j], dt[r]);
    }
  };
  if (n < R8) dot_chunk(w_first, n);
  for (int r8 = n + 16; r8 < R8; r8 += 16) {
    float wf[8];
    load8(wrow + r8 * 8, wf);
    dot_chunk(wf, r8);
  }
  float y_mine = 0.f;  // lane r < rows: C . state of row r (every lane of the half-warp gets the same sum)
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    if (r >= rows) continue;
    float v = group_sum<16>(dt[r]) + bias;
    v = softplus_exact(v);
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
  const float y = fmaf(Dd, x, y_mine) * (z / (1.f + expf(-z)));
  static_cast<T*>(p.y)[(b0 + n) * p.y_row_stride + dd] = from_f<T>(y);
}

// Mamba1 with dt given (dt = dt_proj(x_proj(x)[:, :dt_rank]) computed beforehand by a GEMM, for batches
// where that reads dt_proj once for all rows): a thread per (batch row, channel) streams the channel's
// dstate states, with B and C of its row from shared memory (dstate 16 with aligned rows: the faster
// mamba1_step_dt4_kernel below). Grid: (ceil(dim / kStepThreads), batch).
template <typename T, typename S>
__global__ void __launch_bounds__(kStepThreads) mamba1_step_dt_kernel(const md_mamba1_step_params p) {
  pdl_release();
  pdl_wait();
  __shared__ float s_B[kMaxState], s_C[kMaxState];
  const int64_t b = blockIdx.y, d0 = static_cast<int64_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  const int N = static_cast<int>(p.dstate);
  const bool ok = d0 < p.dim;
  const int64_t d = ok ? d0 : 0;  // out-of-range threads load channel 0 and store nothing
  // Every global load of the thread is issued before the barrier, so their latencies overlap.
  S* st = static_cast<S*>(p.state) + state_row(p.state_rows, b) * p.state_batch_stride + d * p.state_dim_stride;
  float h[kMaxState], A[kMaxState];
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) {
    h[n] = n < N ? to_f(st[n]) : 0.f;
    A[n] = n < N ? p.A[d * N + n] : 0.f;
  }
  float v = to_f(static_cast<const T*>(p.dt)[b * p.dt_row_stride + d]) + p.dt_bias[d];
  const float x = to_f(static_cast<const T*>(p.x)[b * p.x_row_stride + d]);
  const float z = to_f(static_cast<const T*>(p.z)[b * p.z_row_stride + d]);
  const float Dd = p.D[d];
  if (threadIdx.x < N) {
    const T* xd = static_cast<const T*>(p.xdbl) + b * p.xdbl_row_stride + p.dt_rank;
    s_B[threadIdx.x] = to_f(xd[threadIdx.x]);
    s_C[threadIdx.x] = to_f(xd[N + threadIdx.x]);
  }
  __syncthreads();
  if (!ok) return;
  v = softplus_exact(v);
  const float vx = v * x;
  float y = 0.f;
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) {
    if (n < N) {
      h[n] = fmaf(h[n], expf(v * A[n]), vx * s_B[n]);
      y = fmaf(h[n], s_C[n], y);
    }
  }
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) if (n < N) st[n] = from_f<S>(h[n]);
  y = fmaf(Dd, x, y) * (z / (1.f + expf(-z)));
  static_cast<T*>(p.y)[b * p.y_row_stride + d] = from_f<T>(y);
}

// mamba1_step_dt_kernel for dstate 16 with aligned state rows: 4 lanes a (batch row, channel), lane q holding
// states 4q .. 4q + 3, so a warp's state loads and stores are 8 channels' rows back to back (512 contiguous
// bytes of float32 state; the one-thread-a-channel form's 16-byte accesses were 64 bytes apart). y is the
// sum of the 4 lanes' partial sums (two shuffles). A thread takes RB batch rows of its channel (4 for a 16-bit
// state above batch 32, whose 8 bytes a lane a row would otherwise leave half a float32 state's bytes in flight);
// a row's arithmetic does not depend on RB. Grid: (ceil(dim / 32), ceil(batch / RB)).
template <typename T, typename S, int RB>
__global__ void __launch_bounds__(kStepThreads) mamba1_step_dt4_kernel(const md_mamba1_step_params p) {
  pdl_release();
  const int q = threadIdx.x & 3;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * RB;
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * (kStepThreads / 4) + (threadIdx.x >> 2);
  const bool ok = d0 < p.dim;
  const int64_t d = ok ? d0 : 0;  // out-of-range lanes compute on channel 0 and store nothing (shuffles below)
  float A[4];
  load4(p.A + d * kMaxState + 4 * q, A);
  const float bias = p.dt_bias[d], Dd = p.D[d];
  pdl_wait();
  __shared__ float s_B[RB][kMaxState], s_C[RB][kMaxState];
  float h[RB][4], v[RB], x[RB], z[RB];
  S* st[RB];
  // Rows past the batch compute on its last row and store nothing. The RB == 1 tests are for the compiler: with
  // them the one-row form's machine code is the same as before rows a thread (SASS compared), without them not.
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int64_t b = RB == 1 || b0 + r < p.batch ? b0 + r : p.batch - 1;
    st[r] = static_cast<S*>(p.state) + state_row(p.state_rows, b) * p.state_batch_stride + d * p.state_dim_stride +
            4 * q;
    load4(st[r], h[r]);
    v[r] = to_f(static_cast<const T*>(p.dt)[b * p.dt_row_stride + d]) + bias;
    x[r] = to_f(static_cast<const T*>(p.x)[b * p.x_row_stride + d]);
    z[r] = to_f(static_cast<const T*>(p.z)[b * p.z_row_stride + d]);
  }
  if (threadIdx.x < RB * kMaxState) {
    const unsigned r = RB == 1 ? 0 : threadIdx.x / kMaxState, n = RB == 1 ? threadIdx.x : threadIdx.x % kMaxState;
    const int64_t b = RB == 1 || b0 + r < p.batch ? b0 + r : p.batch - 1;
    const T* xd = static_cast<const T*>(p.xdbl) + b * p.xdbl_row_stride + p.dt_rank;
    s_B[r][n] = to_f(xd[n]);
    s_C[r][n] = to_f(xd[kMaxState + n]);
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    if (RB > 1 && b0 + r >= p.batch) break;  // uniform over the block
    const float dt = softplus_exact(v[r]), vx = dt * x[r];
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      h[r][j] = fmaf(h[r][j], expf(dt * A[j]), vx * s_B[r][4 * q + j]);
      y = fmaf(h[r][j], s_C[r][4 * q + j], y);
    }
    if (ok) store4(st[r], h[r]);
    y += __shfl_xor_sync(0xffffffffu, y, 1);
    y += __shfl_xor_sync(0xffffffffu, y, 2);
    if (!ok || q != 0) continue;
    y = fmaf(Dd, x[r], y) * (z[r] / (1.f + expf(-z[r])));
    static_cast<T*>(p.y)[(b0 + r) * p.y_row_stride + d] = from_f<T>(y);
  }
}

// Mamba1 with dt_proj on tensor cores (p.dt_tc; 16-bit dtypes, dstate 16, dt_rank % 8 == 0, 16-byte aligned
// xdbl, state and A rows: tc_form_ok): a block steps kTcChannels channels for kTcRows batch rows. dt of the tile
// is one small product on mma.sync (the channels' dt_proj rows as A, the rows' x_dt as B, mma_sync.cuh's
// 16-byte units), so each dt_proj row is read once for kTcRows rows, and dt stays in float32 (the GEMM form
// rounds it to the dtype first). Warp w < kTcSplit takes the k32 steps s with s % kTcSplit == w; the partial
// products are added in warp order, so a row's dt does not depend on the other rows. Then the state as in
// mamba1_step_dt4_kernel (same arithmetic, as many threads a row and channel): 4 lanes a (row, channel), lane q
// holding states 4q .. 4q + 3, a warp 8 channels of one row. Grid: (ceil(dim / kTcChannels), ceil(batch / kTcRows)).
constexpr int kTcChannels = 16;  // one m16 tile
constexpr int kTcRows = 8;       // the mma's n
constexpr int kTcThreads = 4 * kTcChannels * kTcRows;
constexpr int kTcSplit = 4;      // warps on the product, each a quarter of the k32 steps
constexpr int kTcPre = 2;        // k32 steps a warp loads before the wait: dt_rank <= 256 all before it

template <typename T>
__device__ __forceinline__ uint4 unit_or_zero(const T* row, bool in) {
  return in ? *reinterpret_cast<const uint4*>(row) : make_uint4(0u, 0u, 0u, 0u);
}

// The 16-byte units at k of dt_proj rows c0 + g and c0 + g + 8 (zeros past dim or dt_rank): an mma's A operand.
template <typename T>
__device__ __forceinline__ void dt_proj_units(const md_mamba1_step_params& p, int64_t c0, int g, int k,
                                              uint4 (&u)[2]) {
  const T* wdt = static_cast<const T*>(p.wdt);  // rows of dt_rank elements (% 8 == 0: no padding)
  const int64_t R = p.dt_rank;
  u[0] = unit_or_zero(wdt + (c0 + g) * R + k, c0 + g < p.dim && k < R);
  u[1] = unit_or_zero(wdt + (c0 + g + 8) * R + k, c0 + g + 8 < p.dim && k < R);
}

// The dt_proj product of warp `w` (< kTcSplit): its k32 steps' partial dt of the tile's 16 channels x 8 rows into
// s_part[w] (rows x channels). w_pre: its first kTcPre steps' units, loaded before the wait.
template <typename T>
__device__ __forceinline__ void tc_dt_part(const md_mamba1_step_params& p, const uint4 (&w_pre)[kTcPre][2], int64_t c0,
                                           int64_t b0, int rows, int w, float (*s_part)[kTcChannels]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int R = static_cast<int>(p.dt_rank), steps = (R + 31) / 32;
  const T* x_dt = static_cast<const T*>(p.xdbl) + (b0 + (g < rows ? g : 0)) * p.xdbl_row_stride;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < kTcPre; ++i) {
    const int k = 32 * (w + kTcSplit * i) + 8 * t;
    if (w + kTcSplit * i >= steps) break;
    const uint4 xu = unit_or_zero(x_dt + k, g < rows && k < R);
    mma_units<T>(acc, w_pre[i][0], w_pre[i][1], xu, 0);
    mma_units<T>(acc, w_pre[i][0], w_pre[i][1], xu, 1);
  }
  for (int s = w + kTcSplit * kTcPre; s < steps; s += kTcSplit) {
    const int k = 32 * s + 8 * t;
    uint4 w[2];
    dt_proj_units<T>(p, c0, g, k, w);
    const uint4 xu = unit_or_zero(x_dt + k, g < rows && k < R);
    mma_units<T>(acc, w[0], w[1], xu, 0);
    mma_units<T>(acc, w[0], w[1], xu, 1);
  }
  // c[0], c[1]: channel g, rows 2t, 2t + 1; c[2], c[3]: channel g + 8
  s_part[2 * t][g] = acc[0];
  s_part[2 * t + 1][g] = acc[1];
  s_part[2 * t][g + 8] = acc[2];
  s_part[2 * t + 1][g + 8] = acc[3];
}

template <typename T, typename S>
__global__ void __launch_bounds__(kTcThreads, 2) mamba1_step_tc_kernel(const md_mamba1_step_params p) {
  pdl_release();
  __shared__ float s_part[kTcSplit][kTcRows][kTcChannels];
  __shared__ float s_BC[kTcRows][2 * kMaxState];  // B, C of each row
  const int warp = threadIdx.x >> 5, q = threadIdx.x & 3, cl = (threadIdx.x >> 2) % kTcChannels;
  const int r = threadIdx.x / (4 * kTcChannels);  // this thread's row of the tile
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTcChannels, b0 = static_cast<int64_t>(blockIdx.y) * kTcRows;
  const int rows = static_cast<int>(p.batch - b0 < kTcRows ? p.batch - b0 : kTcRows);  // uniform over the block
  const int R = static_cast<int>(p.dt_rank);  // % 8 == 0: wdt rows of R elements, no padding
  // The weights (no kernel writes them) before the wait: a product warp's first dt_proj units; A, dt_bias, D.
  uint4 w_pre[kTcPre][2];
  if (warp < kTcSplit) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int i = 0; i < kTcPre; ++i) dt_proj_units<T>(p, c0, g, 32 * (warp + kTcSplit * i) + 8 * t, w_pre[i]);
  }
  const bool ok = c0 + cl < p.dim && r < rows;
  const int64_t d = c0 + cl < p.dim ? c0 + cl : 0;  // lanes out of range compute on channel 0 (shuffles below)
  float A[4];
  load4(p.A + d * kMaxState + 4 * q, A);
  const float bias = p.dt_bias[d], Dd = p.D[d];
  pdl_wait();
  const int64_t b = b0 + (r < rows ? r : 0);
  if (threadIdx.x < kTcRows * 2 * kMaxState) {
    const int rr = threadIdx.x / (2 * kMaxState), k = threadIdx.x % (2 * kMaxState);
    s_BC[rr][k] = rr < rows ? to_f(static_cast<const T*>(p.xdbl)[(b0 + rr) * p.xdbl_row_stride + R + k]) : 0.f;
  }
  // The thread's state, x and z: their loads in flight during the product.
  S* st = static_cast<S*>(p.state) + state_row(p.state_rows, b) * p.state_batch_stride + d * p.state_dim_stride +
          4 * q;
  float h[4];
  load4(st, h);
  const float x = to_f(static_cast<const T*>(p.x)[b * p.x_row_stride + d]);
  const float z = to_f(static_cast<const T*>(p.z)[b * p.z_row_stride + d]);
  if (warp < kTcSplit) tc_dt_part<T>(p, w_pre, c0, b0, rows, warp, s_part[warp]);
  __syncthreads();
  float v = s_part[0][r][cl];
#pragma unroll
  for (int w = 1; w < kTcSplit; ++w) v += s_part[w][r][cl];
  v = softplus_exact(v + bias);
  const float vx = v * x;
  float y = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    h[j] = fmaf(h[j], expf(v * A[j]), vx * s_BC[r][4 * q + j]);
    y = fmaf(h[j], s_BC[r][kMaxState + 4 * q + j], y);
  }
  if (ok) store4(st, h);
  y += __shfl_xor_sync(0xffffffffu, y, 1);
  y += __shfl_xor_sync(0xffffffffu, y, 2);
  if (!ok || q != 0) return;
  static_cast<T*>(p.y)[b * p.y_row_stride + d] = from_f<T>(fmaf(Dd, x, y) * (z / (1.f + expf(-z))));
}

template <typename T, typename S, int RB>
cudaError_t launch_step_rows(const md_mamba1_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.dim + 7) / 8), static_cast<unsigned>((p.batch + RB - 1) / RB));
  const size_t smem = sizeof(float) * RB * ((p.dt_rank + 7) / 8 * 8 + 2 * kMaxState + 2 * 8);
  return launch_pdl(mamba1_step_kernel<T, S, RB>, grid, kStepThreads, smem, s, p);
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

template <typename T, typename S>
cudaError_t launch_step_dt(const md_mamba1_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.dim + kStepThreads - 1) / kStepThreads), static_cast<unsigned>(p.batch));
  const bool vec = p.dstate == kMaxState && p.state_dim_stride % 8 == 0 && p.state_batch_stride % 8 == 0 &&
                   is_aligned(p.state) && is_aligned(p.A);
  if (vec) {
    const int64_t cblocks = (p.dim + kStepThreads / 4 - 1) / (kStepThreads / 4);
    const auto grid_rb = [&](int rows) {
      return dim3(static_cast<unsigned>(cblocks), static_cast<unsigned>((p.batch + rows - 1) / rows));
    };
    if constexpr (sizeof(S) == 2) {  // a 16-bit state: 4 rows a thread give a float32 state's bytes in flight
      if (p.batch > 32) return launch_pdl(mamba1_step_dt4_kernel<T, S, 4>, grid_rb(4), kStepThreads, 0, s, p);
    }
    return launch_pdl(mamba1_step_dt4_kernel<T, S, 1>, grid_rb(1), kStepThreads, 0, s, p);
  }
  return launch_pdl(mamba1_step_dt_kernel<T, S>, grid, kStepThreads, 0, s, p);
}

// Whether the tensor-core form takes p: dstate 16, dt_rank % 8 == 0 (a 16-byte unit of x_dt never reaches B),
// 16-byte units of xdbl rows and wdt rows, state and A rows as mamba1_step_dt4_kernel reads them.
bool tc_form_ok(const md_mamba1_step_params& p) {
  return p.dt == nullptr && p.dstate == kMaxState && p.dt_rank % 8 == 0 && p.xdbl_row_stride % 8 == 0 &&
         is_aligned(p.xdbl) && is_aligned(p.wdt) && p.state_dim_stride % 8 == 0 && p.state_batch_stride % 8 == 0 &&
         is_aligned(p.state) && is_aligned(p.A);
}

template <typename T>
cudaError_t launch_step_tc(const md_mamba1_step_params& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.dim + kTcChannels - 1) / kTcChannels),
                  static_cast<unsigned>((p.batch + kTcRows - 1) / kTcRows));
  if (p.state_dtype == MD_FLOAT32) return launch_pdl(mamba1_step_tc_kernel<T, float>, grid, kTcThreads, 0, s, p);
  return launch_pdl(mamba1_step_tc_kernel<T, T>, grid, kTcThreads, 0, s, p);
}

template <typename T>
cudaError_t launch_step_typed(const md_mamba1_step_params& p, cudaStream_t s) {
  if (p.dt != nullptr) return p.state_dtype == MD_FLOAT32 ? launch_step_dt<T, float>(p, s) : launch_step_dt<T, T>(p, s);
  return p.state_dtype == MD_FLOAT32 ? launch_step_state<T, float>(p, s) : launch_step_state<T, T>(p, s);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_mamba1_step(const md_mamba1_step_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "mamba1_step: params is NULL");
  MD_CHECK(p->dstate > 0 && p->dstate <= md::kMaxState, "mamba1_step: dstate must be in 1..16");
  MD_CHECK(p->dt_rank > 0 && p->dt_rank <= md::kMaxRank, "mamba1_step: dt_rank must be in 1..1024");
  MD_CHECK(p->batch >= 0 && p->batch <= 65535 && p->dim >= 0, "mamba1_step: bad batch or dim");
  MD_CHECK(p->x && p->z && p->xdbl && (p->wdt || p->dt) && p->dt_bias && p->A && p->D && p->state && p->y,
           "mamba1_step: every pointer is required (wdt or dt)");
  MD_CHECK(p->dt || md::is_aligned(p->wdt), "mamba1_step: wdt must be 16-byte aligned");
  MD_CHECK(p->state_dtype == MD_FLOAT32 || p->state_dtype == p->dtype, "mamba1_step: state dtype");
  MD_CHECK(!p->dt_tc || (p->dtype != MD_FLOAT32 && md::tc_form_ok(*p)),
           "mamba1_step: the tensor-core form (dt_tc) needs a 16-bit dtype, no dt, dstate 16, dt_rank % 8 == 0 and "
           "16-byte aligned xdbl, wdt, state and A rows");
  if (p->batch == 0 || p->dim == 0) return cudaSuccess;
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_step_typed<float>(*p, stream);
    case MD_FLOAT16:
      return p->dt_tc ? md::launch_step_tc<__half>(*p, stream) : md::launch_step_typed<__half>(*p, stream);
    case MD_BFLOAT16:
      return p->dt_tc ? md::launch_step_tc<__nv_bfloat16>(*p, stream)
                      : md::launch_step_typed<__nv_bfloat16>(*p, stream);
    default: MD_CHECK(false, "mamba1_step: bad dtype");
  }
}