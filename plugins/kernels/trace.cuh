// trace.cuh -- per-block timestamps of gemm_tc.cu's kernel in a diagnostic build (CMake
// -DMAMBA_DEPLOY_KERNEL_TRACE=ON defines MD_KERNEL_TRACE; benchmarks/gemv_timeline.py reads them). Every thread
// reads %globaltimer (ns, one clock for the whole GPU) at each TracePoint; thread 0, on leaving, writes its stamps
// and its multiprocessor's id into row (call % kTraceCalls, block) of md_tc_trace, and the last block of a call
// to leave counts the call. md_gemv_tc_trace_read copies the rows out. In a normal build every stamp is nothing.
// Include it from gemm_tc.cu only: it defines the device arrays.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace md {

enum TracePoint : int {
  kTraceEntry,     // the block starts
  kTraceMainEnd,   // its products are done (after the main loop's last barrier)
  kTracePartials,  // its k groups' partial sums are in shared memory
  kTraceSync1,     // the cluster's first barrier passed
  kTraceReduced,   // its share of the tile reduced over the cluster and stored
  kTraceExit,      // the last cluster barrier passed
  kTracePoints
};
constexpr int kTraceCalls = 4, kTraceBlocks = 4096, kTraceRow = 8;  // a row: the points, then the multiprocessor

#ifdef MD_KERNEL_TRACE
__device__ uint64_t md_tc_trace[kTraceCalls][kTraceBlocks][kTraceRow];
__device__ uint32_t md_tc_trace_left, md_tc_trace_calls;

struct TraceStamps {
  uint64_t t[kTracePoints];
  __device__ __forceinline__ void stamp(TracePoint i) {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t[i]));
  }
  // Thread 0 of each block, after every stamp and after pdl_wait (the call before has counted itself).
  __device__ __forceinline__ void write() const {
    const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&md_tc_trace_calls) % kTraceCalls;
    const uint32_t block = (blockIdx.y * gridDim.x + blockIdx.x) % kTraceBlocks;
    uint64_t* row = md_tc_trace[call][block];
#pragma unroll
    for (int i = 0; i < kTracePoints; ++i) row[i] = t[i];
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    row[kTracePoints] = sm;
    __threadfence();
    if (atomicAdd(&md_tc_trace_left, 1u) == gridDim.x * gridDim.y - 1) {
      md_tc_trace_left = 0;
      atomicAdd(&md_tc_trace_calls, 1u);
    }
  }
};

// The rows of the last kTraceCalls calls (host: kTraceCalls * kTraceBlocks * kTraceRow values) and the calls so far.
inline cudaError_t trace_read(uint64_t* rows, uint32_t* calls) {
  cudaError_t err = cudaMemcpyFromSymbol(calls, md_tc_trace_calls, sizeof(uint32_t));
  return err != cudaSuccess ? err : cudaMemcpyFromSymbol(rows, md_tc_trace, sizeof(md_tc_trace));
}
#else
struct TraceStamps {
  __device__ __forceinline__ void stamp(TracePoint) {}
  __device__ __forceinline__ void write() const {}
};
#endif

}  // namespace md
