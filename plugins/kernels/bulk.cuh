// bulk.cuh -- Hopper's asynchronous copies into shared memory (sm_90+): mbarriers, the 1-D bulk copy
// (gemv_staged.cu) and the 2-D bulk tensor copy through a tensor map (TMA: gemm_tc.cu). A copy lands in
// shared memory and completes the transaction count of its mbarrier. Only where MD_BULK_DEVICE (device code
// for compute capability 9.0+); a caller must not reach these elsewhere.
#pragma once

#include <cstdint>

#include "vec.cuh"  // smem_address

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MD_BULK_DEVICE 1
#else
#define MD_BULK_DEVICE 0
#endif

namespace md {

#if MD_BULK_DEVICE
// mbarrier initialisations made visible to the other threads and to the bulk copies.
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// The thread's arrival, announcing `bytes` of copies that complete the phase.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nMD_MBAR_WAIT%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra MD_MBAR_WAIT%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src` to shared `dst`.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
// Box (inner k, row) of the 2-D tensor map at `map` (a __grid_constant__ kernel parameter) -> `dst`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int32_t k, int32_t row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(bar) : "memory");
}
#endif  // MD_BULK_DEVICE

}  // namespace md
