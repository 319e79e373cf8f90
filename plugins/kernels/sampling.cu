// sampling.cu -- Philox4x32-10 uniforms, one per (seed, step) (sampling.h).
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
