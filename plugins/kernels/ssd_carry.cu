// ssd_carry.cu -- the first two kernels of Mamba2's SSD chunk scan (ssd_chunk.cu says the whole scheme): each
// chunk's discretised dt and running sum of dt * A, then the state entering each chunk, walked over the chunks
// on tensor cores. Reference: mamba_deploy/ops/chunk_scan.py (chunk_scan_ref).
#include <algorithm>

#include "mma_sync.cuh"
#include "ssd_common.cuh"

namespace md {
namespace ssd {
namespace {

// Two adjacent elements of S_in: float32 as they are; a 16-bit state's dtype rounded to nearest, the rounding the
// final state gets (from_f), so the state entering a chunk is the one a call ending there would have handed on.
__device__ __forceinline__ void store_pair(float* to, float a, float b) {
  *reinterpret_cast<float2*>(to) = make_float2(a, b);
}
template <typename S>
__device__ __forceinline__ void store_pair(S* to, float a, float b) {
  *reinterpret_cast<uint32_t*>(to) = pack2<S>(a, b);
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

// ---- per chunk: the discretised dt and the running sum of dt * A (read by the other two kernels) ----
// Grid (nchunks, nheads, batch), kQ threads.
__global__ void __launch_bounds__(kQ) ssd_dt_kernel(const SsdArgs a) {
  __shared__ float dt_s[kQ], cum_s[kQ];
  const int64_t c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * kQ;
  const int tc = static_cast<int>(a.p.seqlen - t0 < kQ ? a.p.seqlen - t0 : kQ);
  chunk_dt(a, b, h, t0, tc, dt_s, cum_s);
  float* out = a.dts + ((b * a.nchunks + c) * a.p.nheads + h) * 2 * kQ;
  out[threadIdx.x] = dt_s[threadIdx.x];
  out[kQ + threadIdx.x] = cum_s[threadIdx.x];
}

// ---- the chunk states: one walk over the chunks per (batch row, head, 32 rows of headdim, part of dstate) ----
// Warp w holds rows 16 (w % 2) .. + 15 of the block's part of the state (headdim x dstate) and column tiles w / 2,
// w / 2 + 4, .. of 16 (NT of them: a part of 64 NT columns) in mma.sync accumulators. Per chunk the state is
// written out as the state entering the chunk, then S = decay * S + (w X)^T B. Scaling X by w_s instead of B keeps
// B exact and splits only the 64 x 32 product w X into hi + lo (shared by the block's warps). A chunk's B rows, X
// rows and dt / cum arrive by cp.async kStages - 1 chunks ahead.
// The state's columns are independent, hence the parts. On an H100 a block of all 128 took as long a chunk as one
// of 64 (the step is latency, not products), so dstate 128 goes in two parts of 64: more blocks, three a
// multiprocessor. Above 128, parts of 128: four of 64 were slower at dstate 256.
constexpr int kRows = 32;           // headdim rows per block
constexpr int kCarryThreads = 256;  // 8 warps: 2 row tiles x 4 column groups
constexpr int kColGroups = kCarryThreads / 32 / 2;
// Columns of dstate a block takes: 64 NT.
__host__ __device__ constexpr int part_cols(int64_t dstate) { return dstate <= 128 ? 64 : 128; }
__host__ __device__ constexpr int column_parts(int64_t dstate) {
  return static_cast<int>((dstate + part_cols(dstate) - 1) / part_cols(dstate));
}
constexpr int kStages = 4;  // >= 3: chunk c + 1 is split while chunk c is multiplied
static_assert(kStages >= 3 && (kStages & (kStages - 1)) == 0, "the walk splits chunk c + 1 while c is in use");
constexpr int kLdx = kRows + kPad;  // w X rows: 80 bytes, so 8 rows' 16-byte units meet 8 bank groups

struct CarryLayout {  // shared-memory offsets (bytes) of ssd_carry_kernel: kStages stages, then the rest
  int ldb;
  size_t B, X, dts, stage;     // within a stage; stage: its size
  size_t Xhi, Xlo, xbuf, total;  // xbuf: from one of the two X hi (lo) buffers to the other
};

template <typename T>
__host__ __device__ CarryLayout carry_layout(int N) {
  CarryLayout o{};
  o.ldb = N + kPad;
  size_t at = 0;
  auto take = [&](size_t bytes) { const size_t here = at; at += (bytes + 127) / 128 * 128; return here; };
  o.B = take(sizeof(T) * kQ * o.ldb);
  o.X = take(sizeof(T) * kQ * kRows);    // raw, 64-byte rows
  o.dts = take(sizeof(float) * 2 * kQ);  // dt_s, cum_s (ssd_dt_kernel)
  o.stage = at;
  at *= kStages;
  o.xbuf = (sizeof(T) * kQ * kLdx + 127) / 128 * 128;
  o.Xhi = take(2 * o.xbuf);  // w X, hi and lo, double-buffered
  o.Xlo = take(2 * o.xbuf);
  o.total = at;
  return o;
}

// Where a block's chunks come from: chunk 0's first row of B and of X (rows a step apart), its dt_s and cum_s
// (dts_step floats to the next chunk's), and each thread's cp.async pieces of the B and X rows.
template <typename T>
struct ChunkSource {
  const T* B;
  const T* x;
  const float* dts;
  int64_t B_step, x_step, dts_step;
  int xcols;  // valid rows of headdim in the block: 16 or 32
  int ncols;  // the block's columns of dstate (and of B)
  bool b_vec, x_vec;  // whether B's (X's) rows are 16-byte vectors: else load_tile's plain loads
  RowPieces<T> b_pieces, x_pieces;
};

// Chunk c's B rows, X rows and dt / cum into the stage at `stage` by the block's cp.async, or by plain loads where
// the rows are not 16-byte vectors (zero rows past the sequence). Commits one group. NT: B's pieces unrolled where
// the block has 64 NT columns.
template <typename T, int NT>
__device__ void issue_chunk(const md_ssm_params& p, const ChunkSource<T>& src, int c, unsigned char* stage,
                            const CarryLayout& o) {
  const int64_t t0 = int64_t(c) * kQ;
  const int tc = static_cast<int>(p.seqlen - t0 < kQ ? p.seqlen - t0 : kQ);
  const int N = src.ncols;
  const uint32_t to = smem_address(stage);
  if (!src.b_vec) {
    load_tile(reinterpret_cast<T*>(stage + o.B), o.ldb, src.B + t0 * src.B_step, src.B_step, p.B_state_stride, tc,
              TileShare(N, kCarryThreads));
  } else if (N == 64 * NT) {
    src.b_pieces.template copy_n<2 * NT>(to + o.B, t0 * src.B_step, tc);
  } else {
    src.b_pieces.copy(to + o.B, t0 * src.B_step, tc);
  }
  if (src.x_vec) {
    src.x_pieces.template copy_n<1>(to + o.X, t0 * src.x_step, tc);
  } else {
    load_tile(reinterpret_cast<T*>(stage + o.X), kRows, src.x + t0 * src.x_step, src.x_step, p.x_dim_stride, tc,
              TileShare(src.xcols, kCarryThreads));
  }
  if (threadIdx.x < 2 * kQ / 4) {  // 2 kQ floats in 16-byte pieces
    cp_async16(smem_address(stage + o.dts) + 16 * threadIdx.x, src.dts + c * src.dts_step + 4 * threadIdx.x, true);
  }
  cp_async_commit();
}

// w_s X of the chunk in `stage` (8 rows of headdim at step threadIdx.x / 4) -> hi and lo at xhi, xlo.
template <typename T>
__device__ __forceinline__ void split_x(const unsigned char* stage, const CarryLayout& o, int xcols, T* xhi, T* xlo) {
  const float* dt_s = reinterpret_cast<const float*>(stage + o.dts);
  const float* cum_s = dt_s + kQ;
  const int s = threadIdx.x / 4, col = (threadIdx.x % 4) * 8;
  if (col >= xcols) return;
  const float w = dt_s[s] * expf(cum_s[kQ - 1] - cum_s[s]);
  const uint4 raw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(stage + o.X) + s * kRows + col);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(&raw);
  uint4 hi, lo;
  uint32_t* h = reinterpret_cast<uint32_t*>(&hi);
  uint32_t* l = reinterpret_cast<uint32_t*>(&lo);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = unpack2<T>(in[k]);
    split2<T>(f.x * w, f.y * w, &h[k], &l[k]);
  }
  *reinterpret_cast<uint4*>(xhi + s * kLdx + col) = hi;
  *reinterpret_cast<uint4*>(xlo + s * kLdx + col) = lo;
}

// acc[j][hh][e] (j < NT): column tile q + kColGroups j, n8 half hh; row 16 rg + g + 8 (e / 2), column
// 16 tile + 8 hh + 2 t + e % 2 (g = lane / 4, t = lane % 4). acc += (w X)^T B of one chunk: A fragments of w X's hi
// and lo by ldmatrix.trans of its step-major rows at xhi / xlo + a_lane, B fragments by ldmatrix.trans of the
// stage's B rows at sb + b_lane (b_k16: 16 rows of B). Tiles past dstate multiply what lies past their rows
// (inside the stage) and are never stored: no branch a tile.
template <typename T, int NT>
__device__ __forceinline__ void carry_products(float (&acc)[NT][2][4], uint32_t xhi, uint32_t xlo, uint32_t sb,
                                               uint32_t a_lane, uint32_t b_lane, uint32_t b_k16) {
#pragma unroll
  for (int k = 0; k < kQ / 16; ++k) {
    uint32_t ah[4], al[4];
    ldmatrix_x4_trans(ah, xhi + a_lane + k * 16 * kLdx * sizeof(T));
    ldmatrix_x4_trans(al, xlo + a_lane + k * 16 * kLdx * sizeof(T));
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, sb + b_lane + k * b_k16 + j * kColGroups * 16 * sizeof(T));
      Mma<T>::run(acc[j][0], ah[0], ah[1], ah[2], ah[3], bf[0], bf[1]);
      Mma<T>::run(acc[j][1], ah[0], ah[1], ah[2], ah[3], bf[2], bf[3]);
      Mma<T>::run(acc[j][0], al[0], al[1], al[2], al[3], bf[0], bf[1]);
      Mma<T>::run(acc[j][1], al[0], al[1], al[2], al[3], bf[2], bf[3]);
    }
  }
}

// Grid (ceil(headdim / 32) x column_parts(dstate), nheads, batch), kCarryThreads threads: block x takes rows 32 (x
// / parts) .. of headdim and columns 64 NT (x % parts) .. of dstate; NT = part_cols(dstate) / 64.
template <typename T, typename S, int NT>
__global__ void __launch_bounds__(kCarryThreads, NT == 1 ? 3 : 2) ssd_carry_kernel(const SsdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const md_ssm_params& p = a.p;
  const int parts = column_parts(p.dstate), ND = static_cast<int>(p.dstate);
  const int64_t h = blockIdx.y, b = blockIdx.z, p0 = int64_t(blockIdx.x / parts) * kRows;
  const int n0 = 64 * NT * static_cast<int>(blockIdx.x % parts), N = min(64 * NT, ND - n0);
  const int nchunks = static_cast<int>(a.nchunks);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, rg = warp % 2, q = warp / 2;
  const int64_t g = h / (p.nheads / p.ngroups), sb = state_row(p.state_rows, b);
  const CarryLayout o = carry_layout<T>(N);
  const int xcols = static_cast<int>(p.headdim - p0 < kRows ? p.headdim - p0 : kRows);
  const T* B = static_cast<const T*>(p.B) + b * p.B_batch_stride + g * p.B_group_stride + n0 * p.B_state_stride;
  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0 * p.x_dim_stride;
  const ChunkSource<T> src{B,
                           x,
                           a.dts + (b * a.nchunks * p.nheads + h) * 2 * kQ,
                           p.B_seq_stride,
                           p.x_seq_stride,
                           p.nheads * 2 * kQ,
                           xcols,
                           N,
                           vectorisable(B, p.B_seq_stride, p.B_state_stride),
                           vectorisable(x, p.x_seq_stride, p.x_dim_stride),
                           RowPieces<T>(B, p.B_seq_stride, N, o.ldb, kCarryThreads),
                           RowPieces<T>(x, p.x_seq_stride, xcols, kRows, kCarryThreads)};
  const auto stage = [&](int c) { return smem + (c & (kStages - 1)) * o.stage; };
  const auto issue = [&](int c) {
    if (c < nchunks) issue_chunk<T, NT>(p, src, c, stage(c), o);
    else cp_async_commit();
  };
#pragma unroll
  for (int c = 0; c < kStages - 1; ++c) issue(c);

  // The state entering chunk 0, into the accumulators
  const bool live = 16 * rg < xcols;  // whether the warp's rows are inside headdim
  const int row = 16 * rg + lane / 4, col = 2 * (lane % 4);
  const auto column = [&](int j, int e) { return 16 * (q + kColGroups * j) + 8 * (e / 4) + col + e % 2; };
  float acc[NT][2][4];
  const S* st_in = p.state_in ? static_cast<const S*>(p.state_in) + sb * p.state_in_batch_stride +
                                    h * p.state_in_head_stride + p0 * p.state_in_dim_stride +
                                    n0 * p.state_in_state_stride : nullptr;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int r = row + 8 * ((e % 4) / 2), n = column(j, e);
      const bool in = live && st_in != nullptr && n < N;
      acc[j][e / 4][e % 4] = in ? to_f(st_in[r * p.state_in_dim_stride + n * p.state_in_state_stride]) : 0.f;
    }
  }

  const auto xbuf = [&](size_t region, int c) { return reinterpret_cast<T*>(smem + region + (c & 1) * o.xbuf); };
  const int m = lane / 8, r8 = lane % 8;
  const uint32_t a_lane = ((r8 + 8 * (m / 2)) * kLdx + 16 * rg + 8 * (m % 2)) * sizeof(T);
  const uint32_t b_lane = ((r8 + 8 * (m % 2)) * o.ldb + 16 * q + 8 * (m / 2)) * sizeof(T);
  const uint32_t b_k16 = 16 * o.ldb * sizeof(T);
  cp_async_wait<kStages - 2>();
  __syncthreads();  // chunk 0's stage has landed
  split_x<T>(stage(0), o, xcols, xbuf(o.Xhi, 0), xbuf(o.Xlo, 0));

  // One barrier a chunk: chunk c + 1's w X is split while chunk c's products run (other buffers).
  const int64_t chunk_stride = p.nheads * p.headdim * p.dstate;
  S* out = static_cast<S*>(a.states) + (b * a.nchunks * p.nheads + h) * p.headdim * p.dstate + (p0 + row) * ND +
           n0 + col;
  for (int c = 0; c < nchunks; ++c, out += chunk_stride) {
    cp_async_wait<kStages - 3>();
    __syncthreads();  // chunk c + 1's stage has landed, chunk c's X hi / lo are split; chunk c - 1 is done with
    issue(c + kStages - 1);
    if (c + 1 < nchunks) split_x<T>(stage(c + 1), o, xcols, xbuf(o.Xhi, c + 1), xbuf(o.Xlo, c + 1));
    const float decay = expf(reinterpret_cast<const float*>(stage(c) + o.dts)[2 * kQ - 1]);
    if (!live) continue;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float* v = acc[j][hh];
        if (column(j, 4 * hh) < N) {
          store_pair(out + 16 * kColGroups * j + 16 * q + 8 * hh, v[0], v[1]);
          store_pair(out + 16 * kColGroups * j + 16 * q + 8 * hh + 8 * ND, v[2], v[3]);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] *= decay;
      }
    }
    carry_products<T, NT>(acc, smem_address(xbuf(o.Xhi, c)), smem_address(xbuf(o.Xlo, c)),
                          smem_address(stage(c) + o.B), a_lane, b_lane, b_k16);
  }
  cp_async_wait<0>();
  if (p.state_out == nullptr || !live) return;
  S* st_out = static_cast<S*>(p.state_out) + sb * p.state_out_batch_stride + h * p.state_out_head_stride +
              p0 * p.state_out_dim_stride + n0 * p.state_out_state_stride;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int r = row + 8 * ((e % 4) / 2), n = column(j, e);
      if (n < N) st_out[r * p.state_out_dim_stride + n * p.state_out_state_stride] = from_f<S>(acc[j][e / 4][e % 4]);
    }
  }
}

template <typename T, typename S, int NT>
cudaError_t launch_carry(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const int parts = column_parts(p.dstate);
  const size_t bytes = states_smem_bytes(static_cast<int>(p.dstate));
  const auto kernel = ssd_carry_kernel<T, S, NT>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.headdim + kRows - 1) / kRows * parts), static_cast<unsigned>(p.nheads),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, kCarryThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

template <typename T, typename S>
cudaError_t launch_states(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const dim3 grid(static_cast<unsigned>(a.nchunks), static_cast<unsigned>(p.nheads), static_cast<unsigned>(p.batch));
  ssd_dt_kernel<<<grid, kQ, 0, stream>>>(a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // dstate <= 256 (ssd_eligible)
  return part_cols(p.dstate) == 64 ? launch_carry<T, S, 1>(a, stream) : launch_carry<T, S, 2>(a, stream);
}

size_t states_smem_bytes(int dstate) { return carry_layout<__half>(std::min(dstate, part_cols(dstate))).total; }

template cudaError_t launch_states<__half, float>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__half, __half>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__nv_bfloat16, float>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__nv_bfloat16, __nv_bfloat16>(const SsdArgs&, cudaStream_t);

}  // namespace ssd
}  // namespace md
