// sample_buckets.cuh -- the sampler's selections (sampling.cu) in two passes instead of four radix digits: the
// position where the running sum of the kept weights (for top-k: of ones) along the sorted order first reaches
// a target.
//
// A token's weight is positive only within S ln 2 of the row's top value, so `bucket_of` cuts that range into
// buckets of equal width. The bucket is a non-increasing function of the value (float rounding is monotone),
// so the buckets in index order follow the sorted order, and equal values share one. One pass gives each
// block its slice's weights by bucket, and the row's by coarse bucket (kFineBuckets buckets each, summed over
// the row's blocks). A target's coarse bucket follows from the running sums of those, its bucket from the
// blocks' kFineBuckets sums of that coarse bucket, and a second pass gathers that bucket's tokens (a few dozen on
// a flat row), which every block of the row then ranks by (value descending, id ascending). When the bucket
// holds more than kMaxCandidates tokens (ties, or values packed closer than a bucket), the pick says so and
// the caller takes the radix selection: the same token.
// The weights are added with 32-bit shared-memory atomics, low word then high word and the low word's carry:
// a 64-bit shared-memory atomic add is a compare-and-swap loop on sm_90.
#pragma once

#include <cstdint>

#include "cluster.cuh"
#include "sample_row.cuh"

namespace md {

constexpr int kLinearBuckets = 4096;
constexpr int kFineBuckets = 16;  // buckets a coarse bucket
constexpr int kCoarseBuckets = kLinearBuckets / kFineBuckets;
constexpr int kBucketsPerThread = kLinearBuckets / kSampleThreads;
constexpr int kMaxCandidates = kSampleThreads;  // the row's candidates: one a thread when ranked
static_assert(kCoarseBuckets == kBuckets && kFineBuckets % kBucketsPerThread == 0 && kFineBuckets <= 32,
              "a coarse bucket per exchange slot, whole in consecutive threads of one warp");
// Shared-memory layout over SampleShared::hist (16,384 words): during the pass two histograms (even and odd
// warps) of kLinearBuckets low words then kLinearBuckets high words; after it the block's 64-bit sums by bucket
// over the first (read by the row's blocks until the kernel ends), and over the second the block's own
// candidates and the row's (float4 each: value, id, weight's low and high words).
static_assert(4 * kLinearBuckets <= 2 * kSampleWarps * kBuckets && 4 * kMaxCandidates <= kLinearBuckets,
              "the bucket histograms and candidate lists fit in SampleShared::hist");

// Buckets a unit of value: kLinearBuckets over the widest range of positive weights, S ln 2 at S = 52
// (sampling.h's largest weight_bits), and one more unit.
constexpr float kBucketsPerUnit = kLinearBuckets / (52 * 0.6931472f + 1.0f);

__device__ __forceinline__ int bucket_of(float v, float top) {
  const float d = (top - v) * kBucketsPerUnit;
  return d < static_cast<float>(kLinearBuckets - 1) ? max(0, __float2int_rz(d)) : kLinearBuckets - 1;
}

__device__ __forceinline__ uint32_t* bucket_words(SampleShared& sh) {
  return reinterpret_cast<uint32_t*>(&sh.hist[0][0]);
}
__device__ __forceinline__ int64_t* bucket_sums(SampleShared& sh) { return reinterpret_cast<int64_t*>(&sh.hist[0][0]); }
__device__ __forceinline__ float4* own_candidates(SampleShared& sh) {
  return reinterpret_cast<float4*>(bucket_sums(sh) + kLinearBuckets);
}
__device__ __forceinline__ float4* row_candidates(SampleShared& sh) { return own_candidates(sh) + kMaxCandidates; }

// hist[bucket] += w as low word (hist) and high word (hist + kLinearBuckets), both 32-bit atomics: exact as long
// as the bucket's sum is below 2^64 (the carry is the low word's own wrap, seen by the add that wraps it).
__device__ __forceinline__ void add_weight(uint32_t* hist, int bucket, int64_t w) {
  const uint32_t low = static_cast<uint32_t>(w), old = atomicAdd(hist + bucket, low);
  const uint32_t high = static_cast<uint32_t>(static_cast<uint64_t>(w) >> 32) + (old + low < old ? 1u : 0u);
  if (high != 0) atomicAdd(hist + kLinearBuckets + bucket, high);
}

__device__ __forceinline__ float4 pack_candidate(float v, int id, int64_t w) {
  return make_float4(v, __int_as_float(id), __int_as_float(static_cast<int>(static_cast<uint64_t>(w))),
                     __int_as_float(static_cast<int>(static_cast<uint64_t>(w) >> 32)));
}
__device__ __forceinline__ int64_t candidate_weight(const float4& c) {
  return static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(__float_as_int(c.w))) << 32) |
                              static_cast<uint32_t>(__float_as_int(c.z)));
}

// One pass over the slice: the block's kept weights (in the top-k) by bucket (bucket_sums(sh)), the row's by
// coarse bucket (running sums in SampleShared::coarse) and in all (*total); returns the row's sum of the weights
// of probability >= min_p (min-p keeps a prefix of the sorted order: its running sum at its end). kCount: every
// token weighs 1 (top-k's counts; the last bucket takes all below the range), min_p unused, and the return is
// the row's count of NaN values (which sort first, as no bucket can say: the caller takes the radix selection).
template <bool kCount>
__device__ int64_t bucket_histogram(const SampleRow& row, float min_p, ClusterRow& cl, SampleShared& sh,
                                    int64_t* total) {
  uint32_t* words = bucket_words(sh);
  for (int b = threadIdx.x; b < 4 * kLinearBuckets; b += kSampleThreads) words[b] = 0;
  __syncthreads();
  uint32_t* mine = words + ((threadIdx.x >> 5) & 1) * 2 * kLinearBuckets;
  int64_t own_min_p = 0;
  slice_loop(row.slice, [&](int i, float v) {
    if (i >= row.slice.end) return;
    if (kCount) {
      add_weight(mine, bucket_of(v, row.top), 1);
      own_min_p += v != v;
      return;
    }
    if (!row.in_top_k(order_key(v), i)) return;
    const float p = row.prob(v);
    const int64_t w = row.weight_of(p);
    own_min_p += p >= min_p ? w : 0;
    if (w > 0) add_weight(mine, bucket_of(v, row.top), w);
  });
  __syncthreads();
  const int first = kBucketsPerThread * static_cast<int>(threadIdx.x);
  int64_t sums[kBucketsPerThread], coarse = 0;
#pragma unroll
  for (int k = 0; k < kBucketsPerThread; ++k) {
    const int b = first + k;
    const uint64_t low = uint64_t{words[b]} + words[2 * kLinearBuckets + b];
    const uint64_t high = uint64_t{words[kLinearBuckets + b]} + words[3 * kLinearBuckets + b];
    sums[k] = static_cast<int64_t>((high << 32) + low);
    coarse += sums[k];
  }
  __syncthreads();  // the words are read: their space takes the 64-bit sums
  int64_t* block_sums = bucket_sums(sh);
#pragma unroll
  for (int k = 0; k < kBucketsPerThread; ++k) block_sums[first + k] = sums[k];
  constexpr int kThreadsPerCoarse = kFineBuckets / kBucketsPerThread;
#pragma unroll
  for (int d = 1; d < kThreadsPerCoarse; d <<= 1) coarse += __shfl_xor_sync(0xffffffffu, coarse, d);
  int64_t block_min_p;
  block_exclusive_sum(own_min_p, sh, &block_min_p);
  int64_t* buf = cl.publish(sh);  // the coarse buckets, then the min-p sum (kCount: the NaN count)
  if (threadIdx.x % kThreadsPerCoarse == 0) buf[threadIdx.x / kThreadsPerCoarse] = coarse;
  if (threadIdx.x == 0) buf[kCoarseBuckets] = block_min_p;
  const int64_t row_sum = cl.sum_published(buf, kCoarseBuckets + 1);
  if (threadIdx.x == kCoarseBuckets) sh.min_p_kept = row_sum;
  const int64_t row_coarse = threadIdx.x < kCoarseBuckets ? row_sum : 0;  // thread t: coarse bucket t
  const int64_t before = block_exclusive_sum(row_coarse, sh, total);  // its barriers publish min_p_kept
  if (threadIdx.x < kCoarseBuckets) sh.coarse[threadIdx.x] = before + row_coarse;
  return sh.min_p_kept;
}

// The token at which the running sum of the kept weights (kCount: of ones) along the sorted order first reaches
// `target` (1 <= target <= bucket_histogram's *total): *id, its value *value, and *inclusive = the running sum
// through it. false when its bucket holds more than kMaxCandidates tokens of the row (the same in all the row's
// blocks); every thread calls, with the sums of bucket_histogram<kCount> still in place (no radix selection
// since).
template <bool kCount>
__device__ bool bucket_pick(const SampleRow& row, int64_t target, ClusterRow& cl, SampleShared& sh, int* id,
                            int64_t* inclusive, float* value) {
  __syncthreads();  // the last pick's results are read
  if (threadIdx.x == 0) {
    sh.pick_coarse = -1;
    sh.pick_bucket = -1;
    sh.pick_id = -1;
    sh.candidates = 0;
  }
  __syncthreads();
  if (threadIdx.x < kCoarseBuckets) {
    const int64_t before = threadIdx.x > 0 ? sh.coarse[threadIdx.x - 1] : 0;
    if (before < target && target <= sh.coarse[threadIdx.x]) {
      sh.pick_coarse = static_cast<int>(threadIdx.x);
      sh.pick_coarse_before = before;
    }
  }
  __syncthreads();
  if (sh.pick_coarse < 0) return false;  // no bucket reaches the target (non-finite values): the radix decides
  if (threadIdx.x < 32) {  // the coarse bucket's buckets, summed over the row's blocks, in the first warp
    const int lane = threadIdx.x, b = sh.pick_coarse * kFineBuckets + lane;
    const int64_t sum = lane < kFineBuckets ? cl.sum_over_blocks(bucket_sums(sh) + b) : 0;
    int64_t running = sum;
#pragma unroll
    for (int d = 1; d < kFineBuckets; d <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, running, d);
      if (lane >= d) running += up;
    }
    const int64_t before = sh.pick_coarse_before + running - sum;
    if (lane < kFineBuckets && before < target && target <= before + sum) {
      sh.pick_bucket = b;
      sh.pick_before = before;
    }
  }
  __syncthreads();
  const int bucket = sh.pick_bucket;
  const int64_t need = target - sh.pick_before;  // within the bucket, 1 <= need <= its weights
  if (bucket < 0) {  // (as above) after the reads of the blocks' sums, which a radix selection overwrites
    cluster_sync();
    return false;
  }
  float4* own = own_candidates(sh);
  // Not slice_loop: with its eight values in flight the kernel needs more than the 64 registers a thread of a
  // 1,024-thread block has (ptxas spills).
  const SampleSlice& slice = row.slice;
#pragma unroll 4
  for (int i = slice.begin + static_cast<int>(threadIdx.x); i < slice.end; i += kSampleThreads) {
    const float v = slice.values[i - slice.begin];
    if (bucket_of(v, row.top) != bucket) continue;
    int64_t w = 1;
    if (!kCount) {
      if (!row.in_top_k(order_key(v), i)) continue;
      w = row.weight_of(row.prob(v));
      if (w == 0) continue;
    }
    const uint32_t n = atomicAdd(reinterpret_cast<uint32_t*>(&sh.candidates), 1u);  // its low word: 0 above
    if (n < kMaxCandidates) own[n] = pack_candidate(v, i, w);
  }
  __syncthreads();
  const int64_t count = cl.fold(sh.candidates, 0, add_i64, sh);  // its barrier publishes the lists
  if (count > kMaxCandidates) return false;
  float4* all = row_candidates(sh);
  int offset = 0;
  for (uint32_t r = 0; r < cl.blocks; ++r) {
    const int n = static_cast<int>(ld_cluster_s64(&sh.candidates, r));
    for (int k = threadIdx.x; k < n; k += kSampleThreads) {
      all[offset + k] = ld_cluster4(reinterpret_cast<const float*>(own + k), r);
    }
    offset += n;
  }
  cluster_sync();  // every block has read the lists: the next pick may rewrite them
  // Candidate c is ranked by `lanes` consecutive threads (a power of two up to a warp), each over every
  // lanes-th candidate.
  const int n = static_cast<int>(count);
  int lanes = 1;
  while (lanes < 32 && 2 * lanes * n <= kSampleThreads) lanes *= 2;
  const int c = static_cast<int>(threadIdx.x) / lanes, part = static_cast<int>(threadIdx.x) % lanes;
  const float4 mine = all[c < n ? c : 0];
  const int i = __float_as_int(mine.y);
  int64_t ahead = 0;  // the weights of the bucket's tokens before this one in the sorted order
  for (int s = part; c < n && s < n; s += lanes) {
    const float4 o = all[s];
    if (beats(o.x, __float_as_int(o.y), mine.x, i)) ahead += candidate_weight(o);
  }
  for (int d = 1; d < lanes; d <<= 1) ahead += __shfl_xor_sync(0xffffffffu, ahead, d);
  const int64_t w = candidate_weight(mine);
  if (c < n && part == 0 && ahead < need && need <= ahead + w) {
    sh.pick_id = i;
    sh.pick_value = mine.x;
    sh.pick_inclusive = sh.pick_before + ahead + w;
  }
  __syncthreads();
  *id = sh.pick_id;
  *value = sh.pick_value;
  *inclusive = sh.pick_inclusive;
  return *id >= 0;
}

}  // namespace md
