// ssd_chunk.cu -- Mamba2's chunk scan in the SSD form on tensor cores, for 16-bit x / B / C.
// Reference: mamba_deploy/ops/chunk_scan.py (chunk_scan_ref); the recurrence in ssm_scan.cu stays the
// path for float32 inputs, for sequences under 32 steps and for shapes outside ssd_eligible.
//
// The sequence is cut into chunks of kQ = 64 steps (the last one zero-padded: a padded step has dt = 0, so
// it neither decays nor feeds the state). With a_t = dt_t * A and cum_t = a_0 + ... + a_t inside a chunk:
//   1. ssd_dt_kernel, per (chunk, head): dt_s and cum_s into the scratch.
//   2. ssd_carry_kernel, per (head, 32 rows of headdim): walks the chunks in order with the state in tensor-core
//      accumulators, writing the state entering each chunk, S_in(c), and then
//        S_in(c + 1) = exp(cum_last) S_in(c) + (w * X)^T B,  w_s = dt_s * exp(cum_last - cum_s)   (P x Q) . (Q x N)
//      and finally state_out. (It replaced a kernel per (chunk, head) for each chunk's own end state plus a
//      pass over the chunks per state element: the float32 chunk states went to memory three times, not once.)
//   3. ssd_output_kernel, per (chunk, head), warp w for steps 16 w .. 16 w + 15 (mma.sync, operands by ldmatrix):
//        y = ((C B^T) * L * dt_s) X + exp(cum_t) (C S_in^T) + D x, gated by silu(z),
//        L[t, s] = exp(cum_t - cum_s), s <= t.
// Operands that are float32 products (w * X, the masked C B^T, S_in) enter the 16-bit
// matrix products as hi + lo pairs (hi = round(v), lo = round(v - hi)), so the result keeps about 16
// mantissa bits instead of the 8 (bf16) or 11 (fp16) of one rounding; accumulation is float32. Where the state
// itself is 16-bit (the caller's state_dtype, chosen for decode), S_in is stored in its dtype, one rounding, and
// enters as it is: half the bytes between the two kernels and one product less. That rounding is what the final
// state gets anyway, and what mamba-ssm's chunk scan does with every dtype (its state passing writes the states in
// the input dtype).
#include <algorithm>
#include <cmath>

#include "mma_sync.cuh"
#include "ssd_chunk.cuh"
#include "ssd_common.cuh"

namespace md {
namespace ssd {
namespace {

// Shorter sequences: the recurrence. Measured on the H200 (benchmarks/chunk_scan.py, mamba2-1.3b's layer), the
// SSD form beats it from 32 steps at every batch: 1 x 32 19.5 us against 30.3 for 1 x 31 in the recurrence, 64 x
// 32 602 against 987; at 100 steps 3-4x (1 x 100 22.5 / 81.6 us, 64 x 100 924 / 2,662). The bound was 256.
constexpr int64_t kMinSeqlen = 32;
constexpr int64_t kMaxWorkspace = int64_t(512) << 20;     // scratch of a launch: larger batches go in slices of rows

// ---- ssd_output_kernel: warp w owns steps 16 w .. 16 w + 15 of the chunk ----
// Its products stay in registers (mma.sync): C B^T of its rows becomes the masked M, the A operand of M X (hi +
// lo), with no trip through shared memory, and y is finished and stored from the accumulators. Each warp runs
// code specialised to its row tile (its causal key tiles, the diagonal mask) and the tile widths are template
// constants, so the shared-memory addresses are a few base registers plus immediates.
constexpr int kOutWarps = kQ / 16;
constexpr int kOutThreads = 32 * kOutWarps;

// 16-byte units a shared row of `cols` 16-bit elements takes: 8, 16 or 32 (a swizzle below stays inside the
// row, every row starts at bank 0). The kernel's kPT = row_units(headdim) (n8 tiles of headdim it computes: S_in
// rows and X columns past headdim are zeros) and kUn = row_units(dstate).
__host__ __device__ constexpr int row_units(int cols) { return cols <= 64 ? 8 : cols <= 128 ? 16 : 32; }
// Where unit u of row `row` sits: every tile is read by ldmatrix (8 rows, one unit a matrix).
__device__ __forceinline__ int swizzle(int row, int u) { return u ^ (row & 7); }

// Shared memory of ssd_output_kernel (byte offsets), un = row_units(dstate), up = row_units(headdim): rows of un
// units -- C (kQ rows), B (kQ), S_in hi (8 up), S_in lo (8 up) -- then X (kQ rows of up units), dt_s, and c2_s =
// cum_s log2(e).
struct OutLayout {
  size_t X, dt, c2, total;
};
constexpr int kHiRow = 2 * kQ;  // the first row of S_in hi

__host__ __device__ inline OutLayout out_layout(int P, int N) {
  const int un = row_units(N), up = row_units(P);
  OutLayout o{};
  o.X = size_t(16) * un * (kHiRow + 16 * up);  // a multiple of 256: X's swizzle XORs offsets inside it
  o.dt = o.X + size_t(16) * up * kQ;
  o.c2 = o.dt + sizeof(float) * kQ;
  o.total = o.c2 + sizeof(float) * kQ;
  return o;
}

// `rows` rows at src (row_stride, col_stride) as 8-element pieces into shared rows of row_bytes, piece u of row r
// at unit swizzle(r, u); rows from `valid` and pieces from `cols` zero. By cp.async (the caller commits and waits)
// where the rows are 16-byte vectors, else by plain loads.
template <typename T>
__device__ void copy_rows(unsigned char* dst, int row_bytes, const T* src, int64_t row_stride, int64_t col_stride,
                          int rows, int valid, int cols, const TileShare& share) {
  if (share.rstep == 0) return;
  const bool vec = vectorisable(src, row_stride, col_stride), in_cols = share.c < cols;
  const T* from = src + share.r0 * row_stride + share.c * col_stride;
  const int64_t from_step = share.rstep * row_stride;
  for (int r = share.r0; r < rows; r += share.rstep, from += from_step) {
    unsigned char* to = dst + r * row_bytes + swizzle(r, share.c / 8) * 16;
    const bool load = in_cols && r < valid;
    if (vec) {
      cp_async16(smem_address(to), load ? from : src, load);
      continue;
    }
    __align__(16) T e[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) e[k] = load ? from[k * col_stride] : from_f<T>(0.f);
    *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(e);
  }
}

// S_in (P x N float32) -> rows of its hi and lo tiles (rows P .. 8 up zero), kBatch rows of a thread at a time:
// the first batch's loads go out before the block's copies are issued, so they wait on memory together.
struct StateSplit {
  static constexpr int kBatch = 8;
  float f[kBatch][8];
  const float* S_in;
  int P, N;

  __device__ void load(int r0, const TileShare& share) {
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int r = r0 + k * share.rstep;
      if (r < P) load8(S_in + int64_t(r) * N + share.c, f[k]);
    }
  }
  template <typename T>
  __device__ void store(unsigned char* hi, unsigned char* lo, int row_bytes, int rows, int r0, const TileShare& share) {
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int r = r0 + k * share.rstep, at = r * row_bytes + swizzle(r, share.c / 8) * 16;
      if (r >= rows) continue;
      if (r >= P) {  // zeros: not a select on the loaded registers, which would wait for the loads here
        *reinterpret_cast<uint4*>(hi + at) = *reinterpret_cast<uint4*>(lo + at) = make_uint4(0, 0, 0, 0);
      } else {
        split8(f[k], reinterpret_cast<T*>(hi + at), reinterpret_cast<T*>(lo + at));
      }
    }
  }
};

// acc[n] += a (a 16 x 16 fragment of C's rows) times the n-th pair of n8 tiles (16 rows, k16) at `cols_at`: this
// lane's ldmatrix row in the tiles' layout at their first row.
template <typename T, int kUn, int kTiles>
__device__ __forceinline__ void times_cols(float (&acc)[kTiles][2][4], const uint32_t (&a)[4], uint32_t cols_at) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n) {
    uint32_t bf[4];
    ldmatrix_x4(bf, cols_at + 16 * n * kUn * 16);
    Mma<T>::run(acc[n][0], a[0], a[1], a[2], a[3], bf[0], bf[1]);
    Mma<T>::run(acc[n][1], a[0], a[1], a[2], a[3], bf[2], bf[3]);
  }
}

struct OutWarp {  // what a warp of ssd_output_kernel reads after the block's copies
  const unsigned char *rows, *X;  // rows: C, B, S_in hi, S_in lo
  const float *dt_s, *c2_s;
  int N, P, tc;
  float Dh;
  const void* z;  // at (b, t0, h); null: no gate
  int64_t z_seq, z_dim;
  void* y;
  int64_t y_seq, y_dim;
  bool z_pairs, y_pairs;  // 4-byte pairs of consecutive elements
  const void* norm_w;     // the head's norm weights (the folded gated norm, md_ssm_params.norm_*); null: off
  float* sumsq;           // at (b, t0, h)
  int64_t sumsq_seq;
};

// y += M X over warp W's key tiles, M = C B^T * exp(cum_t - cum_s) * dt_s on s <= t, as hi + lo A fragments built
// from the C B^T accumulators (columns 2q, 2q + 1 of n8 half hh are the fragment's k).
template <typename T, int kPT, int W>
__device__ __forceinline__ void masked_times_x(float (&acc_y)[kPT][4], const float (&acc_g)[W + 1][2][4],
                                               const OutWarp& w) {
  constexpr int kXRow = kPT * 16;
  const int lane = threadIdx.x % 32, q = lane % 4, r0 = 16 * W + lane / 4, r1 = r0 + 8;
  const float c2r0 = w.c2_s[r0], c2r1 = w.c2_s[r1];
  // ldmatrix: lane l gives row l % 8 of matrix l / 8 (steps + 8 for matrices 1, 3; unit + 1 for 2, 3)
  const int xs = (lane & 7) + 8 * ((lane >> 3) & 1);
  const uint32_t x_lane = xs * kXRow + (((lane >> 4) ^ (lane & 7)) << 4), x_base = smem_address(w.X);
#pragma unroll
  for (int kt = 0; kt <= W; ++kt) {
    uint32_t mh[4], ml[4];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int s = 16 * kt + 8 * hh + 2 * q;
      const float2 cs = *reinterpret_cast<const float2*>(w.c2_s + s);
      const float2 ds = *reinterpret_cast<const float2*>(w.dt_s + s);
      const float* gacc = acc_g[kt][hh];
      float m[4] = {gacc[0] * fast_exp2(c2r0 - cs.x) * ds.x, gacc[1] * fast_exp2(c2r0 - cs.y) * ds.y,
                    gacc[2] * fast_exp2(c2r1 - cs.x) * ds.x, gacc[3] * fast_exp2(c2r1 - cs.y) * ds.y};
      if (kt == W) {  // the diagonal tile: s <= t
        m[0] = s <= r0 ? m[0] : 0.f;
        m[1] = s + 1 <= r0 ? m[1] : 0.f;
        m[2] = s <= r1 ? m[2] : 0.f;
        m[3] = s + 1 <= r1 ? m[3] : 0.f;
      }
      split2<T>(m[0], m[1], &mh[2 * hh], &ml[2 * hh]);
      split2<T>(m[2], m[3], &mh[2 * hh + 1], &ml[2 * hh + 1]);
    }
#pragma unroll
    for (int jj = 0; jj < kPT / 2; ++jj) {
      uint32_t xb[4];
      ldmatrix_x4_trans(xb, x_base + ((x_lane ^ (32 * jj)) + 16 * kt * kXRow));
      Mma<T>::run(acc_y[2 * jj], mh[0], mh[1], mh[2], mh[3], xb[0], xb[1]);
      Mma<T>::run(acc_y[2 * jj], ml[0], ml[1], ml[2], ml[3], xb[0], xb[1]);
      Mma<T>::run(acc_y[2 * jj + 1], mh[0], mh[1], mh[2], mh[3], xb[2], xb[3]);
      Mma<T>::run(acc_y[2 * jj + 1], ml[0], ml[1], ml[2], ml[3], xb[2], xb[3]);
    }
  }
}

// y + D x, gated by silu(z), stored from the accumulators: columns 8 j + 2 q, + 1 of rows r0, r0 + 8. kPairs: z (if
// any, from z_raw) and y as 4-byte pairs, the engine's layout; else element by element (its own loop, so the hot
// one stays short). kFold (the folded gated norm): g = the gated y, stored times its channel's norm weight, and each
// row's sum of g^2 over the head (a lane's columns, then the quad's four lanes) into w.sumsq.
template <typename T, int kPT, int W, bool kPairs, bool kFold>
__device__ __forceinline__ void store_y_rows(const float (&acc_y)[kPT][4], const uint32_t (&z_raw)[2][kPT],
                                             const OutWarp& w) {
  const int lane = threadIdx.x % 32, gq = lane / 4, q = lane % 4;
  float ss[2] = {0.f, 0.f};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = 16 * W + gq + 8 * half;
    if (t >= w.tc) continue;
    const unsigned char* x_row = w.X + t * (kPT * 16) + 4 * q;  // unit j of row t at j ^ (t & 7) = j ^ gq
    const T* zt = static_cast<const T*>(w.z) + t * w.z_seq + 2 * q * w.z_dim;
    T* yt = static_cast<T*>(w.y) + t * w.y_seq + 2 * q * w.y_dim;
#pragma unroll
    for (int j = 0; j < kPT; ++j) {
      if (8 * j >= w.P) break;
      const float2 xv = unpack2<T>(*reinterpret_cast<const uint32_t*>(x_row + ((j ^ gq) << 4)));
      float y0 = acc_y[j][2 * half] + w.Dh * xv.x, y1 = acc_y[j][2 * half + 1] + w.Dh * xv.y;
      if (w.z) {
        const float2 zv = kPairs ? unpack2<T>(z_raw[half][j])
                                 : make_float2(to_f(zt[8 * j * w.z_dim]), to_f(zt[(8 * j + 1) * w.z_dim]));
        y0 *= silu_ftz(zv.x);
        y1 *= silu_ftz(zv.y);
      }
      if (kFold) {
        const T* nw = static_cast<const T*>(w.norm_w) + 8 * j + 2 * q;
        ss[half] = fmaf(y1, y1, fmaf(y0, y0, ss[half]));
        y0 *= to_f(nw[0]);
        y1 *= to_f(nw[1]);
      }
      if (kPairs) {
        *reinterpret_cast<uint32_t*>(yt + 8 * j) = pack2<T>(y0, y1);
      } else {
        yt[8 * j * w.y_dim] = from_f<T>(y0);
        yt[(8 * j + 1) * w.y_dim] = from_f<T>(y1);
      }
    }
  }
  if (kFold) {  // every lane shuffles (rows past tc included: a quad shares its row), lane q 0 stores
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float row_ss = group_sum<4>(ss[half]);
      const int t = 16 * W + gq + 8 * half;
      if (q == 0 && t < w.tc) w.sumsq[t * w.sumsq_seq] = row_ss;
    }
  }
}

template <typename T, int kPT, int W, bool kFold>
__device__ __forceinline__ void store_y(const float (&acc_y)[kPT][4], const uint32_t (&z_raw)[2][kPT],
                                        const OutWarp& w) {
  if (w.y_pairs && (w.z_pairs || !w.z)) {
    store_y_rows<T, kPT, W, true, kFold>(acc_y, z_raw, w);
  } else {
    store_y_rows<T, kPT, W, false, kFold>(acc_y, z_raw, w);
  }
}

// z of the warp's rows (4-byte pairs), in flight through the products.
template <typename T, int kPT, int W>
__device__ __forceinline__ void load_z(uint32_t (&z_raw)[2][kPT], const OutWarp& w) {
  const int lane = threadIdx.x % 32, t0 = 16 * W + lane / 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t* zt = reinterpret_cast<const uint32_t*>(static_cast<const T*>(w.z) + (t0 + 8 * half) * w.z_seq) +
                         lane % 4;
#pragma unroll
    for (int j = 0; j < kPT; ++j) z_raw[half][j] = w.z_pairs && t0 + 8 * half < w.tc && 8 * j < w.P ? zt[4 * j] : 0u;
  }
}

// kLo: S_in as hi + lo (a float32 state), else its 16-bit rows alone.
template <typename T, int kPT, int kUn, int W, bool kFold, bool kLo>
__device__ __forceinline__ void out_warp(const OutWarp& w) {
  constexpr int kRow = kUn * 16;
  const int lane = threadIdx.x % 32, gq = lane / 4;
  uint32_t z_raw[2][kPT];
  load_z<T, kPT, W>(z_raw, w);
  // ldmatrix rows: A (C's rows) lane l: row l % 8 + 8 (l / 8 % 2), unit 2 kk + l / 16; B layout: row l % 8 + 8 (l /
  // 16), unit 2 kk + l / 8 % 2. Unit u of row r sits at u ^ (r % 8): a byte offset XOR (32 kk) ^ (16 v).
  const int l7 = lane & 7, va = (lane >> 4) ^ l7, vb = ((lane >> 3) & 1) ^ l7;
  const uint32_t rows = smem_address(w.rows);
  const uint32_t a_row = rows + (16 * W + l7 + 8 * ((lane >> 3) & 1)) * kRow;
  const uint32_t b_row = rows + (l7 + 8 * (lane >> 4)) * kRow;
  float acc_g[W + 1][2][4] = {}, acc_y[kPT / 2][2][4] = {};
  for (int kk = 0; kk < w.N / 16; ++kk) {  // C B^T over the causal key tiles, C S_in^T (hi [+ lo])
    const uint32_t cols_at = b_row + ((32 * kk) ^ (16 * vb));
    uint32_t a[4];
    ldmatrix_x4(a, a_row + ((32 * kk) ^ (16 * va)));
    times_cols<T, kUn>(acc_g, a, cols_at + kQ * kRow);
    times_cols<T, kUn>(acc_y, a, cols_at + kHiRow * kRow);
    if (kLo) times_cols<T, kUn>(acc_y, a, cols_at + (kHiRow + 8 * kPT) * kRow);
  }
  float (&y)[kPT][4] = reinterpret_cast<float (&)[kPT][4]>(acc_y);
  // the entering state's term decays by exp(cum_t): C enters its product exact, S_in as hi + lo or (kLo off) as is
  const float e0 = fast_exp2(w.c2_s[16 * W + gq]), e1 = fast_exp2(w.c2_s[16 * W + gq + 8]);
#pragma unroll
  for (int j = 0; j < kPT; ++j) {
    y[j][0] *= e0;
    y[j][1] *= e0;
    y[j][2] *= e1;
    y[j][3] *= e1;
  }
  masked_times_x<T, kPT, W>(y, acc_g, w);
  store_y<T, kPT, W, kFold>(y, z_raw, w);
}

// Grid (nchunks, nheads, batch), kOutThreads threads; kPT = row_units(headdim), kUn = row_units(dstate); kFold:
// the folded gated norm (md_ssm_params.norm_weight set), an instance of its own so that the plain one's registers
// stay as they were. S: the state's dtype (float: S_in as hi + lo; else S_in in it, as T).
template <typename T, typename S, int kPT, int kUn, bool kFold>
__global__ void __launch_bounds__(kOutThreads) ssd_output_kernel(const SsdArgs a) {
  constexpr bool kLo = sizeof(S) == 4;
  extern __shared__ __align__(128) unsigned char smem[];
  const md_ssm_params& p = a.p;
  const int64_t c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * kQ;
  const int tc = static_cast<int>(p.seqlen - t0 < kQ ? p.seqlen - t0 : kQ);
  const int P = static_cast<int>(p.headdim), N = static_cast<int>(p.dstate);
  const OutLayout o = out_layout(P, N);
  constexpr int kRow = kUn * 16;
  const int g = static_cast<int>(h) / static_cast<int>(p.nheads / p.ngroups);
  const T* zp = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + t0 * p.z_seq_stride + h * p.z_head_stride
                    : nullptr;

  const TileShare n_share(N, kOutThreads), p_share(8 * kPT, kOutThreads);
  const int64_t state_at = ((b * a.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  StateSplit state{{}, static_cast<const float*>(a.states) + state_at, P, N};
  if (kLo && n_share.rstep) state.load(n_share.r0, n_share);
  if constexpr (!kLo)  // S_in rows past headdim: zeros
    copy_rows(smem + kHiRow * kRow, kRow, static_cast<const T*>(a.states) + state_at, N, 1, 8 * kPT, P, N, n_share);
  copy_rows(smem, kRow, static_cast<const T*>(p.C) + b * p.C_batch_stride + t0 * p.C_seq_stride +
            g * p.C_group_stride, p.C_seq_stride, p.C_state_stride, kQ, tc, N, n_share);
  copy_rows(smem + kQ * kRow, kRow, static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride +
            g * p.B_group_stride, p.B_seq_stride, p.B_state_stride, kQ, tc, N, n_share);
  copy_rows(smem + o.X, kPT * 16, static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride +
            h * p.x_head_stride, p.x_seq_stride, p.x_dim_stride, kQ, tc, P, p_share);
  cp_async_commit();
  float* dt_s = reinterpret_cast<float*>(smem + o.dt);
  float* c2_s = reinterpret_cast<float*>(smem + o.c2);
  if (threadIdx.x < kQ) {
    const int t = threadIdx.x;
    const float* dts = a.dts + ((b * a.nchunks + c) * p.nheads + h) * 2 * kQ;
    dt_s[t] = dts[t];
    c2_s[t] = dts[kQ + t] * kLog2e;
    if (zp && t < tc) {  // the epilogue's z rows: into the L2 now, read from it after the products
      prefetch_line(zp + t * p.z_seq_stride);
      prefetch_line(zp + t * p.z_seq_stride + (P - 1) * p.z_dim_stride);
    }
  }
  for (int r0 = n_share.r0; kLo && n_share.rstep;) {
    state.store<T>(smem + kHiRow * kRow, smem + (kHiRow + 8 * kPT) * kRow, kRow, 8 * kPT, r0, n_share);
    if ((r0 += StateSplit::kBatch * n_share.rstep) >= 8 * kPT) break;
    state.load(r0, n_share);
  }
  cp_async_wait<0>();
  __syncthreads();

  T* yp = static_cast<T*>(p.y) + b * p.y_batch_stride + t0 * p.y_seq_stride + h * p.y_head_stride;
  const auto pairs = [](const void* ptr, int64_t seq, int64_t dim) {
    return dim == 1 && seq % 2 == 0 && reinterpret_cast<uintptr_t>(ptr) % 4 == 0;
  };
  const OutWarp w{smem, smem + o.X, dt_s, c2_s, N, P, tc,
                  p.D ? load_any(p.D, p.param_dtype, h * p.D_head_stride) : 0.f,
                  zp, p.z_seq_stride, p.z_dim_stride, yp, p.y_seq_stride, p.y_dim_stride,
                  zp && pairs(zp, p.z_seq_stride, p.z_dim_stride), pairs(yp, p.y_seq_stride, p.y_dim_stride),
                  kFold ? static_cast<const T*>(p.norm_weight) + h * P : nullptr,
                  kFold ? static_cast<float*>(p.norm_sumsq) + b * p.norm_sumsq_batch_stride +
                              t0 * p.norm_sumsq_seq_stride + h : nullptr,
                  p.norm_sumsq_seq_stride};
  switch (threadIdx.x / 32) {
    case 0: out_warp<T, kPT, kUn, 0, kFold, kLo>(w); break;
    case 1: out_warp<T, kPT, kUn, 1, kFold, kLo>(w); break;
    case 2: out_warp<T, kPT, kUn, 2, kFold, kLo>(w); break;
    default: out_warp<T, kPT, kUn, 3, kFold, kLo>(w); break;
  }
}

int64_t nchunks_of(const md_ssm_params& p) { return (p.seqlen + kQ - 1) / kQ; }

// Scratch of one batch row: the state entering each chunk (float32, or the 16-bit state's dtype), and each chunk's
// dt_s and cum_s (float32).
size_t row_workspace_bytes(const md_ssm_params& p) {
  return size_t(nchunks_of(p) * p.nheads) *
         (size_t(p.headdim * p.dstate * elem_bytes(p.state_dtype)) + 2 * kQ * sizeof(float));
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
  if (p.norm_sumsq) q.norm_sumsq = static_cast<float*>(p.norm_sumsq) + b0 * p.norm_sumsq_batch_stride;
  if (p.state_rows) {
    q.state_rows = p.state_rows + b0;
  } else {
    if (p.state_in) q.state_in = static_cast<const S*>(p.state_in) + b0 * p.state_in_batch_stride;
    if (p.state_out) q.state_out = static_cast<S*>(p.state_out) + b0 * p.state_out_batch_stride;
  }
  return q;
}

template <typename T, typename S, int kPT, int kUn>
cudaError_t launch_output(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const auto kernel =
      p.norm_weight ? ssd_output_kernel<T, S, kPT, kUn, true> : ssd_output_kernel<T, S, kPT, kUn, false>;
  const size_t bytes = out_layout(static_cast<int>(p.headdim), static_cast<int>(p.dstate)).total;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  // the largest carveout: three blocks (72.5 KB each at headdim 64, dstate 128) a multiprocessor
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.nchunks), static_cast<unsigned>(p.nheads), static_cast<unsigned>(p.batch));
  kernel<<<grid, kOutThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename S, int kPT>
cudaError_t launch_output_n(const SsdArgs& a, cudaStream_t stream) {
  switch (row_units(static_cast<int>(a.p.dstate))) {
    case 8: return launch_output<T, S, kPT, 8>(a, stream);
    case 16: return launch_output<T, S, kPT, 16>(a, stream);
    default: return launch_output<T, S, kPT, 32>(a, stream);
  }
}

template <typename T, typename S>
cudaError_t launch_typed(const SsdArgs& a, cudaStream_t stream) {
  const cudaError_t err = launch_states<T, S>(a, stream);
  if (err != cudaSuccess) return err;
  return row_units(static_cast<int>(a.p.headdim)) == 8 ? launch_output_n<T, S, 8>(a, stream)
                                                        : launch_output_n<T, S, 16>(a, stream);
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
    a.states = workspace;
    a.dts = reinterpret_cast<float*>(static_cast<S*>(workspace) + rows * nchunks * p.nheads * p.headdim * p.dstate);
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
  const size_t smem = std::max(ssd::out_layout(P, N).total, ssd::states_smem_bytes(N));
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
