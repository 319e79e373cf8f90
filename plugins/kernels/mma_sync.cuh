// mma_sync.cuh -- mma.sync m16n8k16 with float32 accumulators for the 16-bit dtypes (gemm_tc.cu,
// gemv_skinny.cu, gemv_staged.cu, ssd_chunk.cu, ssd_carry.cu), the 16-byte-unit fragment convention the GEMVs use,
// and fragment helpers.
//
// A thread (g = lane / 4, t = lane % 4) loads 16 bytes (8 consecutive k, 8t .. 8t + 7 of a k32 step) of
// weight rows g and g + 8 and of x row g; a dot product does not depend on the order of its k, so each
// 16-byte pair feeds two k16 products (k = 8t + 0..3, then 8t + 4..7, standing for the fragments'
// k = 2t, 2t+1, 2t+8, 2t+9) with no shuffle and no ldmatrix: mma_units below.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace md {

// c += a (16 x 16, rows) b (16 x 8, columns), float32 accumulators, T = __half or __nv_bfloat16.
template <typename T> struct Mma;
#define MD_MMA_16816(T, PTX_TYPE)                                                                                \
  template <> struct Mma<T> {                                                                                    \
    static __device__ __forceinline__ void run(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,     \
                                               uint32_t b0, uint32_t b1) {                                       \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 {%0, %1, %2, %3}, "              \
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                                                        \
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                       \
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));                                               \
    }                                                                                                            \
  };
MD_MMA_16816(__half, "f16")
MD_MMA_16816(__nv_bfloat16, "bf16")
#undef MD_MMA_16816

// The first (half 0) or second (half 1) k16 product of one k32 step: c (16 columns g, g + 8 x 8 batch rows)
// += w rows (w_lo: row g, w_hi: row g + 8) . x row, each a 16-byte unit of 8 consecutive k.
template <typename T>
__device__ __forceinline__ void mma_units(float* c, const uint4& w_lo, const uint4& w_hi, const uint4& x, int half) {
  if (half == 0)
    Mma<T>::run(c, w_lo.x, w_hi.x, w_lo.y, w_hi.y, x.x, x.y);
  else
    Mma<T>::run(c, w_lo.z, w_hi.z, w_lo.w, w_hi.w, x.z, x.w);
}

// Four 8 x 8 matrices of 16-bit elements from shared memory: lane l gives the address of row l % 8 of matrix
// l / 8; d[m] then holds matrix m's elements (g, 2t) and (g, 2t + 1) -- an mma A fragment of row-major rows (16
// bytes of k a row), or two B fragments of rows of n.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], uint32_t shared_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(shared_addr));
}

// The same, transposed: lane l gives the address of row l % 8 of
// matrix l / 8; d[m] then holds matrix m's elements (2t, g) and (2t + 1, g) -- the mma B fragment of a
// row-major k x n tile (rows k, 16-byte rows of n).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&d)[4], uint32_t shared_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(shared_addr));
}

// Two floats as one 32-bit register of T (a in the low half), and back.
template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t v);
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t v) {
  return __half22float2(*reinterpret_cast<const __half2*>(&v));
}
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t v) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}

// (a, b) as hi + lo pairs of T (hi = round(v), lo = round(v - hi)): about 16 mantissa bits through a 16-bit mma.
template <typename T>
__device__ __forceinline__ void split2(float a, float b, uint32_t* hi, uint32_t* lo) {
  *hi = pack2<T>(a, b);
  const float2 h = unpack2<T>(*hi);
  *lo = pack2<T>(a - h.x, b - h.y);
}

}  // namespace md
