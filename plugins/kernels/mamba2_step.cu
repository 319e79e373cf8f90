// mamba2_step.cu -- the fused Mamba2 decode step (md_launch_mamba2_step): dt + softplus + clamp, the state update
// h = h exp(dt A) + dt x B on state rows of a slot pool, y = C . h + D x, optionally the folded gated norm's
// y * silu(z) * w and its partial sums of squares. See gemv.h (md_mamba2_step_params) and the reference
// selective_state_update_ref (mamba_deploy/ops). Like the GEMV (gemv.cu), it starts with pdl_release() and loads
// its weights (A, D, dt bias) before pdl_wait().
#include <cstdint>

#include "common.cuh"
#include "gemv.h"
#include "vec.cuh"

namespace md {
namespace {

// n consecutive elements of a state row or of B / C <-> floats: UNIT elements an aligned access (4, or 8 for a 16-bit
// type: 16 bytes; n a multiple of UNIT), else (UNIT 1) one at a time.
template <int UNIT, int N, typename E>
__device__ __forceinline__ void load_n(const E* ptr, float (&f)[N]) {
  if constexpr (UNIT == 8 && sizeof(E) == 2) {
#pragma unroll
    for (int q = 0; q < N / 8; ++q) load8_plain(ptr + 8 * q, f + 8 * q);
  } else if constexpr (UNIT >= 4) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q) load4(ptr + 4 * q, f + 4 * q);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) f[j] = to_f(ptr[j]);
  }
}
template <int UNIT, int N, typename E>
__device__ __forceinline__ void store_n(E* ptr, const float (&f)[N]) {
  if constexpr (UNIT == 8 && sizeof(E) == 2) {
#pragma unroll
    for (int q = 0; q < N / 8; ++q) store8(ptr + 8 * q, f + 8 * q);
  } else if constexpr (UNIT >= 4) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q) store4(ptr + 4 * q, f + 4 * q);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) ptr[j] = from_f<E>(f[j]);
  }
}

// mamba2_step_kernel's rows at 16 lanes a row (two rows a warp access; the lane's rows r are lane_row0 + 2 r): the
// state updates, each row's two half sums (states [0, NPL / 2) and [NPL / 2, NPL) of the lane, as two lanes of 32
// hold them), then one reduce-scatter over the 2 kRows sums (common.cuh: group_sum<16>'s pairs, so its bits; 8
// shuffles for 8 sums, not 32), a shuffle for y = half 0 + half 1, and one lane stores each row.
template <typename T, typename S, int NPL, int kRows, int UNIT>
__device__ __forceinline__ void m2_rows_at_16_lanes(const md_mamba2_step_params& p, S* st, float (&hs)[kRows][NPL],
                                                    const float (&Bv)[NPL], const float (&Cv)[NPL],
                                                    const float (&xs)[kRows], float dt, float dA, float Dh,
                                                    int64_t b, int64_t lane_row0, int col) {
  constexpr int kLanes = 16, kSums = 2 * kRows, kPer = kLanes / kSums;  // after the scatter: kPer lanes a sum
  static_assert(kSums <= kLanes, "m2_rows_at_16_lanes: at most a sum a lane");
  float part[kSums];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float dtx = dt * xs[r];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      part[2 * r + e] = 0.f;
#pragma unroll
      for (int j = e * NPL / 2; j < (e + 1) * NPL / 2; ++j) {
        hs[r][j] = fmaf(hs[r][j], dA, dtx * Bv[j]);
        part[2 * r + e] = fmaf(hs[r][j], Cv[j], part[2 * r + e]);
      }
    }
    store_n<UNIT>(st + r * 2 * p.state_dim_stride, hs[r]);
  }
  const float half = rows_sum<kLanes>(part);  // sum i = col / kPer: row i / 2's half i % 2
  const float y = half + __shfl_xor_sync(0xffffffffu, half, kPer);  // with sum i ^ 1's: (half 0 + half 1)
  const int i = col / kPer, r = i / 2;
  if (col % (2 * kPer) != 0) return;  // the first lane of each row's half 0 stores the row
  float x = xs[0];
#pragma unroll
  for (int q = 1; q < kRows; ++q) x = r == q ? xs[q] : x;  // (xs[r] with r a register would spill xs)
  const float out = p.D ? fmaf(Dh, x, y) : y;
  static_cast<T*>(p.y)[b * p.y_row_stride + lane_row0 + 2 * r] = from_f<T>(out);
}

// Mamba2. Grid: (ceil(nheads * headdim / (4 * RPW)), batch); a warp steps RPW consecutive p rows of one head
// (headdim % RPW == 0), LANES lanes a row (32, or 16: a warp access covers two rows), NPL = dstate / LANES states
// a lane of each, all the rows' state loads issued before any arithmetic so that a lane has its rows' loads in
// flight. UNIT (m2_unit): the states and B, C move UNIT elements an aligned access (8: 16 bytes of a 16-bit state).
// Each row's arithmetic is the same whatever RPW, LANES and UNIT (at 16 lanes a lane sums each half of its states
// apart, as two lanes of 32 do, and the halves' sums are added in group_sum<32>'s order: xor 16 .. 2, then 1;
// m2_rows_at_16_lanes). The folded gated norm (norm_weight) runs with RPW 4 and 32 lanes: a block's 16 rows are one
// entry of norm_sumsq.
template <typename T, typename S, int NPL, int RPW, int UNIT, int LANES = 32>
__global__ void __launch_bounds__(128) mamba2_step_kernel(const md_mamba2_step_params p) {
  constexpr int kSub = 32 / LANES, kRows = RPW / kSub;  // rows a warp access covers; rows of a lane
  static_assert(RPW % kSub == 0, "mamba2_step_kernel: RPW a multiple of the rows an access covers");
  pdl_release();
  __shared__ float warp_ss[4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LANES, col = lane % LANES;
  const int64_t b = blockIdx.y, row0 = (static_cast<int64_t>(blockIdx.x) * 4 + warp) * RPW;
  const bool row_ok = row0 < p.nheads * p.headdim;  // always, where folded (launch_m2_typed)
  const int64_t h = row_ok ? row0 / p.headdim : 0, pp = row0 % p.headdim, g = h / (p.nheads / p.ngroups);
  // The weights before the wait (no kernel writes them)
  const float A = p.A[h], Dh = p.D ? p.D[h] : 0.f, dt_bias = p.dt_bias ? p.dt_bias[h] : 0.f;
  const T* norm_w = LANES == 32 ? static_cast<const T*>(p.norm_weight) : nullptr;
  pdl_wait();
  if (!row_ok) return;
  S* st = static_cast<S*>(p.state) + state_row(p.state_rows, b) * p.state_batch_stride + h * p.state_head_stride +
          (pp + sub) * p.state_dim_stride + col * NPL;
  const int64_t lane_row0 = row0 + sub;  // the lane's row r: lane_row0 + r * kSub
  float hs[kRows][NPL], Bv[NPL], Cv[NPL], xs[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) load_n<UNIT>(st + r * kSub * p.state_dim_stride, hs[r]);
  load_n<UNIT>(static_cast<const T*>(p.B) + b * p.B_row_stride + g * p.dstate + col * NPL, Bv);
  load_n<UNIT>(static_cast<const T*>(p.C) + b * p.C_row_stride + g * p.dstate + col * NPL, Cv);
#pragma unroll
  for (int r = 0; r < kRows; ++r) xs[r] = to_f(static_cast<const T*>(p.x)[b * p.x_row_stride + lane_row0 + r * kSub]);
  float dt = to_f(static_cast<const T*>(p.dt)[b * p.dt_row_stride + h]) + dt_bias;
  dt = softplus_exact(dt);
  dt = fminf(fmaxf(dt, static_cast<float>(p.dt_min)), static_cast<float>(p.dt_max));
  const float dA = expf(dt * A);
  if constexpr (kSub == 2) {  // 16 lanes a row (no folded norm): the sums of all the lane's rows at once
    m2_rows_at_16_lanes<T, S, NPL, kRows, UNIT>(p, st, hs, Bv, Cv, xs, dt, dA, Dh, b, lane_row0, col);
    return;
  }
  float ss = 0.f;  // 32 lanes a row from here
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = lane_row0 + r;
    const float dtx = dt * xs[r];
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      hs[r][j] = fmaf(hs[r][j], dA, dtx * Bv[j]);
      y = fmaf(hs[r][j], Cv[j], y);
    }
    y = group_sum<32>(y);
    store_n<UNIT>(st + r * p.state_dim_stride, hs[r]);
    if (p.D) y = fmaf(Dh, xs[r], y);
    if (norm_w) {  // every lane (no branch in the unrolled loop); lane 0's values are the ones kept
      y *= silu(to_f(static_cast<const T*>(p.z)[b * p.z_row_stride + row]));
      ss = fmaf(y, y, ss);
      y *= to_f(norm_w[row]);
    }
    if (col == 0) static_cast<T*>(p.y)[b * p.y_row_stride + row] = from_f<T>(y);
  }
  if (norm_w) {  // every warp of the block is here: its rows are all in range
    if (lane == 0) warp_ss[warp] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
      static_cast<float*>(p.norm_sumsq)[b * p.norm_sumsq_row_stride + blockIdx.x] =
          ((warp_ss[0] + warp_ss[1]) + warp_ss[2]) + warp_ss[3];
    }
  }
}

// The widest aligned access the state rows and B, C allow mamba2_step_kernel at `lanes` lanes a row: 8 elements
// (16 bytes of a 16-bit state and 16-bit B, C), 4, or 1.
template <typename T, typename S>
int m2_unit(const md_mamba2_step_params& p, int lanes) {
  auto fits = [&](int u) {
    return p.dstate % (lanes * u) == 0 && is_aligned(p.state, u * sizeof(S)) && is_aligned(p.B, u * sizeof(T)) &&
           is_aligned(p.C, u * sizeof(T)) && p.state_batch_stride % u == 0 && p.state_head_stride % u == 0 &&
           p.state_dim_stride % u == 0 && p.B_row_stride % u == 0 && p.C_row_stride % u == 0;
  };
  return sizeof(S) == 2 && sizeof(T) == 2 && fits(8) ? 8 : fits(4) ? 4 : 1;
}

// mamba2_step_kernel's grid: blocks of 4 warps of RPW rows each over a batch row's nheads * headdim rows.
template <int RPW>
dim3 m2_grid(const md_mamba2_step_params& p) {
  const int64_t rows_per_block = 4 * RPW;
  return dim3(static_cast<unsigned>((p.nheads * p.headdim + rows_per_block - 1) / rows_per_block),
              static_cast<unsigned>(p.batch));
}

template <typename T, typename S, int RPW, bool VEC>
cudaError_t launch_m2_form(const md_mamba2_step_params& p, cudaStream_t s) {
  const dim3 grid = m2_grid<RPW>(p);
  switch (p.dstate / 32) {
    case 1: return launch_pdl(mamba2_step_kernel<T, S, 1, RPW, 1>, grid, 128, 0, s, p);
    case 2: return launch_pdl(mamba2_step_kernel<T, S, 2, RPW, 1>, grid, 128, 0, s, p);
    case 4: return launch_pdl(mamba2_step_kernel<T, S, 4, RPW, VEC ? 4 : 1>, grid, 128, 0, s, p);
    default: return launch_pdl(mamba2_step_kernel<T, S, 8, RPW, VEC ? 4 : 1>, grid, 128, 0, s, p);
  }
}

// 16 lanes a row (dstate 128: 8 states a lane, 16-byte units of a 16-bit state, two float32 units).
template <typename T, typename S, int RPW>
cudaError_t launch_m2_half(const md_mamba2_step_params& p, int unit, cudaStream_t s) {
  const dim3 grid = m2_grid<RPW>(p);
  if constexpr (sizeof(S) == 2 && sizeof(T) == 2) {
    if (unit == 8) return launch_pdl(mamba2_step_kernel<T, S, 8, RPW, 8, 16>, grid, 128, 0, s, p);
  }
  return launch_pdl(mamba2_step_kernel<T, S, 8, RPW, 4, 16>, grid, 128, 0, s, p);
}

// RPW rows a warp: 16 lanes a row where dstate is 128, the access vectorised and no norm folded (H100, session 43,
// ms a step, the same bits: mamba2-1.3b fp16 state b16 2.325 -> 2.264, b32 2.996 -> 2.862, b64 4.200 -> 4.014;
// float32 state b16 2.890 -> 2.866, b64 6.283 -> 6.254; mamba2-2.7b fp16 state b64 7.059 -> 6.790), else 32 (and
// at one row a warp: an access of 16 lanes covers two rows).
template <typename T, typename S, int RPW>
cudaError_t launch_m2_rows(const md_mamba2_step_params& p, cudaStream_t s) {
  if constexpr (RPW > 1) {
    const int half_unit = p.dstate == 128 && !p.norm_weight ? m2_unit<T, S>(p, 16) : 1;
    if (half_unit >= 4) return launch_m2_half<T, S, RPW>(p, half_unit, s);
  }
  return m2_unit<T, S>(p, 32) >= 4 ? launch_m2_form<T, S, RPW, true>(p, s) : launch_m2_form<T, S, RPW, false>(p, s);
}

// Rows a warp: 4 from batch 4 on (H200, mamba2-1.3b fp32 state: b16 2.88 -> 2.50 ms, b64 6.36 -> 5.00), 1 below
// (4x the blocks for the latency-bound step: b1 1.414 ms against 1.452); 8 for a 16-bit state above 16 rows, as many
// bytes in flight a lane as a float32 state's 4 (H100, session 40, 32 lanes a row: mamba2-1.3b b64 4.289 -> 4.216 ms,
// b48 -0.8%, mamba2-2.7b b64 -2.0%, 1-2% slower at 16-24; session 43, 16 lanes a row: b24 2.543 -> 2.528, b32 2.862
// -> 2.834; b16 2.270 -> 2.260, within the noise between processes, so not taken; a float32 state b16 5% slower, b64
// 2.3%). The vector form wherever it applies (b1 1.454 -> 1.414, b64 6.55 -> 6.36 alone).
template <typename T, typename S>
cudaError_t launch_m2_typed(const md_mamba2_step_params& p, cudaStream_t s) {
  if constexpr (sizeof(S) == 2) {
    if (p.batch > 16 && !p.norm_weight && p.headdim % 8 == 0) return launch_m2_rows<T, S, 8>(p, s);
  }
  if ((p.batch >= 4 || p.norm_weight) && p.headdim % 4 == 0) return launch_m2_rows<T, S, 4>(p, s);
  return launch_m2_rows<T, S, 1>(p, s);
}

template <typename T>
cudaError_t launch_m2(const md_mamba2_step_params& p, cudaStream_t s) {
  return p.state_dtype == MD_FLOAT32 ? launch_m2_typed<T, float>(p, s) : launch_m2_typed<T, T>(p, s);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_mamba2_step(const md_mamba2_step_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "mamba2_step: params is NULL");
  MD_CHECK(p->dstate == 32 || p->dstate == 64 || p->dstate == 128 || p->dstate == 256,
           "mamba2_step: dstate must be 32, 64, 128 or 256");
  MD_CHECK(p->nheads > 0 && p->headdim > 0 && p->ngroups > 0 && p->nheads % p->ngroups == 0,
           "mamba2_step: nheads must be a positive multiple of ngroups");
  MD_CHECK(p->batch >= 0 && p->batch <= 65535, "mamba2_step: bad batch");
  MD_CHECK(p->x && p->B && p->C && p->dt && p->A && p->state && p->y, "mamba2_step: missing pointer");
  MD_CHECK(p->state_dtype == MD_FLOAT32 || p->state_dtype == p->dtype, "mamba2_step: state dtype");
  MD_CHECK(!p->norm_weight || (p->z && p->norm_sumsq && p->headdim % 4 == 0 && p->nheads * p->headdim % 16 == 0 &&
                               p->z_row_stride >= 0 && p->norm_sumsq_row_stride >= 0),
           "mamba2_step: the folded norm needs z and norm_sumsq, headdim a multiple of 4, nheads * headdim of 16");
  if (p->batch == 0) return cudaSuccess;
  switch (p->dtype) {
    case MD_FLOAT32: return md::launch_m2<float>(*p, stream);
    case MD_FLOAT16: return md::launch_m2<__half>(*p, stream);
    case MD_BFLOAT16: return md::launch_m2<__nv_bfloat16>(*p, stream);
    default: MD_CHECK(false, "mamba2_step: bad dtype");
  }
}
