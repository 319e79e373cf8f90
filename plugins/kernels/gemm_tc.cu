// gemm_tc.cu -- the decode projections for batch 1..64 on tensor cores (md_launch_gemv's tensor-core form).
//
// out (batch, n) = x (batch, k) @ w (n, k)^T. The weights are the m16 side of mma.sync m16n8k16 (16 output
// columns a tile) and the batch rows the n8 side, so b rows cost ceil(b / 8) tiles and every weight is read
// once for all rows; the fragments are 16-byte units of weight and x rows (mma_sync.cuh). Few output columns
// over a long k (n <= 256: Mamba1's x_proj) take gemv_skinny.cu instead, whose blocks are 16 columns wide.
//
// Block: 8 warps = 4 along n (32 columns each: two m16 tiles) x 2 along k (one 32-wide k step each per stage),
// 128 columns. Each stage of 64 k holds the block's 128 weight rows and the nb * 8 x rows in shared memory,
// copied with cp.async 3 stages ahead of the products (48 KB of weights in flight per block, one or two blocks
// a multiprocessor: about what the bandwidth asks for, 32 GB/s a multiprocessor times the memory latency).
// At 9-16 batch rows, where that tile would split k (below), the narrow tile instead: one m16 tile a warp, 64
// columns, 7 of its 8 KB stages ahead; twice the blocks over n, so half the splits (in_proj: whole k).
// Each block starts at its own stage of the k range and wraps around: every block reads the same x, and blocks
// in step would all ask the same few L2 lines for it at once.
// The 16-byte units of odd rows are swizzled so that a quarter warp's reads of two rows hit distinct banks.
// The k range is split over a cluster of S blocks (grid.y, S in {1, 2, 4, 8}: enough blocks to fill the
// GPU): each block leaves its partial sums in shared memory, then each block of the cluster finishes 1/S of
// the tile, reading the S partial tiles through distributed shared memory (no workspace, no second kernel).
// Epilogue: bias, the conv epilogue (gemv_epilogue.cuh), the store. Sums are float32 in a fixed order: the
// same inputs give the same bits.
// The wgmma form (batch 17..64, or any with algo MD_GEMV_ALGO_WGMMA, where built for sm_90a; wgmma.cuh): the
// same splits and epilogue; one thread fills a stage with two bulk tensor copies (TMA: weights and x tiles in the
// 128-byte swizzle, zeros outside, completing the stage's `full` mbarrier) once both warpgroups have released its
// buffer (its `empty` mbarrier), and each warpgroup's k32 step of a stage is m64nNk16 products (N = 8, 16, 32 or
// 64 batch rows) read straight from shared memory, one group of them left in flight. 8 stages where the grid
// takes one block a multiprocessor and clusters have at most 4 blocks, else 4 (two blocks fit). (A ninth warp as
// the producer would need more than the 96 registers that two blocks of 288 threads allow.) At batch 64 the
// mma.sync form was bound by issuing its fragment loads and products (0.43 warps a scheduler issuing); wgmma fed
// by per-thread cp.async gained 15-20% and was then bound by the copies; TMA with the block synchronised at every
// stage took in_proj from 16.4 to 14.3 us (cuBLAS: 11.6).
#include <cstdint>

#include <cuda.h>  // CUtensorMap; cuTensorMapEncodeTiled is looked up through the runtime (no libcuda link)

#include "cluster.cuh"
#include "common.cuh"
#include "gemm_tc.cuh"
#include "gemv_epilogue.cuh"
#include "mma_sync.cuh"
#include "trace.cuh"
#include "vec.cuh"
#include "wgmma.cuh"

namespace md {
namespace {

constexpr int kWarpsN = 4, kWarpsK = 2, kThreads = 32 * kWarpsN * kWarpsK;
constexpr int kMt = 2;                     // m16 tiles (16 output columns each) per warp: the wide tile's
constexpr int kKStage = 64;                // k per pipeline stage: one k32 step for each k group of warps
constexpr int kMaxStagesWg = 8;
constexpr int kMaxSplit = 8;

// MT m16 tiles a warp: 2 (128 columns a block, the wgmma form's only width) or 1 (64, the narrow tile: twice the
// blocks over n, so half the k splits). The mma.sync form's stages: 4 wide (16 KB of weights each), 8 narrow.
template <int MT> __host__ __device__ constexpr int cols() { return kWarpsN * MT * 16; }
constexpr int kCols = cols<kMt>();  // 128 output columns per block (the wide tile)
template <int MT> int64_t column_blocks(int64_t n) { return (n + cols<MT>() - 1) / cols<MT>(); }
template <int MT> __host__ __device__ constexpr int mma_stages() { return MT == kMt ? 4 : 8; }
template <int MT> __host__ __device__ constexpr int part_stride() { return cols<MT>() + 4; }  // distinct banks

// A stage: cols weight rows, then nb * 8 x rows, of kKStage elements (8 units of 16 bytes) each.
template <int NB, int MT = kMt> __host__ __device__ constexpr int stage_units() {
  return (cols<MT>() + NB * 8) * kKStage / 8;
}
// WG (the wgmma form): 1 KB more, to align the stages to the 1024-byte swizzle atoms.
template <int NB, bool WG, int MT> __host__ __device__ constexpr size_t smem_bytes(int stages) {
  const size_t pipe = size_t(stages) * stage_units<NB, MT>() * 16, part = size_t(NB) * 8 * part_stride<MT>() * 4;
  return (pipe > part ? pipe : part) + (WG ? 1024 : 0);
}
// Unit u of row r of a stage (mma.sync form): odd rows swap their two halves. (The wgmma form's stages are in
// the 128-byte swizzle, unit u ^ (r % 8), which its tensor maps and descriptors name.)
__device__ __forceinline__ int swizzle(int r, int u) { return r * 8 + (u ^ ((r & 1) << 2)); }

// The 16-byte units of a stage that this thread copies, worked out once: a stage's copies are then an add
// and a predicate each. Unit u = threadIdx.x % 8 of weight rows threadIdx.x / 8 + 32 j and of x rows likewise.
template <typename T, int NB, int MT>
struct StageCopies {
  static constexpr int kW = cols<MT>() * 8 / kThreads, kX = (NB * 64 + kThreads - 1) / kThreads;
  const T* w_src[kW];
  const T* x_src[kX];
  uint32_t w_dst[kW], x_dst[kX];  // byte offsets in a stage
  bool w_ok[kW], x_ok[kX];
  const T *w0, *x0;
  int u8;  // the units' first k in a stage

  __device__ explicit StageCopies(const md_gemv_params& p)
      : w0(static_cast<const T*>(p.w)), x0(static_cast<const T*>(p.x)), u8((threadIdx.x & 7) * 8) {
    const int u = threadIdx.x & 7;
#pragma unroll
    for (int j = 0; j < kW; ++j) {
      const int r = (threadIdx.x >> 3) + j * (kThreads / 8);
      const int64_t n = static_cast<int64_t>(blockIdx.x) * cols<MT>() + r;
      w_ok[j] = n < p.n;
      w_src[j] = w0 + (w_ok[j] ? n : 0) * p.w_row_stride + u8;
      w_dst[j] = swizzle(r, u) * 16;
    }
#pragma unroll
    for (int j = 0; j < kX; ++j) {
      const int m = (threadIdx.x >> 3) + j * (kThreads / 8);
      x_ok[j] = m < p.batch && m < NB * 8;
      x_src[j] = x0 + (x_ok[j] ? m : 0) * p.x_row_stride + u8;
      x_dst[j] = swizzle(cols<MT>() + (m < NB * 8 ? m : 0), u) * 16;
    }
  }
  // Weights of the stage at shared address `stage`, k from k0 (zeros from k_end on).
  __device__ __forceinline__ void weights(uint32_t stage, int64_t k0, int64_t k_end) const {
    const bool k_ok = k0 + u8 < k_end;
#pragma unroll
    for (int j = 0; j < kW; ++j) cp_async16(stage + w_dst[j], k_ok && w_ok[j] ? w_src[j] + k0 : w0, k_ok && w_ok[j]);
  }
  // x rows of the stage (zeros past the batch). Rows past NB * 8 (kX * 32 > NB * 8) are not copied.
  __device__ __forceinline__ void x(uint32_t stage, int64_t k0, int64_t k_end) const {
    const bool k_ok = k0 + u8 < k_end;
#pragma unroll
    for (int j = 0; j < kX; ++j) {
      if ((threadIdx.x >> 3) + j * (kThreads / 8) < NB * 8)
        cp_async16(stage + x_dst[j], k_ok && x_ok[j] ? x_src[j] + k0 : x0, k_ok && x_ok[j]);
    }
  }
};

// This warp's products of one stage, mma.sync form: warp (wn, kw) takes columns wn * MT * 16 .. (MT m16
// tiles) and the stage's k32 step kw, for every batch tile (fragments read from shared memory).
template <typename T, int NB, int MT>
__device__ __forceinline__ void stage_products_mma(float (&acc)[MT][NB][4], const uint4* buf, int wn, int kw,
                                                   int g, int t) {
  const int u = 4 * kw + t;  // this warp's k32 step of the stage: units 4 kw .. 4 kw + 3
  uint4 wv[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) wv[mt][h] = buf[swizzle(wn * (MT * 16) + mt * 16 + h * 8 + g, u)];
  uint4 xv[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) xv[nb] = buf[swizzle(cols<MT>() + nb * 8 + g, u)];
  // All first k16 halves, then all second ones: no product waits on the one just issued.
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma_units<T>(acc[mt][nb], wv[mt][0], wv[mt][1], xv[nb], half);
}

#if MD_WGMMA_DEVICE
// wgmma form: warpgroup kw takes the stage's k32 step kw for all kCols columns (two m64 tiles) and all
// NB * 8 batch rows; acc[mt] is the m64n(NB * 8) fragment (warp wn of the group: columns mt * 64 + wn * 16 ..).
template <typename T, int NB>
__device__ __forceinline__ void stage_products_wg(float (&acc)[kMt][NB][4], uint32_t stage, int kw) {
  wg_fence();
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    const uint32_t k_bytes = (kw * 2 + ks) * 32;  // k16 step kw * 2 + ks of the stage's 128-byte rows
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt)
      WgMma<T, NB * 8>::run(&acc[mt][0][0], wg_desc_sw128(stage + mt * 64 * 128 + k_bytes),
                            wg_desc_sw128(stage + kCols * 128 + k_bytes));
  }
  wg_commit();  // waited for after the next stage's products are issued (mainloop_wg)
}
#endif

// The wgmma form's tensor maps of w (box 64 k x kCols rows) and x (64 k x NB * 8 rows), 128-byte swizzle;
// unused by the mma.sync form.
struct TmaMaps {
  CUtensorMap w, x;
};

// The block's k stages: stage s (< nst) covers k_of(s) .. + kKStage - 1 in buffer s % stages (shared address
// addr(s)). Each block starts at its own stage and wraps around: every block reads the same x, and blocks in
// step would all ask the same few L2 lines for it at once.
template <int NB, int MT>
struct Plan {
  uint32_t stage0;
  int nst, rot, stages;
  int64_t k_lo, k_hi;
  __device__ int64_t k_of(int s) const {
    const int r = s + rot;
    return k_lo + (r < nst ? r : r - nst) * kKStage;
  }
  __device__ uint32_t addr(int s) const { return stage0 + (s % stages) * (stage_units<NB, MT>() * 16); }
};

// mma.sync form: every thread copies its 16-byte units of each stage with cp.async, kStages - 1 stages ahead.
template <typename T, int NB, int MT>
__device__ __forceinline__ void mainloop_mma(float (&acc)[MT][NB][4], const md_gemv_params& p,
                                             const Plan<NB, MT>& pl, const uint4* stages, int wn, int kw, int g,
                                             int t) {
  constexpr int kStages = mma_stages<MT>();
  const StageCopies<T, NB, MT> copies(p);
  // The first stages' weights go out before the wait: no kernel writes them.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s)
    if (s < pl.nst) copies.weights(pl.addr(s), pl.k_of(s), pl.k_hi);
  pdl_wait();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < pl.nst) copies.x(pl.addr(s), pl.k_of(s), pl.k_hi);
    cp_async_commit();  // group s (group 0 also holds every early weight copy)
  }
  for (int it = 0; it < pl.nst; ++it) {
    cp_async_wait<kStages - 2>();  // stage it has landed (for this thread's copies) ...
    __syncthreads();               // ... for every thread's; and stage it - 1 is read by all
    const int next = it + kStages - 1;
    if (next < pl.nst) {
      copies.weights(pl.addr(next), pl.k_of(next), pl.k_hi);
      copies.x(pl.addr(next), pl.k_of(next), pl.k_hi);
    }
    cp_async_commit();
    stage_products_mma<T, NB, MT>(acc, stages + (it % kStages) * stage_units<NB, MT>(), wn, kw, g, t);
  }
  cp_async_wait<0>();
}

#if MD_WGMMA_DEVICE
// wgmma form: thread 0 fills all stages' buffers first (the weights before the wait), then refills the buffer of
// stage it - 1 with stage it - 1 + stages once both warpgroups released it (one `empty` arrival a warp, made
// when its products of stage it are issued and those of stage it - 1 done). There is no barrier over the block:
// only warpgroup 0 waits, for warpgroup 1 to have reached the stage it is at.
template <typename T, int NB>
__device__ __forceinline__ void mainloop_wg(float (&acc)[kMt][NB][4], const Plan<NB, kMt>& pl,
                                            const TmaMaps& maps, uint32_t full0, uint32_t empty0, int kw) {
  constexpr uint32_t kBytes = stage_units<NB>() * 16;
  const int S = pl.stages;
  const bool leader = threadIdx.x == 0, lane0 = (threadIdx.x & 31) == 0;
  const int32_t row0 = static_cast<int32_t>(blockIdx.x) * kCols;
  auto full = [&](int s) { return full0 + (s % S) * 8; };
  auto empty = [&](int s) { return empty0 + (s % S) * 8; };
  auto load = [&](int s, const CUtensorMap* map, uint32_t offset, int32_t row) {
    tma_load_2d(pl.addr(s) + offset, map, static_cast<int32_t>(pl.k_of(s)), row, full(s));
  };
  const int early = min(S, pl.nst);
  if (leader) {
    for (int s = 0; s < S; ++s) {
      mbar_init(full0 + s * 8, 1);
      mbar_init(empty0 + s * 8, kThreads / 32);
    }
    fence_mbar_init();
    for (int s = 0; s < early; ++s) {  // the weights before the wait: no kernel writes them
      mbar_expect_tx(full(s), kBytes);
      load(s, &maps.w, 0, row0);
    }
  }
  __syncthreads();
  pdl_wait();
  if (leader)
    for (int s = 0; s < early; ++s) load(s, &maps.x, kCols * 128, 0);
  for (int it = 0; it < pl.nst; ++it) {
    mbar_wait(full(it), (it / S) & 1);
    stage_products_wg<T, NB>(acc, pl.addr(it), kw);
    wg_wait_one();  // this warp's products of stage it - 1 are done: its buffer may be refilled
    if (it == 0) continue;
    if (lane0) mbar_arrive(empty(it - 1));
    const int next = it - 1 + S;
    if (leader && next < pl.nst) {
      mbar_wait(empty(it - 1), ((it - 1) / S) & 1);
      mbar_expect_tx(full(next), kBytes);
      load(next, &maps.w, 0, row0);
      load(next, &maps.x, kCols * 128, 0);
    }
  }
  wg_wait_all();
}
#endif

// Grid: (ceil(n / cols<MT>), S), clusters of (1, S, 1); krange: the k of one split (multiple of 64).
// WG: the wgmma form (built for sm_90a only; NB 1, 2, 4 or 8; MT 2; `maps` set; `stages` buffers, at most
// kMaxStagesWg), else mma.sync (mma_stages<MT>).
template <typename T, int NB, bool WG, int MT>
__global__ void __launch_bounds__(kThreads, 2)
    gemv_tc_kernel(const md_gemv_params p, int64_t krange, int stages, const __grid_constant__ TmaMaps maps) {
  static_assert(!WG || MT == kMt, "the wgmma form's tiles are 128 columns wide");
  constexpr int kBlockCols = cols<MT>(), kPartStride = part_stride<MT>();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (WG && !MD_WGMMA_DEVICE) __trap();  // the wgmma form in code not built for sm_90a: wgmma_form said no
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  unsigned char* aligned = smem + (WG ? (1024 - (smem_addr & 1023)) & 1023 : 0);
  uint4* stage_buf = reinterpret_cast<uint4*>(aligned);
  float* part = reinterpret_cast<float*>(aligned);  // after the products, over the stages
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wn = warp % kWarpsN, kw = warp / kWarpsN;
  Plan<NB, MT> pl;
  pl.stage0 = static_cast<uint32_t>(__cvta_generic_to_shared(stage_buf));
  pl.stages = WG ? stages : mma_stages<MT>();
  pl.k_lo = static_cast<int64_t>(blockIdx.y) * krange;
  pl.k_hi = min(p.k, pl.k_lo + krange);
  pl.nst = pl.k_hi > pl.k_lo ? static_cast<int>((pl.k_hi - pl.k_lo + kKStage - 1) / kKStage) : 0;
  pl.rot = pl.nst > 0 ? static_cast<int>(blockIdx.x % pl.nst) : 0;

  float acc[MT][NB][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mt][nb][j] = 0.f;

  TraceStamps trace;  // nothing unless built with MD_KERNEL_TRACE (trace.cuh)
  trace.stamp(kTraceEntry);
  pdl_release();
#if MD_WGMMA_DEVICE
  if constexpr (WG) {
    __shared__ __align__(8) uint64_t bars[2 * kMaxStagesWg];  // the stages' full, then empty mbarriers
    const uint32_t bar0 = static_cast<uint32_t>(__cvta_generic_to_shared(bars));
    mainloop_wg<T, NB>(acc, pl, maps, bar0, bar0 + kMaxStagesWg * 8, kw);
  }
#endif
  if constexpr (!WG) mainloop_mma<T, NB, MT>(acc, p, pl, stage_buf, wn, kw, g, t);

  // Partial sums -> part[m][column]: the k groups one after the other (a fixed order).
  __syncthreads();
  trace.stamp(kTraceMainEnd);
#pragma unroll
  for (int q = 0; q < kWarpsK; ++q) {
    if (kw == q) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
          const int col0 = WG ? mt * 64 + wn * 16 : wn * (MT * 16) + mt * 16;  // the fragment's first column
          float* pp = part + (nb * 8 + 2 * t) * kPartStride + col0 + g;
          const float* c = acc[mt][nb];
          if (q == 0) {
            pp[0] = c[0]; pp[kPartStride] = c[1]; pp[8] = c[2]; pp[kPartStride + 8] = c[3];
          } else {
            pp[0] += c[0]; pp[kPartStride] += c[1]; pp[8] += c[2]; pp[kPartStride + 8] += c[3];
          }
        }
    }
    __syncthreads();
  }

  trace.stamp(kTracePartials);
  const uint32_t S = gridDim.y, rank = S > 1 ? cluster_rank() : 0;
  if (S > 1) cluster_sync();
  trace.stamp(kTraceSync1);
  constexpr int kQuads = kBlockCols / 4;  // 4 columns a thread: one 16-byte load from each block of the cluster
  const int64_t total = p.batch * kQuads, per = (total + S - 1) / S;
  const int64_t e_hi = min(total, (rank + 1) * per);
  for (int64_t e = rank * per + threadIdx.x; e < e_hi; e += kThreads) {
    const int64_t m = e / kQuads, col = e % kQuads * 4, n = static_cast<int64_t>(blockIdx.x) * kBlockCols + col;
    const float* src = part + m * kPartStride + col;
    const float4 sum = cluster_sum4<kMaxSplit>(src, S);
    float vals[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (n + j >= p.n) break;
      if (p.bias) vals[j] += to_f(static_cast<const T*>(p.bias)[n + j]);
      if (p.conv_dim > 0 && n + j >= p.conv_lo && n + j < p.conv_lo + p.conv_dim)
        vals[j] = conv_epilogue<T>(p, m, n + j - p.conv_lo, vals[j]);
    }
    T* dst = static_cast<T*>(p.out) + m * p.out_row_stride + n;
    if (n + 3 < p.n && (reinterpret_cast<uintptr_t>(dst) & 7) == 0) {  // the 4 columns as one 8-byte store
      store4<T>(dst, vals);
    } else {
      for (int j = 0; j < 4 && n + j < p.n; ++j) dst[j] = from_f<T>(vals[j]);
    }
  }
  trace.stamp(kTraceReduced);
  if (S > 1) cluster_sync_exit();  // no block leaves while another still reads its partial sums
  trace.stamp(kTraceExit);
  if (threadIdx.x == 0) trace.write();
#else
  __trap();  // launch_gemv_tc runs it on compute capability 9.0+ only
#endif
}

// cuTensorMapEncodeTiled from the driver the runtime loaded (nullptr where it has none).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess || found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// A (rows, k) 16-bit row-strided matrix as tiles of 64 k x box_rows rows in the 128-byte swizzle (zeros outside).
bool encode_tile_map(CUtensorMap* map, const void* base, int64_t dtype, int64_t k, int64_t rows, int64_t row_stride,
                     uint32_t box_rows) {
  const EncodeTiled fn = encode_tiled();
  if (fn == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {kKStage, box_rows}, elem_strides[2] = {1, 1};
  const CUtensorMapDataType type =
      dtype == MD_FLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return fn(map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) ==
         CUDA_SUCCESS;
}

// The k splits of a grid of col_blocks column blocks: about one block a multiprocessor (two fit), each split at
// least 512 of k: measured on the H200, a mamba-1.4b in_proj (64 column blocks) took 13 us in 2 splits of 16
// stages and 19 us in 4 of 8. Then one more split where the blocks would cover under 3/4 of the multiprocessors
// (some take two blocks): the 2.7b / 2.8b projections of 80 blocks left 52 of 132 idle; 160 made their batch-16
// step 7-10% faster (H100, session 32), and the shapes of 128 blocks keep theirs.
int k_splits(int64_t col_blocks, int64_t k, int64_t sms) {
  int split = 1;
  while (split < kMaxSplit && col_blocks * split * 2 <= sms + sms / 8 && k >= 1024 * split) split *= 2;
  if (split < kMaxSplit && col_blocks * split * 4 < sms * 3 && k >= 1024 * split) split *= 2;
  return split;
}

// sms: the device's multiprocessors (launch_typed asks once).
template <typename T, int NB, bool WG = false, int MT = kMt>
cudaError_t launch_nb(const md_gemv_params& p, int64_t sms, cudaStream_t stream) {
  const auto kernel = gemv_tc_kernel<T, NB, WG, MT>;
  TmaMaps maps{};
  // One x row (algo 5 at batch 1, where gemv_tc_ok asks nothing of its stride): any stride of whole 16-byte units.
  const int64_t x_stride = p.batch == 1 ? (p.k + 7) / 8 * 8 : p.x_row_stride;
  if (WG && !(encode_tile_map(&maps.w, p.w, p.dtype, p.k, p.n, p.w_row_stride, cols<MT>()) &&
              encode_tile_map(&maps.x, p.x, p.dtype, p.k, p.batch, x_stride, NB * 8)))
    return cudaErrorInvalidValue;
  const int64_t col_blocks = column_blocks<MT>(p.n);
  const int split = k_splits(col_blocks, p.k, sms);
  const int64_t krange = ((p.k + split - 1) / split + 63) / 64 * 64;
  // The wgmma form: 8 stages in flight where every block has a multiprocessor of its own, 4 where two share one,
  // or where clusters of 8 would each need 8 free multiprocessors of a GPC (an out_proj's 16 clusters of 8 then
  // started in two waves, 10 us apart: H100, session 37).
  const int stages = !WG ? mma_stages<MT>() : col_blocks * split <= sms && split <= 4 ? kMaxStagesWg : 4;
  const size_t smem = smem_bytes<NB, WG, MT>(stages);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;

  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(split));
  return launch_pdl_cluster(kernel, grid, kThreads, smem, stream, static_cast<unsigned>(split), p, krange,
                            stages, maps);
}

template <typename T>
cudaError_t launch_typed(const md_gemv_params& p, cudaStream_t s) {
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
  if ((p.batch > 16 || p.algo == MD_GEMV_ALGO_WGMMA) && wgmma_form(p)) {  // n = 8, 16, 32 or 64 batch rows a product
    if (p.batch > 32) return launch_nb<T, 8, true>(p, sms, s);
    if (p.batch > 16) return launch_nb<T, 4, true>(p, sms, s);
    return p.batch > 8 ? launch_nb<T, 2, true>(p, sms, s) : launch_nb<T, 1, true>(p, sms, s);
  }
  // 9-16 rows, where the wide tile's k would be split over a cluster: the narrow tile, with half the splits
  // (whole k where the wide one had 2: no cluster, no reduction through distributed shared memory). H100,
  // session 38, ms a batch-16 step: mamba-1.4b 2.146 -> 2.118, mamba2-1.3b 3.025 -> 2.912, mamba-2.8b 3.743 ->
  // 3.667; at batch 8 mamba-1.4b lost (1.763 -> 1.838) while the other two gained 1-3%, so 1-8 rows keep the wide.
  if (p.batch > 8 && p.batch <= 16 && k_splits(column_blocks<kMt>(p.n), p.k, sms) > 1)
    return launch_nb<T, 2, false, 1>(p, sms, s);
  return with_batch_tiles(p.batch, [&](auto nb) { return launch_nb<T, decltype(nb)::value>(p, sms, s); });
}

}  // namespace

bool wgmma_form(const md_gemv_params& p) {
#if defined(MD_WGMMA_BUILT)
  return p.algo != MD_GEMV_ALGO_MMA_SYNC && device_attribute(cudaDevAttrComputeCapabilityMajor, 0) == 9 &&
         device_attribute(cudaDevAttrComputeCapabilityMinor, 0) == 0 && encode_tiled() != nullptr;
#else
  return false;
#endif
}

bool gemv_tc_ok(const md_gemv_params& p) {
  return (p.dtype == MD_FLOAT16 || p.dtype == MD_BFLOAT16) && p.batch >= 1 && p.batch <= MD_GEMV_TC_MAX_BATCH &&
         p.k % 8 == 0 && p.w_row_stride % 8 == 0 && (p.batch == 1 || p.x_row_stride % 8 == 0) && is_aligned(p.w) &&
         is_aligned(p.x) && device_attribute(cudaDevAttrComputeCapabilityMajor, 0) >= 9;
}

cudaError_t launch_gemv_tc(const md_gemv_params& p, cudaStream_t stream) {
  if (skinny_form(p)) return launch_gemv_skinny(p, stream);
  return p.dtype == MD_FLOAT16 ? launch_typed<__half>(p, stream) : launch_typed<__nv_bfloat16>(p, stream);
}

}  // namespace md

#ifdef MD_KERNEL_TRACE
extern "C" cudaError_t md_gemv_tc_trace_read(uint64_t* rows, uint32_t* calls) { return md::trace_read(rows, calls); }
#endif
