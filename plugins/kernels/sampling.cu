// sampling.cu -- the sampler's kernel (sampling.h): the sampling of one token per row.
#include <climits>
#include <cstdint>

#include "cluster.cuh"
#include "common.cuh"
#include "philox.cuh"
#include "sample_buckets.cuh"
#include "sample_row.cuh"
#include "sampling.h"

namespace md {
namespace {

// ---- one token per row (md_launch_sample) ---------------------------------------------------------------
// The sorted order of runtime/sampler.py (value descending, equal values by lower id) is never built: every
// quantity the sampler needs is a position where a running sum along that order reaches a target, and the
// row's blocks find it from linear buckets of value (sample_buckets.cuh) or, where a bucket holds too many
// tokens, by radix selection on the value's bits (below), with histograms of the weights (or counts), then
// among equal values by id. A row is a cluster of blocks (compute capability 9.0+), each holding its slice of the
// row's scaled values in shared memory (or, for vocabularies too large for that, in the caller's scratch);
// the blocks add their histograms and sums through distributed shared memory.

// The row's largest `value`, and the lowest `index` holding it, in every thread.
__device__ __forceinline__ void row_argmax(float& value, int& index, ClusterRow& cl, SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int round = 0; round < 2; ++round) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, value, d);
      const int i = __shfl_xor_sync(0xffffffffu, index, d);
      if (beats(v, i, value, index)) {
        value = v;
        index = i;
      }
    }
    if (round == 1) break;
    if (lane == 0) {
      sh.warp_value[warp] = value;
      sh.warp_index[warp] = index;
    }
    __syncthreads();
    value = sh.warp_value[lane];  // every warp reduces the warps' results
    index = sh.warp_index[lane];
    __syncthreads();
  }
  const auto pack = [](float v, int i) {
    return static_cast<int64_t>((static_cast<uint64_t>(__float_as_uint(v)) << 32) | static_cast<uint32_t>(i));
  };
  const int64_t best = cl.fold(pack(value, index), pack(value, index), [&](int64_t a, int64_t b) {
    const float bv = __uint_as_float(static_cast<uint32_t>(static_cast<uint64_t>(b) >> 32));
    const int bi = static_cast<int>(static_cast<uint32_t>(b));
    const float av = __uint_as_float(static_cast<uint32_t>(static_cast<uint64_t>(a) >> 32));
    return beats(bv, bi, av, static_cast<int>(static_cast<uint32_t>(a))) ? b : a;
  }, sh);
  value = __uint_as_float(static_cast<uint32_t>(static_cast<uint64_t>(best) >> 32));
  index = static_cast<int>(static_cast<uint32_t>(best));
}

// Adds each lane's w (0: none) to its warp's hist[digit] (only this warp writes it). Unit weights: the lanes
// of one digit are counted and the lowest of them adds the count; weights: each lane adds its own (measured on
// the H200: summing a digit's lanes with redux.sync costs twice as much as the lanes' shared-memory atomics).
// All 32 lanes call.
template <bool kCount>
__device__ __forceinline__ void histogram_add(unsigned long long* hist, uint32_t digit, uint64_t w) {
  const bool has = w != 0;
  if (!kCount) {
    if (has) atomicAdd(hist + digit, static_cast<unsigned long long>(w));
    return;
  }
  const unsigned active = __ballot_sync(0xffffffffu, has);
  if (!has) return;
  const unsigned peers = __match_any_sync(active, digit);
  if ((threadIdx.x & 31) == __ffs(peers) - 1) hist[digit] += __popc(peers);
}

__device__ __forceinline__ void clear_histograms(SampleShared& sh) {
  for (int b = threadIdx.x; b < kSampleWarps * kBuckets; b += kSampleThreads) (&sh.hist[0][0])[b] = 0;
  __syncthreads();
}

// After the warps' histogram_add calls: the row's total of digit kBuckets - 1 - threadIdx.x (0 in threads
// >= kBuckets), summed over the warps and the row's blocks. Each digit's warps are summed by 4 threads.
__device__ __forceinline__ int64_t row_buckets(ClusterRow& cl, SampleShared& sh) {
  static_assert(kSampleThreads == 4 * kBuckets && kSampleWarps % 4 == 0, "4 threads a digit");
  constexpr int kWarpsPerPart = kSampleWarps / 4;
  __syncthreads();
  const int slot = static_cast<int>(threadIdx.x) >> 2, part = threadIdx.x & 3;
  int64_t bucket = 0;
#pragma unroll
  for (int w = part * kWarpsPerPart; w < (part + 1) * kWarpsPerPart; ++w) {
    bucket += static_cast<int64_t>(sh.hist[w][kBuckets - 1 - slot]);
  }
  bucket += __shfl_xor_sync(0xffffffffu, bucket, 1);
  bucket += __shfl_xor_sync(0xffffffffu, bucket, 2);
  int64_t* buf = cl.publish(sh);
  if (part == 0) buf[slot] = bucket;
  return cl.sum_published(buf, kBuckets);
}

// With unit weights (kCount: every token) or the row's weights (tokens in the top-k): the row's histogram of
// the digit at `shift` over the keys whose bits above it are `prefix`, as row_buckets gives it.
template <bool kCount>
__device__ int64_t digit_histogram(const SampleRow& row, uint32_t prefix, int shift, ClusterRow& cl,
                                   SampleShared& sh) {
  clear_histograms(sh);
  const uint32_t fixed = shift + kDigitBits >= 32 ? 0u : ~0u << (shift + kDigitBits);
  slice_loop(row.slice, [&](int i, float v) {
    uint64_t w = 0;
    uint32_t digit = 0;
    const uint32_t key = order_key(v);
    if (i < row.slice.end && (key & fixed) == prefix) {
      w = kCount ? 1 : (row.in_top_k(key, i) ? row.weight_of(row.prob(v)) : 0);
      digit = (key >> shift) & (kBuckets - 1);
    }
    histogram_add<kCount>(sh.hist[threadIdx.x >> 5], digit, w);
  });
  return row_buckets(cl, sh);
}

// The key of the token at which the running sum along the sorted order first reaches `target` (1 <= target
// <= the sum of all), from the row's histogram of the top digit (`top_digit`, as row_buckets gives it);
// *above = the sum over the keys greater than it.
template <bool kCount>
__device__ uint32_t radix_select(const SampleRow& row, int64_t target, int64_t top_digit, ClusterRow& cl,
                                 SampleShared& sh, int64_t* above) {
  uint32_t prefix = 0;
  int64_t acc = 0;
  for (int shift = kTopShift; shift >= 0; shift -= kDigitBits) {
    const int64_t bucket = shift == kTopShift ? top_digit : digit_histogram<kCount>(row, prefix, shift, cl, sh);
    // Buckets from the highest digit down: the one where the running sum reaches target - acc.
    const int64_t need = target - acc;
    int64_t total;
    const int64_t before = block_exclusive_sum(bucket, sh, &total);
    if (bucket > 0 && before < need && need <= before + bucket) {
      sh.digit = static_cast<uint32_t>(kBuckets - 1 - static_cast<int>(threadIdx.x));
      sh.digit_above = before;
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    acc += sh.digit_above;
  }
  *above = acc;
  return prefix;
}

// The id of the j-th (from 0, in id order) token of this block's slice whose key is `key`; j must be below
// their count. Every thread of the block calls.
__device__ int nth_in_slice(const SampleSlice& s, uint32_t key, int64_t j, SampleShared& sh) {
  int64_t passed = 0;
  for (int base = s.begin; base < s.end; base += kUnroll * kSampleThreads) {
    uint32_t keys[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      keys[u] = i < s.end ? order_key(s.values[i - s.begin]) : ~key;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool member = keys[u] == key;
      const int count = __syncthreads_count(member);
      if (passed + count > j) {  // the same in every thread
        int64_t total;
        const int64_t rank = passed + block_exclusive_sum(member ? 1 : 0, sh, &total);
        if (member && rank == j) sh.found = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
        __syncthreads();
        return sh.found;
      }
      passed += count;
    }
  }
  return -1;
}

// The id of the j-th (from 0, in id order) token of the row whose key is `key`; j must be below their count.
__device__ int nth_with_key(const SampleRow& row, uint32_t key, int64_t j, ClusterRow& cl, SampleShared& sh) {
  int64_t own = 0;
  slice_loop(row.slice, [&](int i, float v) { own += i < row.slice.end && order_key(v) == key; });
  int64_t count;
  block_exclusive_sum(own, sh, &count);
  int64_t before = 0;
  cl.fold(count, 0, add_i64, sh, &before);  // the same slices in rank order: ids ascending
  const int found = before <= j && j < before + count ? nth_in_slice(row.slice, key, j - before, sh) : -1;
  const int64_t id = cl.fold(found, -1, [](int64_t a, int64_t b) { return a > b ? a : b; }, sh);
  return id >= 0 ? static_cast<int>(id) : row.vocab - 1;
}

// bucket_pick by radix selection (its bucket holds too many tokens): *inclusive, and the id when `want_id`.
__device__ int radix_pick(const SampleRow& row, int64_t target, bool want_id, ClusterRow& cl, SampleShared& sh,
                          int64_t* inclusive) {
  const int64_t top_digit = digit_histogram<false>(row, 0, kTopShift, cl, sh);
  int64_t above;
  const uint32_t key = radix_select<false>(row, target, top_digit, cl, sh, &above);
  const int64_t w = row.weight_of(row.prob(key_value(key)));  // every kept token of that value weighs w
  const int64_t j = (target - above - 1) / w;  // the pick is the j-th token of that value, in id order
  *inclusive = above + (j + 1) * w;
  return want_id ? nth_with_key(row, key, j, cl, sh) : -1;
}

// Steps 4-8 of the sampler's docstring on a row whose first pass is done: the drawn token.
__device__ int draw(SampleRow& row, int64_t top_k, float top_p, float min_p, float uniform, ClusterRow& cl,
                    SampleShared& sh) {
  int id;
  int64_t inclusive, total;
  float value;
  if (top_k > 0 && top_k < row.vocab) {  // the token at position k - 1 bounds the top-k
    const int64_t nans = bucket_histogram<true>(row, 0.0f, cl, sh, &total);
    if (nans == 0 && bucket_pick<true>(row, top_k, cl, sh, &id, &inclusive, &value)) {
      row.kth_key = order_key(value);
      row.kth_id = id;
    } else {
      int64_t above;
      const int64_t counts = digit_histogram<true>(row, 0, kTopShift, cl, sh);
      const uint32_t key = radix_select<true>(row, top_k, counts, cl, sh, &above);
      row.kth_id = nth_with_key(row, key, top_k - 1 - above, cl, sh);
      row.kth_key = key;
    }
  }
  int64_t kept = bucket_histogram<false>(row, min_p, cl, sh, &total);
  if (top_p < 1.0f) {  // top-p ends at the first position whose running sum reaches top_p * total
    const int64_t target = static_cast<int64_t>(ceil(static_cast<double>(top_p) * static_cast<double>(total)));
    if (!bucket_pick<false>(row, target, cl, sh, &id, &inclusive, &value)) {
      radix_pick(row, target, false, cl, sh, &inclusive);
      total = -1;  // the radix selection cleared the buckets' sums: the draw takes it too
    }
    kept = min(kept, inclusive);
  }
  const int64_t target = static_cast<int64_t>(floor(static_cast<double>(uniform) * static_cast<double>(kept))) + 1;
  if (total >= 0 && bucket_pick<false>(row, target, cl, sh, &id, &inclusive, &value)) return id;
  return radix_pick(row, target, true, cl, sh, &inclusive);
}

// Grid: rows x blocks_per_row blocks, clusters of blocks_per_row; block r of a row holds ids [r * slice,
// (r + 1) * slice) in shared memory after SampleShared (values_in_smem) or in the scratch row.
template <typename T>
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const md_sample_params p, int slice,
                                                                 int values_in_smem) {
  extern __shared__ __align__(16) unsigned char sample_smem[];
  SampleShared& sh = *reinterpret_cast<SampleShared*>(sample_smem);
  ClusterRow cl{cluster_rank(), cluster_blocks()};
  const int64_t r = blockIdx.x / cl.blocks;
  const int64_t slot = static_cast<const int64_t*>(p.slots)[r];
  if (threadIdx.x == 0) sh.slot = slot;  // for the last step, rather than a register held through the draw
  const int vocab = static_cast<int>(p.vocab), limit = static_cast<int>(p.vocab_limit);
  const float temperature = static_cast<const float*>(p.temperature)[slot];
  const float penalty = static_cast<const float*>(p.repetition_penalty)[slot];
  const bool greedy = temperature == 0.0f;
  const float divisor = greedy ? 1.0f : temperature;
  const T* __restrict__ logits = static_cast<const T*>(p.logits) + r * p.logits_row_stride;
  uint8_t* seen = static_cast<uint8_t*>(p.seen) + slot * p.seen_row_stride;
  const int begin = static_cast<int>(min(static_cast<int64_t>(cl.rank) * slice, static_cast<int64_t>(vocab)));
  const int end = static_cast<int>(min(static_cast<int64_t>(begin) + slice, static_cast<int64_t>(vocab)));
  float* values = values_in_smem ? reinterpret_cast<float*>(sample_smem + kSampleSharedBytes)
                                 : static_cast<float*>(p.scratch) + r * p.scratch_row_stride + begin;

  // Steps 1-3: mask, penalty, the greedy argmax (first of equal maxima), temperature; the top value.
  float best = -INFINITY, top = -INFINITY;
  int best_index = INT_MAX, unused = 0;
  for (int base = begin; base < end; base += kUnroll * kSampleThreads) {
    float xs[kUnroll];
    bool penalised[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      xs[u] = i < min(limit, end) ? to_f(logits[i]) : -INFINITY;
      penalised[u] = i < end && seen[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      if (i >= end) break;
      float x = xs[u];
      if (penalised[u]) x = x > 0.0f ? x / penalty : x * penalty;
      if (x > best || best_index == INT_MAX) {
        best = x;
        best_index = i;
      }
      const float v = x / divisor + 0.0f;  // + 0.0: -0.0 -> +0.0
      values[i - begin] = v;
      top = fmaxf(top, v);
    }
  }
  row_argmax(best, best_index, cl, sh);
  row_argmax(top, unused, cl, sh);
  int token = best_index;
  if (!greedy) {
    __syncthreads();  // the slice's values, written above, are read by other threads from here
    SampleRow row{SampleSlice{values, begin, end}, vocab, top, ldexpf(1.0f, static_cast<int>(p.weight_bits))};
    const uint64_t seed = static_cast<uint64_t>(static_cast<const int64_t*>(p.seed)[slot]);
    const uint64_t step = static_cast<uint64_t>(static_cast<int64_t*>(p.step)[slot]);
    const float uniform = philox_uniform(seed, step);
    token = draw(row, static_cast<const int64_t*>(p.top_k)[slot], static_cast<const float*>(p.top_p)[slot],
                 static_cast<const float*>(p.min_p)[slot], uniform, cl, sh);
  }
  cluster_sync();  // every block has read its step and seen row, and no block leaves while others read it
  if (cl.rank == 0 && threadIdx.x == 0) {
    const int64_t row_slot = sh.slot;
    static_cast<int64_t*>(p.out)[blockIdx.x / cl.blocks] = token;
    static_cast<int64_t*>(p.step)[row_slot] += 1;
    static_cast<int64_t*>(p.last_token)[row_slot] = token;
    static_cast<uint8_t*>(p.seen)[row_slot * p.seen_row_stride + token] = 1;
  }
}

// Blocks per row: enough rows x blocks to cover the multiprocessors with at least two values a thread, more
// where a row's slice would not fit in shared memory; 1 below compute capability 9.0 (no clusters).
struct SampleLaunch {
  int blocks_per_row = 1;
  int64_t slice = 0;
  bool values_in_smem = false;
  size_t smem = kSampleSharedBytes;
};

SampleLaunch plan_sample(const md_sample_params& p) {
  SampleLaunch plan;
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
  const int64_t smem_optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024);
  const auto slice_of = [&](int n) { return (p.vocab + n - 1) / n; };
  const auto fits = [&](int n) {
    return kSampleSharedBytes + slice_of(n) * sizeof(float) <= static_cast<size_t>(smem_optin);
  };
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, 0) >= 9) {
    int& n = plan.blocks_per_row;
    // Up to half the multiprocessors: measured on the H200, 16 rows in clusters of 8 (128 blocks) took twice
    // as long as 8 rows (clusters of 8 blocks are not all resident at once when they cover nearly every SM).
    while (n < kMaxCluster && p.rows * n * 2 <= sms / 2 && p.vocab >= int64_t{n} * 2 * kSampleThreads * 2) n *= 2;
    while (n < kMaxCluster && !fits(n) && p.rows * n * 2 <= INT_MAX) n *= 2;
  }
  plan.slice = slice_of(plan.blocks_per_row);
  plan.values_in_smem = fits(plan.blocks_per_row);
  if (plan.values_in_smem) plan.smem += plan.slice * sizeof(float);
  return plan;
}

template <typename T>
cudaError_t launch_sample(const md_sample_params& p, cudaStream_t stream) {
  const SampleLaunch plan = plan_sample(p);
  const auto kernel = sample_kernel<T>;
  const cudaError_t set = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(plan.smem));
  if (set != cudaSuccess) return set;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(p.rows * plan.blocks_per_row));
  config.blockDim = dim3(kSampleThreads);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  cudaLaunchAttribute cluster[1];
  if (plan.blocks_per_row > 1) {
    cluster[0].id = cudaLaunchAttributeClusterDimension;
    cluster[0].val.clusterDim.x = static_cast<unsigned>(plan.blocks_per_row);
    cluster[0].val.clusterDim.y = 1;
    cluster[0].val.clusterDim.z = 1;
    config.attrs = cluster;
    config.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&config, kernel, p, static_cast<int>(plan.slice), plan.values_in_smem ? 1 : 0);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_sample(const md_sample_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "sample: params is NULL");
  MD_CHECK(p->rows >= 0 && p->rows < (int64_t{1} << 31), "sample: rows must be in 0..2^31-1");
  MD_CHECK(p->vocab >= 1 && p->vocab < (int64_t{1} << 31), "sample: vocab must be in 1..2^31-1");
  MD_CHECK(p->vocab_limit >= 1 && p->vocab_limit <= p->vocab, "sample: vocab_limit must be in 1..vocab");
  MD_CHECK(p->weight_bits >= 1 && p->weight_bits <= 52 && p->vocab <= (int64_t{1} << (53 - p->weight_bits)),
           "sample: weight_bits must be in 1..52 with vocab * 2^weight_bits <= 2^53");
  MD_CHECK(md::valid_dtype(p->logits_dtype), "sample: logits_dtype must be float32, float16 or bfloat16");
  if (p->rows == 0) return cudaSuccess;
  MD_CHECK(p->logits && p->slots && p->temperature && p->top_k && p->top_p && p->min_p && p->repetition_penalty &&
               p->seed && p->step && p->seen && p->last_token && p->scratch && p->out,
           "sample: missing pointer");
  MD_CHECK(p->logits_row_stride >= p->vocab && p->seen_row_stride >= p->vocab && p->scratch_row_stride >= p->vocab,
           "sample: row strides must be >= vocab");
  return MD_DISPATCH_DTYPE(p->logits_dtype, T, [&] { return md::launch_sample<T>(*p, stream); });
}
