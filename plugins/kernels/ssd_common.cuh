// ssd_common.cuh -- what the kernels of Mamba2's SSD chunk scan share (ssd_carry.cu, ssd_chunk.cu): the chunk
// size, the launch arguments, the hi + lo split of float32 operands and the tile copies.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "vec.cuh"

namespace md {
namespace ssd {

constexpr int kQ = 64;         // steps per chunk
constexpr int kPad = 8;        // 16-bit row padding (16 bytes): rows stay 32-byte aligned per 16-row tile

struct SsdArgs {
  md_ssm_params p;
  int64_t nchunks;
  int clamp_dt;
  void* states;   // (batch, nchunks, nheads, headdim, dstate): the state entering chunk c, float32, or the state's
                 // dtype where that is 16-bit (ssd_chunk.cu: S_in)
  float* dts;     // (batch, nchunks, nheads, 2, kQ): dt_s and cum_s of chunk c (ssd_dt_kernel)
};

template <typename T>
__device__ __forceinline__ void split(float v, T* hi, T* lo) {
  const T h = from_f<T>(v);
  *hi = h;
  *lo = from_f<T>(v - to_f(h));
}

// Whether 8-element pieces of rows starting at `base`, `row_stride` apart, can move as 16-byte vectors.
template <typename T>
__device__ __forceinline__ bool vectorisable(const T* base, int64_t row_stride, int64_t col_stride) {
  return col_stride == 1 && is_aligned(base) && (row_stride * sizeof(T)) % 16 == 0;
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

// A thread's share of copying a tile of `cols` 16-bit columns (a multiple of 8), 8 elements at a time: columns
// c .. c + 7 of rows r0, r0 + rstep, ..; rstep 0: none (cols / 8 not dividing the block). Worked out once per
// kernel: the copies then cost an add each, not a division.
struct TileShare {
  int r0 = 0, c = 0, rstep = 0;
  __device__ TileShare(int cols, int nthreads) {
    const int per_row = cols / 8, used = nthreads / per_row * per_row;
    if (static_cast<int>(threadIdx.x) >= used) return;
    r0 = threadIdx.x / per_row;
    c = (threadIdx.x % per_row) * 8;
    rstep = nthreads / per_row;
  }
};

// kQ rows of a tile at src into dst (row-major, ld; 16-byte aligned rows) by plain loads, zero rows past
// `valid_rows`: the copy for rows that are not 16-byte vectors (RowPieces moves those that are).
template <typename T>
__device__ inline void load_tile(T* dst, int ld, const T* src, int64_t row_stride, int64_t col_stride, int valid_rows,
                                 const TileShare& share) {
  if (share.rstep == 0) return;
  for (int r = share.r0; r < kQ; r += share.rstep) {
    __align__(16) T e[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      e[k] = r < valid_rows ? src[r * row_stride + (share.c + k) * col_stride] : from_f<T>(0.f);
    }
    *reinterpret_cast<uint4*>(dst + r * ld + share.c) = *reinterpret_cast<const uint4*>(e);
  }
}

// A thread's share of copying kQ rows of `cols` 16-bit columns (a multiple of 8) by 16-byte cp.async pieces
// (TileShare's columns and rows), from source rows `row_stride` elements apart into shared rows `ld` elements
// apart. Offsets are worked out once: a piece then costs its cp.async and an add or two. The caller checked
// vectorisable() and commits.
template <typename T>
struct RowPieces {
  const T* src = nullptr;  // the thread's first piece of a tile at `base`
  int64_t src_step = 0;    // between the thread's pieces (rstep rows), elements
  uint32_t dst = 0, dst_step = 0;  // the first piece's byte offset in the shared tile; between pieces
  int r0 = kQ, rstep = 0;  // r0 kQ: no piece
  __device__ RowPieces(const T* base, int64_t row_stride, int cols, int ld, int nthreads) {
    const TileShare share(cols, nthreads);
    if (share.rstep == 0) return;
    r0 = share.r0;
    rstep = share.rstep;
    src = base + share.r0 * row_stride + share.c;
    src_step = share.rstep * row_stride;
    dst = (share.r0 * ld + share.c) * sizeof(T);
    dst_step = share.rstep * ld * sizeof(T);
  }
  // The tile `offset` elements past base into shared `tile`: rows valid_rows and on are zeros.
  __device__ __forceinline__ void copy(uint32_t tile, int64_t offset, int valid_rows) const {
    const T* from = src + offset;
    uint32_t to = tile + dst;
    for (int r = r0; r < kQ; r += rstep, from += src_step, to += dst_step) cp_async16(to, from, r < valid_rows);
  }
  // The same, unrolled, where kN pieces a thread cover the tile (rstep * kN >= kQ).
  template <int kN>
  __device__ __forceinline__ void copy_n(uint32_t tile, int64_t offset, int valid_rows) const {
    const T* from = src + offset;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int r = r0 + i * rstep;
      if (r < kQ) cp_async16(tile + dst + i * dst_step, from + i * src_step, r < valid_rows);
    }
  }
};

// The chunk states of (batch, nchunks, nheads) into a.states, and each chunk's dt_s / cum_s into a.dts
// (ssd_carry.cu: ssd_dt_kernel, then ssd_carry_kernel); T the 16-bit input type, S the state type.
template <typename T, typename S>
cudaError_t launch_states(const SsdArgs& a, cudaStream_t stream);
// Shared memory of ssd_carry_kernel (16-bit inputs) at this dstate.
size_t states_smem_bytes(int dstate);

}  // namespace ssd
}  // namespace md
