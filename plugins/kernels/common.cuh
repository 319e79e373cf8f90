// common.cuh -- dtype helpers, checks and reductions shared by the kernels (device + host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "mamba_kernels.h"

namespace md {

// ---- float <-> storage type --------------------------------------------------------------------
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Load / store one element whose dtype is only known at run time (uniform branch; used for small
// parameters and for the memory-bound norm kernels).
__device__ __forceinline__ float load_any(const void* p, int64_t dtype, int64_t i) {
  if (dtype == MD_FLOAT32) return static_cast<const float*>(p)[i];
  if (dtype == MD_FLOAT16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ void store_any(void* p, int64_t dtype, int64_t i, float v) {
  if (dtype == MD_FLOAT32) static_cast<float*>(p)[i] = v;
  else if (dtype == MD_FLOAT16) static_cast<__half*>(p)[i] = __float2half_rn(v);
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// The state row of batch row b: state_rows[b], or b when there is no index (mamba_kernels.h).
__device__ __forceinline__ int64_t state_row(const int64_t* state_rows, int64_t b) {
  return state_rows != nullptr ? __ldg(state_rows + b) : b;
}

constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = 2^(x log2(e)): the scans' decays in exp2

// 2^x in one MUFU instruction (max error 2 ulp; results below 2^-126 flush to zero: a decayed state).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float softplus(float v) { return v <= 20.f ? log1pf(__expf(v)) : v; }
// softplus with a correctly rounded exp: the decode steps' (mamba2_step.cu, mamba1_step.cu), whose results
// the tests pin bit for bit across their forms.
__device__ __forceinline__ float softplus_exact(float v) { return v <= 20.f ? log1pf(expf(v)) : v; }
// The division is __fdividef's (2 ulp; 0 where 1 + exp(-v) passes 2^126, v < -87: silu's limit there), not the
// correctly rounded one: its Newton steps and slow-path check made Mamba2's gated norm at 2,048 x 4,096 27 us
// instead of 20 and the prefill conv 18 instead of 15 (H200; their byte floors are 11.7 and 8.3 us).
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + __expf(-v)); }
// softplus and silu through fast_exp2 (results below 2^-126 flush to zero): the Mamba1 walk's step loop, where
// __expf's range checks cost 6 instructions a step. silu_ftz is 0 past 2^126 (v < -88): its limit.
__device__ __forceinline__ float softplus_ftz(float v) { return v <= 20.f ? log1pf(fast_exp2(v * kLog2e)) : v; }
__device__ __forceinline__ float silu_ftz(float v) { return __fdividef(v, 1.f + fast_exp2(-v * kLog2e)); }

// Whether a scan clamps its discretised dt (md_ssm_params: dt_min 0 and dt_max infinity mean no clamp).
inline int clamps_dt(const md_ssm_params& p) { return (p.dt_min > 0.0 || std::isfinite(p.dt_max)) ? 1 : 0; }
// A step's discretised dt from dt + bias: softplus where the params ask, then the clamp where `clamp`
// (clamps_dt, worked out once on the host).
__device__ __forceinline__ float discretise_dt(const md_ssm_params& p, int clamp, float dt) {
  if (p.dt_softplus) dt = softplus(dt);
  if (clamp) dt = fminf(fmaxf(dt, static_cast<float>(p.dt_min)), static_cast<float>(p.dt_max));
  return dt;
}

// discretise_dt for the Mamba1 walks' loops (mamba1_walk.cu, mamba1_split.cu): softplus_ftz, and the clamp's bounds
// converted to floats once, on the host, not in every step.
struct DtFtz {
  int softplus, clamp;
  float lo, hi;
  static DtFtz of(const md_ssm_params& p) {
    return {p.dt_softplus ? 1 : 0, clamps_dt(p), static_cast<float>(p.dt_min), static_cast<float>(p.dt_max)};
  }
  __device__ __forceinline__ float operator()(float dt) const {
    if (softplus) dt = softplus_ftz(dt);
    if (clamp) dt = fminf(fmaxf(dt, lo), hi);
    return dt;
  }
};

// Sum over the `width` consecutive lanes of each aligned lane group (width: power of two <= 32).
template <int WIDTH> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Partial sums v[0 .. kLen) over a group of 2 kM lanes (lane q of the group). Each round (partner at lane distance
// kM) halves the values a lane keeps: the half it sends, its partner adds; the pairs added are group_sum's, round
// for round, so every sum has group_sum's bits. With kLen >= 2 kM, afterwards v[i], i < kLen / (2 kM), is the
// group's sum of value q kLen / (2 kM) + i; with fewer values the rounds stop once a lane keeps one, and v[0] is a
// partial sum of value q / (2 kM / kLen) that group_sum over the 2 kM / kLen lanes left finishes (rows_sum).
// Rounds as template recursion: every index a constant.
template <int kM, int kLen, int N>
__device__ __forceinline__ void reduce_scatter(float (&v)[N], int q) {
  if constexpr (kM >= 1 && kLen >= 2) {
    const bool upper = (q & kM) != 0;
#pragma unroll
    for (int i = 0; i < kLen / 2; ++i) {
      const float lo = v[i], hi = v[i + kLen / 2];
      v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, kM);
    }
    reduce_scatter<kM / 2, kLen / 2>(v, q);
  }
}

// group_sum<WIDTH> of each of a lane's N values (N a power of two <= WIDTH) in fewer shuffles (31 for 32 values
// over 32 lanes, not 160): returns sum N * q / WIDTH, q the lane within its group of WIDTH (on every lane of each
// aligned run of WIDTH / N lanes), the same bits as group_sum<WIDTH>.
template <int WIDTH = 32, int N>
__device__ __forceinline__ float rows_sum(float (&v)[N]) {
  static_assert(N >= 1 && N <= WIDTH && (N & (N - 1)) == 0, "a power of two of values, at most a lane each");
  reduce_scatter<WIDTH / 2, N>(v, static_cast<int>(threadIdx.x & (WIDTH - 1)));
  return group_sum<WIDTH / N>(v[0]);
}

// The sum over warps first .. first + nwarps - 1 of the warps' own sums (each warp's lanes added by group_sum
// first, then the warps' sums by one more); every thread gets the sum of its group. `sync()` is the barrier of the
// threads that take part; `scratch`: a float a warp of shared memory.
template <typename Sync>
__device__ __forceinline__ float warp_group_sum(float v, float* scratch, int first, int nwarps, Sync sync) {
  v = group_sum<32>(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  sync();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  sync();
  float s = lane < nwarps ? scratch[first + lane] : 0.f;
  s = group_sum<32>(s);
  return s;
}

// The 128-byte line holding `p` into the L2 (a hint: no fault, nothing waits on it).
__device__ __forceinline__ void prefetch_line(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Block-wide sum; every thread gets the result. `scratch`: >= 33 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return warp_group_sum(v, scratch, 0, (blockDim.x + 31) >> 5, [] { __syncthreads(); });
}

// ---- counts in global memory that one grid's blocks publish to others running at the same time ----------------
// release_add: by one thread, after a barrier that follows the stores it publishes (the release fence is
// cumulative over what the barrier ordered before it). acquire_load: what the count's publishers stored before
// it is visible to the calling thread's later loads (and, after a barrier, its block's).
__device__ __forceinline__ void release_add(int* count) {
  asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.s32 [%0], 1;" ::"l"(count) : "memory");
}
__device__ __forceinline__ int acquire_load(const int* count) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
  return v;
}
// A poll of a count, without acquire_load's invalidation of the multiprocessor's L1 (CCTL.IVALL) each time; once
// it shows the count reached, one acquire_load gives the ordering.
__device__ __forceinline__ int relaxed_load(const int* count) {
  int v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
  return v;
}

// Runs load(i) for kUnroll indices i = threadIdx.x + u * kBlock before any store(i, v) (kBlock: the block's
// threads), so that a group's global loads are in flight together: one memory latency per group, not per element.
template <int kUnroll, int kBlock, typename Load, typename Store>
__device__ __forceinline__ void batched_loop(int count, Load load, Store store) {
  for (int base = threadIdx.x; base < count; base += kUnroll * kBlock) {
    decltype(load(0)) v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      v[u] = base + u * kBlock < count ? load(base + u * kBlock) : decltype(load(0)){};
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * kBlock < count) store(base + u * kBlock, v[u]);
    }
  }
}

// ---- programmatic dependent launch (md_kernels_set_programmatic_launch) ------------------------------
// A kernel started by launch_pdl may run while the previous kernel on its stream is still running: before
// pdl_wait() it may only read what no kernel writes (weights); pdl_release() lets the next kernel start.
// Every such kernel calls pdl_wait() in every block, so the previous kernel has finished when it finishes.
// Both are no-ops when the kernel was launched plainly.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) in clusters of (1, cluster_y, 1) blocks when cluster_y > 1, with
// the programmatic-serialization attribute when the setting is on.
template <typename... Params, typename... Args>
cudaError_t launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               unsigned cluster_y, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned n_attrs = 0;
  if (cluster_y > 1) {
    attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[n_attrs].val.clusterDim.x = 1;
    attrs[n_attrs].val.clusterDim.y = cluster_y;
    attrs[n_attrs].val.clusterDim.z = 1;
    ++n_attrs;
  }
  if (md_kernels_programmatic_launch()) {
    attrs[n_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n_attrs].val.programmaticStreamSerializationAllowed = 1;
    ++n_attrs;
  }
  config.attrs = attrs;
  config.numAttrs = n_attrs;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization attribute when the
// setting is on.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  return launch_pdl_cluster(kernel, grid, block, smem, stream, 1, std::forward<Args>(args)...);
}

// ---- host-side checks --------------------------------------------------------------------------
// An attribute of the current device, or `fallback` when it cannot be read (the query's error is cleared:
// it only means the launcher plans for a typical GPU).
inline int device_attribute(cudaDeviceAttr attr, int fallback) {
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    cudaGetLastError();
    return fallback;
  }
  return value;
}

void set_check_message(const char* msg);
inline bool valid_dtype(int64_t d) { return d == MD_FLOAT32 || d == MD_FLOAT16 || d == MD_BFLOAT16; }

// Bytes an element of a dtype code takes (float32 4, the 16-bit types 2).
__host__ __device__ inline int64_t elem_bytes(int64_t dtype) { return dtype == MD_FLOAT32 ? 4 : 2; }

// Whether ptr is a multiple of `bytes`: an access of that many bytes may start there.
__host__ __device__ __forceinline__ bool is_aligned(const void* ptr, size_t bytes = 16) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}
// Whether every one of `rows` rows (elements of `elem` bytes, `stride` elements apart) from ptr starts on 16 bytes,
// as 16-byte accesses of each row need; an absent operand (nullptr) passes.
inline bool rows_aligned(const void* ptr, int64_t rows, int64_t stride, int64_t elem) {
  return ptr == nullptr || (is_aligned(ptr) && (rows <= 1 || stride * elem % 16 == 0));
}

}  // namespace md

// Fail a launcher with cudaErrorInvalidValue and a message when `cond` is false.
#define MD_CHECK(cond, msg)                 \
  do {                                      \
    if (!(cond)) {                          \
      ::md::set_check_message(msg);         \
      return cudaErrorInvalidValue;         \
    }                                       \
  } while (0)

// Dispatch a run-time md_dtype code to a type alias NAME inside BODY.
#define MD_DISPATCH_DTYPE(code, NAME, ...)                                 \
  [&]() -> cudaError_t {                                                   \
    switch (code) {                                                        \
      case MD_FLOAT32: { using NAME = float; return __VA_ARGS__(); }       \
      case MD_FLOAT16: { using NAME = __half; return __VA_ARGS__(); }      \
      case MD_BFLOAT16: { using NAME = __nv_bfloat16; return __VA_ARGS__(); } \
      default: ::md::set_check_message("unknown dtype code"); return cudaErrorInvalidValue; \
    }                                                                      \
  }()
