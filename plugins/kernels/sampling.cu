// sampling.cu -- the sampler's kernels (sampling.h): Philox4x32-10 uniforms, one per (seed, step), and the
// sampling of one token per row.
#include <climits>
#include <cstdint>

#include "common.cuh"
#include "sampling.h"

namespace md {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
constexpr int kThreads = 256;

// First output word of Philox4x32-10 for counter (counter low, counter high, 0, 0) and a 64-bit key.
__device__ __forceinline__ uint32_t philox_first_word(uint64_t key, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint32_t lo0 = kM0 * c0, hi0 = __umulhi(kM0, c0);
    const uint32_t lo1 = kM1 * c2, hi1 = __umulhi(kM1, c2);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return c0;
}

__global__ void philox_uniform_kernel(const md_philox_params p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.n) return;
  const int64_t r = p.rows ? static_cast<const int64_t*>(p.rows)[i] : i;
  const uint64_t seed = static_cast<uint64_t>(static_cast<const int64_t*>(p.seeds)[r]);
  const uint64_t step = static_cast<uint64_t>(static_cast<const int64_t*>(p.steps)[r]);
  const uint32_t word = philox_first_word(seed, step);
  // Exact in float32: word >> 9 < 2^23, + 0.5 needs 24 bits, * 2^-23 only shifts the exponent.
  static_cast<float*>(p.out)[i] = (static_cast<float>(word >> 9) + 0.5f) * 0x1p-23f;
}


// ---- one token per row (md_launch_sample) ---------------------------------------------------------------
// The sorted order of runtime/sampler.py (value descending, equal values by lower id) is never built: every
// quantity the sampler needs is a position where a running sum along that order reaches a target, and a
// block finds it by radix selection on the value's bits, with histograms of the weights, then among equal
// values by id. The row's scaled values live in the caller's scratch (L1/L2-resident between passes).
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kDigitBits = 8;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kUnroll = 8;  // loads in flight per thread: each pass over the row is latency-bound otherwise

// Calls f(i, v) with v = row[i] for i = threadIdx.x + k * kSampleThreads, k = 0, 1, ... in order, kUnroll loads
// ahead; every thread of the block makes the same calls (v = 0 for i >= vocab), so f may hold warp collectives.
template <typename F>
__device__ __forceinline__ void row_loop(const float* __restrict__ row, int vocab, F f) {
  for (int base = 0; base < vocab; base += kUnroll * kSampleThreads) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      v[u] = i < vocab ? row[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) f(base + u * kSampleThreads + static_cast<int>(threadIdx.x), v[u]);
  }
}

struct SampleShared {
  unsigned long long hist[kSampleWarps][kBuckets];  // a histogram per warp: no contention between warps
  int64_t warp_sums[kSampleWarps];
  float warp_value[kSampleWarps];
  int warp_index[kSampleWarps];
  uint32_t digit;
  int64_t digit_above;
  int found;
};

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

// The block's largest `value`, and the lowest `index` holding it, in every thread.
__device__ __forceinline__ void block_argmax(float& value, int& index, SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int round = 0; round < 2; ++round) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, value, d);
      const int i = __shfl_xor_sync(0xffffffffu, index, d);
      if (v > value || (v == value && i < index)) {
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
}

// One row after its first pass: scaled values, top value, 2^S, and its top-k boundary (kept iff the key is
// above kth_key, or equal with an id <= kth_id; everything is kept when top-k is off).
struct SampleRow {
  const float* scaled;
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

// With unit weights (kCount: every token) or the row's weights (tokens in the top-k): the key of the token at
// which the running sum along the sorted order first reaches `target` (1 <= target <= the sum of all);
// *above = the sum over the keys greater than it.
template <bool kCount>
__device__ uint32_t radix_select(const SampleRow& row, int64_t target, SampleShared& sh, int64_t* above) {
  uint32_t prefix = 0;
  int64_t acc = 0;
  for (int shift = 32 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    for (int b = threadIdx.x; b < kSampleWarps * kBuckets; b += kSampleThreads) (&sh.hist[0][0])[b] = 0;
    __syncthreads();
    const uint32_t fixed = shift + kDigitBits >= 32 ? 0u : ~0u << (shift + kDigitBits);
    row_loop(row.scaled, row.vocab, [&](int i, float v) {
      uint64_t w = 0;
      uint32_t digit = 0;
      const uint32_t key = order_key(v);
      if (i < row.vocab && (key & fixed) == prefix) {
        w = kCount ? 1 : (row.in_top_k(key, i) ? row.weight_of(row.prob(v)) : 0);
        digit = (key >> shift) & (kBuckets - 1);
      }
      histogram_add<kCount>(sh.hist[threadIdx.x >> 5], digit, w);
    });
    __syncthreads();
    // Buckets from the highest digit down: the one where the running sum reaches target - acc.
    const int64_t need = target - acc;
    const int digit = kBuckets - 1 - static_cast<int>(threadIdx.x);
    int64_t bucket = 0;
    if (digit >= 0) {
      for (int w = 0; w < kSampleWarps; ++w) bucket += static_cast<int64_t>(sh.hist[w][digit]);
    }
    int64_t total;
    const int64_t before = block_exclusive_sum(bucket, sh, &total);
    if (bucket > 0 && before < need && need <= before + bucket) {
      sh.digit = static_cast<uint32_t>(digit);
      sh.digit_above = before;
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    acc += sh.digit_above;
  }
  *above = acc;
  return prefix;
}

// The id of the j-th (from 0, in id order) token whose key is `key`; j must be below their count.
__device__ int nth_with_key(const SampleRow& row, uint32_t key, int64_t j, SampleShared& sh) {
  int64_t passed = 0;
  for (int base = 0; base < row.vocab; base += kUnroll * kSampleThreads) {
    uint32_t keys[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      keys[u] = i < row.vocab ? order_key(row.scaled[i]) : ~key;
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
  return row.vocab - 1;
}

// Steps 4-8 of the sampler's docstring on a row whose first pass is done: the drawn token.
__device__ int draw(SampleRow& row, int64_t top_k, float top_p, float min_p, float uniform, SampleShared& sh) {
  if (top_k > 0 && top_k < row.vocab) {  // the token at position k - 1 bounds the top-k
    int64_t above;
    const uint32_t key = radix_select<true>(row, top_k, sh, &above);
    const int id = nth_with_key(row, key, top_k - 1 - above, sh);
    row.kth_key = key;
    row.kth_id = id;
  }
  int64_t own_total = 0, own_min_p = 0;
  row_loop(row.scaled, row.vocab, [&](int i, float v) {
    if (i >= row.vocab || !row.in_top_k(order_key(v), i)) return;
    const float p = row.prob(v);
    const int64_t w = row.weight_of(p);
    own_total += w;
    own_min_p += p >= min_p ? w : 0;
  });
  int64_t total, kept;
  block_exclusive_sum(own_total, sh, &total);
  block_exclusive_sum(own_min_p, sh, &kept);  // min-p keeps a prefix: its running sum at its end
  if (top_p < 1.0f) {  // top-p ends at the first position whose running sum reaches top_p * total
    const int64_t target = static_cast<int64_t>(ceil(static_cast<double>(top_p) * static_cast<double>(total)));
    int64_t above;
    const uint32_t key = radix_select<false>(row, target, sh, &above);
    const int64_t w = row.weight_of(row.prob(key_value(key)));  // every kept token of that value weighs w
    kept = min(kept, above + ((target - above - 1) / w + 1) * w);
  }
  const int64_t target = static_cast<int64_t>(floor(static_cast<double>(uniform) * static_cast<double>(kept))) + 1;
  int64_t above;
  const uint32_t key = radix_select<false>(row, target, sh, &above);
  const int64_t w = row.weight_of(row.prob(key_value(key)));
  return nth_with_key(row, key, (target - above - 1) / w, sh);
}

template <typename T>
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const md_sample_params p) {
  extern __shared__ __align__(16) unsigned char sample_smem[];
  SampleShared& sh = *reinterpret_cast<SampleShared*>(sample_smem);
  const int64_t r = blockIdx.x;
  const int64_t slot = static_cast<const int64_t*>(p.slots)[r];
  const int vocab = static_cast<int>(p.vocab), limit = static_cast<int>(p.vocab_limit);
  const float temperature = static_cast<const float*>(p.temperature)[slot];
  const float penalty = static_cast<const float*>(p.repetition_penalty)[slot];
  const bool greedy = temperature == 0.0f;
  const float divisor = greedy ? 1.0f : temperature;
  const T* __restrict__ logits = static_cast<const T*>(p.logits) + r * p.logits_row_stride;
  uint8_t* seen = static_cast<uint8_t*>(p.seen) + slot * p.seen_row_stride;
  float* scaled = static_cast<float*>(p.scratch) + r * p.scratch_row_stride;

  // Steps 1-3: mask, penalty, the greedy argmax (first of equal maxima), temperature; the top value.
  float best = -INFINITY, top = -INFINITY;
  int best_index = INT_MAX, unused = 0;
  for (int base = 0; base < vocab; base += kUnroll * kSampleThreads) {
    float xs[kUnroll];
    bool penalised[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      xs[u] = i < limit ? to_f(logits[i]) : -INFINITY;
      penalised[u] = i < vocab && seen[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kSampleThreads + static_cast<int>(threadIdx.x);
      if (i >= vocab) break;
      float x = xs[u];
      if (penalised[u]) x = x > 0.0f ? x / penalty : x * penalty;
      if (x > best || best_index == INT_MAX) {
        best = x;
        best_index = i;
      }
      const float v = x / divisor + 0.0f;  // + 0.0: -0.0 -> +0.0
      scaled[i] = v;
      top = fmaxf(top, v);
    }
  }
  block_argmax(best, best_index, sh);
  block_argmax(top, unused, sh);
  int token = best_index;
  if (!greedy) {
    SampleRow row{scaled, vocab, top, ldexpf(1.0f, static_cast<int>(p.weight_bits))};
    const uint64_t seed = static_cast<uint64_t>(static_cast<const int64_t*>(p.seed)[slot]);
    const uint64_t step = static_cast<uint64_t>(static_cast<int64_t*>(p.step)[slot]);
    const float uniform = (static_cast<float>(philox_first_word(seed, step) >> 9) + 0.5f) * 0x1p-23f;
    token = draw(row, static_cast<const int64_t*>(p.top_k)[slot], static_cast<const float*>(p.top_p)[slot],
                 static_cast<const float*>(p.min_p)[slot], uniform, sh);
  }
  if (threadIdx.x == 0) {
    static_cast<int64_t*>(p.out)[r] = token;
    static_cast<int64_t*>(p.step)[slot] += 1;
    static_cast<int64_t*>(p.last_token)[slot] = token;
    seen[token] = 1;
  }
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_philox_uniform(const md_philox_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "philox_uniform: params is NULL");
  MD_CHECK(p->n >= 0 && p->n < (int64_t{1} << 31), "philox_uniform: n must be in 0..2^31-1");
  if (p->n == 0) return cudaSuccess;
  MD_CHECK(p->seeds && p->steps && p->out, "philox_uniform: missing pointer");
  const unsigned blocks = static_cast<unsigned>((p->n + md::kThreads - 1) / md::kThreads);
  md::philox_uniform_kernel<<<blocks, md::kThreads, 0, stream>>>(*p);
  return cudaGetLastError();
}

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
  return MD_DISPATCH_DTYPE(p->logits_dtype, T, [&] {
    constexpr int smem = sizeof(md::SampleShared);
    const cudaError_t set = cudaFuncSetAttribute(md::sample_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (set != cudaSuccess) return set;
    md::sample_kernel<T><<<static_cast<unsigned>(p->rows), md::kSampleThreads, smem, stream>>>(*p);
    return cudaGetLastError();
  });
}
