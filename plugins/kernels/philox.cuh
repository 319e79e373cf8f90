// philox.cuh -- Philox4x32-10 (the sampler's counter-based random numbers), device side: the first output word
// for a (key, counter) and the uniform in (0, 1) made from it. Reference: mamba_deploy/ops/philox.py.
#pragma once

#include <cstdint>

namespace md {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // Weyl key increments

// First output word of Philox4x32-10 for counter (counter low, counter high, 0, 0) and a 64-bit key.
__device__ __forceinline__ uint32_t philox_first_word(uint64_t key, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint32_t lo0 = kPhiloxM0 * c0, hi0 = __umulhi(kPhiloxM0, c0);
    const uint32_t lo1 = kPhiloxM1 * c2, hi1 = __umulhi(kPhiloxM1, c2);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return c0;
}

// uniform(w) = ((w >> 9) + 0.5) * 2^-23, exact in float32: w >> 9 < 2^23, + 0.5 needs 24 bits, * 2^-23 only
// shifts the exponent.
__device__ __forceinline__ float philox_uniform(uint64_t key, uint64_t counter) {
  return (static_cast<float>(philox_first_word(key, counter) >> 9) + 0.5f) * 0x1p-23f;
}

}  // namespace md
