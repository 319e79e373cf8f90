// vec.cuh -- vector loads and stores of 8 (or 4) elements as floats (gemv.cu, mamba1_step.cu, mamba2_step.cu,
// ssd_chunk.cu, causal_conv1d.cu), and the 16-byte asynchronous copy into shared memory (gemm_tc.cu, ssd_chunk.cu).
#pragma once

#include "common.cuh"

namespace md {

// 16 bytes -> 16 / sizeof(T) floats.
template <typename T> struct Pack { static constexpr int N = 16 / sizeof(T); };
__device__ __forceinline__ void unpack(const uint4& v, float* f, float) {
  f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y); f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack(const uint4& v, float* f, __half) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) { const float2 t = __half22float2(h[i]); f[2 * i] = t.x; f[2 * i + 1] = t.y; }
}
__device__ __forceinline__ void unpack(const uint4& v, float* f, __nv_bfloat16) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) { const float2 t = __bfloat1622float2(h[i]); f[2 * i] = t.x; f[2 * i + 1] = t.y; }
}

// 8 consecutive elements (16-byte aligned) -> floats, their 16-byte vectors read by load(const uint4*).
template <typename T, typename Load>
__device__ __forceinline__ void load8_by(const T* ptr, float* f, Load load) {
  const uint4* v = reinterpret_cast<const uint4*>(ptr);
  unpack(load(v), f, T());
  if constexpr (sizeof(T) == 4) unpack(load(v + 1), f + 4, T());
}
// Through the non-coherent path: what no kernel writes while this one runs.
template <typename T>
__device__ __forceinline__ void load8(const T* ptr, float* f) {
  load8_by(ptr, f, [](const uint4* v) { return __ldg(v); });
}
// Through the L2 alone: coherent with another block or kernel that may still be writing them.
template <typename T>
__device__ __forceinline__ void load8_cg(const T* ptr, float* f) {
  load8_by(ptr, f, [](const uint4* v) { return __ldcg(v); });
}
// Plain loads: from shared memory, or from global memory that this kernel itself writes (so not the non-coherent
// path).
template <typename T>
__device__ __forceinline__ void load8_plain(const T* ptr, float* f) {
  load8_by(ptr, f, [](const uint4* v) { return *v; });
}
__device__ __forceinline__ void load8_any(const void* ptr, int64_t dtype, int64_t i, float* f) {
  if (dtype == MD_FLOAT32) load8(static_cast<const float*>(ptr) + i, f);
  else if (dtype == MD_FLOAT16) load8(static_cast<const __half*>(ptr) + i, f);
  else load8(static_cast<const __nv_bfloat16*>(ptr) + i, f);
}
// floats -> 8 consecutive elements (16-byte aligned), as 16-byte stores.
template <typename T>
__device__ __forceinline__ void store8(T* ptr, const float* f) {
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(ptr)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(ptr)[1] = make_float4(f[4], f[5], f[6], f[7]);
  } else {
    __align__(16) T v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = from_f<T>(f[j]);
    *reinterpret_cast<uint4*>(ptr) = *reinterpret_cast<const uint4*>(v);
  }
}
// As store8 (16-byte aligned): one branch on the dtype, not one per element.
__device__ __forceinline__ void store8_any(void* ptr, int64_t dtype, int64_t i, const float* f) {
  if (dtype == MD_FLOAT32) store8(static_cast<float*>(ptr) + i, f);
  else if (dtype == MD_FLOAT16) store8(static_cast<__half*>(ptr) + i, f);
  else store8(static_cast<__nv_bfloat16*>(ptr) + i, f);
}

// 8 floats rounded to dtype and back (what storing them in dtype and loading them again gives), one branch on the
// dtype: from_f / to_f, as store8 and load8 convert.
template <typename T>
__device__ __forceinline__ void round8(float (&v)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = to_f(from_f<T>(v[j]));
}
__device__ __forceinline__ void round8_any(float (&v)[8], int64_t dtype) {
  if (dtype == MD_FLOAT16) round8<__half>(v);
  else if (dtype == MD_BFLOAT16) round8<__nv_bfloat16>(v);
}

// The row norm of 8 elements a thread (norms.cu's row_norm_kernel and the GEMV's norm prologue share it, so the two
// agree bit for bit): v <- v * silu(o) (gated) or v + o (residual); the thread's sum of squares; v <- v * (inv * w).
__device__ __forceinline__ void norm_combine8(float (&v)[8], const float (&o)[8], bool gate) {
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = gate ? v[j] * silu(o[j]) : v[j] + o[j];
}
__device__ __forceinline__ float sum_squares8(const float (&v)[8], float ss) {
#pragma unroll
  for (int j = 0; j < 8; ++j) ss = fmaf(v[j], v[j], ss);
  return ss;
}
// 1 / rms of a row of n from the block's sum of squares.
__device__ __forceinline__ float rms_inverse(float block_ss, int64_t n, double eps) {
  return rsqrtf(block_ss / static_cast<float>(n) + static_cast<float>(eps));
}
__device__ __forceinline__ void norm_scale8(float (&v)[8], float inv, const float (&w)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] *= inv * w[j];
}

// 8 bytes of a 16-bit type S -> 4 floats.
template <typename S> __device__ __forceinline__ void unpack4(const uint2& v, float* f) {
  const S* h = reinterpret_cast<const S*>(&v);
#pragma unroll
  for (int j = 0; j < 4; ++j) f[j] = to_f(h[j]);
}
// 4 consecutive elements <-> floats (16 bytes of float32, 8 of a 16-bit type; aligned: mamba1_step.cu).
template <typename S> __device__ __forceinline__ void load4(const S* ptr, float* f) {
  if constexpr (sizeof(S) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(ptr);
    f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(ptr);
    unpack4<S>(v, f);
  }
}
template <typename S> __device__ __forceinline__ void store4(S* ptr, const float* f) {
  if constexpr (sizeof(S) == 4) {
    *reinterpret_cast<float4*>(ptr) = make_float4(f[0], f[1], f[2], f[3]);
  } else {
    __align__(8) S h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = from_f<S>(f[j]);
    *reinterpret_cast<uint2*>(ptr) = *reinterpret_cast<const uint2*>(h);
  }
}

// The shared-window address of a generic pointer into shared memory: what cp.async, ldmatrix and the bulk copies
// (bulk.cuh) take.
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async: 16 bytes global -> shared (a shared-window address), zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

}  // namespace md
