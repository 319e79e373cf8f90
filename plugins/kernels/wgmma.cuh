// wgmma.cuh -- Hopper's warpgroup matrix product (wgmma.mma_async, sm_90a) for gemm_tc.cu: shared-memory
// descriptors of 128-byte-swizzled K-major tiles, the fence / commit / wait, m64nNk16 with float32
// accumulators for N = 8, 16, 32 and 64 (the mbarriers and tensor copies that fill the tiles: bulk.cuh). Only under
// __CUDA_ARCH_FEAT_SM90_ALL (code built for sm_90a): elsewhere
// MD_WGMMA_DEVICE is 0 and a caller must not reach these.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bulk.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MD_WGMMA_DEVICE 1
#else
#define MD_WGMMA_DEVICE 0
#endif

namespace md {

#if MD_WGMMA_DEVICE
// A tile of rows of 64 16-bit elements (128 bytes) at `smem_addr` (1024-byte aligned, plus k offsets of
// 32 bytes within the row), unit u of row r stored at unit u ^ (r % 8): the 128-byte swizzle. Rows 8 apart
// are 1024 bytes apart (the stride field); the leading-dimension field is unused for this layout.
__device__ __forceinline__ uint64_t wg_desc_sw128(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// All but the most recent committed group done.
__device__ __forceinline__ void wg_wait_one() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }
// d (64 x N, the m64nN float32 fragment: N / 2 per thread) += a (64 x 16) b (N x 16)^T, both K-major
// descriptors (scale-d 1: accumulate). T = __half or __nv_bfloat16.
template <typename T, int N> struct WgMma;

#define MD_WG_D4 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
#define MD_WG_D8 MD_WG_D4, "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define MD_WG_D16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),\
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define MD_WG_D32                                                                                   \
  MD_WG_D16, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define MD_WGMMA_SPEC(T, PTX, N, REGS, AB, SCALE, OUTS)                                                       \
  template <> struct WgMma<T, N> {                                                                           \
    static __device__ __forceinline__ void run(float* d, uint64_t a, uint64_t b) {                          \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n"                                      \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " {" REGS "}, "           \
                   AB ", p, 1, 1, 0, 0;\n}\n"                                                \
                   : OUTS                                                                                    \
                   : "l"(a), "l"(b), "r"(1));                                                                \
    }                                                                                                        \
  };
#define MD_WG_R4 "%0, %1, %2, %3"
#define MD_WG_R8 MD_WG_R4 ", %4, %5, %6, %7"
#define MD_WG_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define MD_WG_R32 MD_WG_R16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
MD_WGMMA_SPEC(__half, "f16", 8, MD_WG_R4, "%4, %5", "%6", MD_WG_D4)
MD_WGMMA_SPEC(__nv_bfloat16, "bf16", 8, MD_WG_R4, "%4, %5", "%6", MD_WG_D4)
MD_WGMMA_SPEC(__half, "f16", 16, MD_WG_R8, "%8, %9", "%10", MD_WG_D8)
MD_WGMMA_SPEC(__nv_bfloat16, "bf16", 16, MD_WG_R8, "%8, %9", "%10", MD_WG_D8)
MD_WGMMA_SPEC(__half, "f16", 32, MD_WG_R16, "%16, %17", "%18", MD_WG_D16)
MD_WGMMA_SPEC(__nv_bfloat16, "bf16", 32, MD_WG_R16, "%16, %17", "%18", MD_WG_D16)
MD_WGMMA_SPEC(__half, "f16", 64, MD_WG_R32, "%32, %33", "%34", MD_WG_D32)
MD_WGMMA_SPEC(__nv_bfloat16, "bf16", 64, MD_WG_R32, "%32, %33", "%34", MD_WG_D32)
#undef MD_WGMMA_SPEC
#undef MD_WG_R32
#undef MD_WG_R16
#undef MD_WG_R8
#undef MD_WG_R4
#undef MD_WG_D32
#undef MD_WG_D16
#undef MD_WG_D8
#undef MD_WG_D4
#endif  // MD_WGMMA_DEVICE

}  // namespace md
