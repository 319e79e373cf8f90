// cluster.cuh -- thread-block clusters (compute capability 9.0+): the barrier, the block's rank, and loads
// from another block's shared memory (distributed shared memory). Below 9.0 every launch is a cluster of one
// block: the barrier is the block's and a "remote" load reads this block's own shared memory.
#pragma once

#include <cstdint>

namespace md {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Every thread of every block of the cluster; also orders shared-memory writes before it against reads after.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// The kernel's last barrier: no block leaves while another may still read its shared memory. The arrive is
// relaxed: those reads' values were consumed before it (in order), and a release would first wait for this
// thread's global stores to be performed, keeping the multiprocessor held after its work is done.
__device__ __forceinline__ void cluster_sync_exit() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_blocks() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return n;
}
__device__ __forceinline__ uint32_t cluster_address(const void* local, uint32_t rank) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(a), "r"(rank));
  return remote;
}
// The 4 floats at the same shared-memory offset as `local` (16-byte aligned) in block `rank` of the cluster.
// volatile, no memory clobber: kept after the cluster barrier, yet several can be in flight.
__device__ __forceinline__ float4 ld_cluster4(const float* local, uint32_t rank) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(cluster_address(local, rank)));
  return v;
}
__device__ __forceinline__ int64_t ld_cluster_s64(const int64_t* local, uint32_t rank) {
  int64_t v;
  asm volatile("ld.shared::cluster.s64 %0, [%1];" : "=l"(v) : "r"(cluster_address(local, rank)));
  return v;
}
#else
__device__ __forceinline__ void cluster_sync() { __syncthreads(); }
__device__ __forceinline__ void cluster_sync_exit() { __syncthreads(); }
__device__ __forceinline__ uint32_t cluster_rank() { return 0; }
__device__ __forceinline__ uint32_t cluster_blocks() { return 1; }
__device__ __forceinline__ float4 ld_cluster4(const float* local, uint32_t) {
  return *reinterpret_cast<const float4*>(local);
}
__device__ __forceinline__ int64_t ld_cluster_s64(const int64_t* local, uint32_t) { return *local; }
#endif

// The sum, in rank order, of the 4 floats at `local`'s offset in each of the cluster's S <= kMax blocks (after a
// cluster barrier): the same inputs give the same bits. S == 1: this block's own.
template <int kMax>
__device__ __forceinline__ float4 cluster_sum4(const float* local, uint32_t S) {
  if (S <= 1) return *reinterpret_cast<const float4*>(local);
  float4 v[kMax];
#pragma unroll
  for (int q = 0; q < kMax; ++q)
    if (q < static_cast<int>(S)) v[q] = ld_cluster4(local, q);  // all in flight before the sum
  float4 sum = v[0];
#pragma unroll
  for (int q = 1; q < kMax; ++q)
    if (q < static_cast<int>(S)) sum = make_float4(sum.x + v[q].x, sum.y + v[q].y, sum.z + v[q].z, sum.w + v[q].w);
  return sum;
}

}  // namespace md
