// sample_row.cuh -- what the sampler's passes share (sampling.cu): the block's shared memory, the row's
// cluster of blocks and their exchanges, the loop over a block's slice of the row, the order of values.
#pragma once

#include <climits>
#include <cstdint>

#include "cluster.cuh"

namespace md {

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kDigitBits = 8;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kTopShift = 32 - kDigitBits;
constexpr int kUnroll = 8;  // loads in flight per thread: a pass over a slice in the scratch is latency-bound
constexpr int kMaxCluster = 8;

struct SampleShared {
  unsigned long long hist[kSampleWarps][kBuckets];  // a histogram per warp: no contention between warps
  int64_t exchange[2][kBuckets + 1];  // what the row's other blocks read from this one (see ClusterRow)
  int64_t warp_sums[kSampleWarps];
  float warp_value[kSampleWarps];
  int warp_index[kSampleWarps];
  uint32_t digit;
  int64_t digit_above;
  int found;
  int64_t slot;        // the row's
  int64_t coarse[kBuckets];  // sample_buckets.cuh: running sums of the row's weights by coarse bucket
  int64_t candidates;  // this block's tokens in the picked bucket (read by the row's blocks)
  int64_t min_p_kept;
  int64_t pick_coarse_before;
  int pick_coarse;
  int pick_bucket;
  int pick_id;
  float pick_value;
  int64_t pick_before;
  int64_t pick_inclusive;
};
constexpr size_t kSampleSharedBytes = (sizeof(SampleShared) + 15) / 16 * 16;  // the slice's values follow

// The blocks of one row. An exchange publishes up to kBuckets + 1 values per block, passes one cluster barrier,
// then reads any block's; exchanges alternate between two buffers, so a buffer is rewritten only after the
// next exchange's barrier, which every block passes after its reads of this one. All threads of all the
// row's blocks make the same exchanges in the same order.
struct ClusterRow {
  uint32_t rank, blocks;
  int round = 0;

  __device__ int64_t* publish(SampleShared& sh) { return sh.exchange[round++ & 1]; }

  // The sum over the blocks of the int64 at `local`'s offset in their shared memory (written before a barrier).
  __device__ int64_t sum_over_blocks(const int64_t* local) const {
    int64_t sum = 0;
#pragma unroll
    for (uint32_t r = 0; r < kMaxCluster; ++r) {
      if (r < blocks) sum += ld_cluster_s64(local, r);
    }
    return sum;
  }

  // Thread t < n: the sum over the blocks of their buf[t], where buf = publish(sh) was filled before the call.
  __device__ int64_t sum_published(const int64_t* buf, int n) {
    cluster_sync();
    return static_cast<int>(threadIdx.x) < n ? sum_over_blocks(buf + threadIdx.x) : 0;
  }

  // Every thread: the blocks' values (each block's `mine`, the same in all its threads) folded by `combine`
  // in rank order from `init`; *before gets the fold of the blocks ranked below this one.
  template <typename F>
  __device__ int64_t fold(int64_t mine, int64_t init, F combine, SampleShared& sh, int64_t* before = nullptr) {
    int64_t* buf = publish(sh);
    if (threadIdx.x == 0) buf[0] = mine;
    cluster_sync();
    int64_t values[kMaxCluster];
#pragma unroll
    for (uint32_t r = 0; r < kMaxCluster; ++r) values[r] = r < blocks ? ld_cluster_s64(buf, r) : 0;
    int64_t acc = init;
#pragma unroll
    for (uint32_t r = 0; r < kMaxCluster; ++r) {
      if (r >= blocks) break;
      if (before && r == rank) *before = acc;
      acc = combine(acc, values[r]);
    }
    return acc;
  }
};

__device__ __forceinline__ int64_t add_i64(int64_t a, int64_t b) { return a + b; }

// This block's part of a row: ids [begin, end), their values at values[i - begin].
struct SampleSlice {
  float* values;
  int begin, end;
};

// Calls f(i, v) with v = values[i - begin] for i = begin + threadIdx.x + k * kSampleThreads, k = 0, 1, ... in
// order, kUnroll loads ahead; every thread of the block makes the same calls (v = 0 for i >= end), so f may
// hold warp collectives.
template <typename F>
__device__ __forceinline__ void slice_loop(const SampleSlice& s, F f) {
  for (int base = s.begin; base < s.end; base += kUnroll * kSampleThreads) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      v[u] = i < s.end ? s.values[i - s.begin] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) f(base + u * kSampleThreads + static_cast<int>(threadIdx.x), v[u]);
  }
}

// Larger value -> larger key (scaled values are never -0.0: the sampler adds +0.0).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Exclusive prefix sum of `value` over the block's threads (in thread order); *total gets the block's sum.
__device__ __forceinline__ int64_t block_exclusive_sum(int64_t value, SampleShared& sh, int64_t* total) {
  static_assert(kSampleWarps == 32, "the warp sums are scanned by one warp");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t inclusive = value;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) sh.warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int64_t sums = sh.warp_sums[lane];
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, sums, d);
      if (lane >= d) sums += up;
    }
    sh.warp_sums[lane] = sums;
  }
  __syncthreads();
  const int64_t before = (warp > 0 ? sh.warp_sums[warp - 1] : 0) + inclusive - value;
  *total = sh.warp_sums[kSampleWarps - 1];
  __syncthreads();  // the slots are reused by the next call
  return before;
}

__device__ __forceinline__ bool beats(float v, int i, float value, int index) {
  return v > value || (v == value && i < index);
}

// One row after its first pass: this block's slice of the scaled values, the row's vocabulary and top value,
// 2^S, and its top-k boundary (kept iff the key is above kth_key, or equal with an id <= kth_id; everything
// is kept when top-k is off).
struct SampleRow {
  SampleSlice slice;
  int vocab;
  float top;
  float scale;
  uint32_t kth_key = 0;
  int kth_id = INT_MAX;

  __device__ __forceinline__ bool in_top_k(uint32_t key, int id) const {
    return key > kth_key || (key == kth_key && id <= kth_id);
  }
  __device__ __forceinline__ float prob(float v) const { return expf(v - top); }
  // p * 2^S is exact; the cast truncates, as the reference's .to(int64)
  __device__ __forceinline__ int64_t weight_of(float p) const { return static_cast<int64_t>(p * scale); }
};

}  // namespace md
