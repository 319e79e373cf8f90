// philox.cu -- md_launch_philox_uniform (sampling.h): one Philox4x32-10 uniform per (seed, step).
#include <cstdint>

#include "common.cuh"
#include "philox.cuh"
#include "sampling.h"

namespace md {
namespace {

constexpr int kThreads = 256;

__global__ void philox_uniform_kernel(const md_philox_params p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.n) return;
  const int64_t r = p.rows ? static_cast<const int64_t*>(p.rows)[i] : i;
  const uint64_t seed = static_cast<uint64_t>(static_cast<const int64_t*>(p.seeds)[r]);
  const uint64_t step = static_cast<uint64_t>(static_cast<const int64_t*>(p.steps)[r]);
  static_cast<float*>(p.out)[i] = philox_uniform(seed, step);
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
