// gemv_skinny.cu -- md_launch_gemv's tensor-core form for few output columns over a long k (n <= 256, no conv
// epilogue: Mamba1's x_proj, 160 x 4,096 in mamba-1.4b), batch 1..64, fp16 / bf16, compute capability 9.0+.
//
// gemm_tc.cu's blocks are 128 columns wide and split k over at most 8 blocks, so x_proj ran as 2 column
// blocks x 4 splits: 8 blocks for 1.3 MB of weights and 0.5 MB of x at batch 64, each walking 16 pipeline
// stages (9.4 us a call in the batch-64 step). Here a block takes 16 columns (one m16 tile) and a k range; its
// 8 warps take the range's k32 steps in turn, kInFlight at a time, loading their 16-byte units straight into
// registers (mma_sync.cuh), the weights of the first round before the PDL wait and those of the next round
// before the current round's products. With the k range split over a cluster of S blocks (grid.y), x_proj is
// 10 x S blocks of one or two rounds each. The warps' partial tiles are added in shared memory in warp order,
// then each block of the cluster finishes 1/S of the outputs from the S blocks' sums (distributed shared
// memory, in rank order): fixed orders, so the same inputs give the same bits.
#include <cstdint>

#include "cluster.cuh"
#include "common.cuh"
#include "gemm_tc.cuh"
#include "mma_sync.cuh"

namespace md {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kCols = 16;                // output columns a block: one m16 tile
constexpr int kStep = 32;                // k of a warp's step: two k16 products
constexpr int kInFlight = 2;             // steps a warp loads before their products
constexpr int kRowStride = kCols + 4;    // floats a partial-tile row: a warp's fragment stores hit distinct banks
constexpr int kMaxCluster = 16;          // non-portable above 8 (Hopper allows 16)
constexpr int kAutoMaxCluster = 8;

__device__ __forceinline__ uint4 load_weights(const void* ptr, bool ok) {
  return ok ? __ldg(static_cast<const uint4*>(ptr)) : make_uint4(0, 0, 0, 0);
}
// x was written by the previous kernel: a plain load, after the PDL wait.
__device__ __forceinline__ uint4 load_x(const void* ptr, bool ok) {
  return ok ? *static_cast<const uint4*>(ptr) : make_uint4(0, 0, 0, 0);
}

// Grid (ceil(n / 16), S), clusters of (1, S, 1); krange: the k of a block (a multiple of kStep).
template <typename T, int NB>
__global__ void __launch_bounds__(kThreads) gemv_skinny_kernel(const md_gemv_params p, int64_t krange) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ __align__(16) float part[kWarps][NB * 8][kRowStride];  // each warp's partial tile
  __shared__ __align__(16) float tile[NB * 8][kRowStride];          // the block's sum, read by the cluster
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + g;
  const int64_t k_lo = static_cast<int64_t>(blockIdx.y) * krange, k_hi = min(p.k, k_lo + krange);
  const T* w = static_cast<const T*>(p.w);
  const T* x = static_cast<const T*>(p.x);
  const bool lo_ok = col < p.n, hi_ok = col + 8 < p.n;
  const T* w_lo = w + (lo_ok ? col : 0) * p.w_row_stride + 8 * t;  // weight rows g and g + 8 of the tile
  const T* w_hi = w + (hi_ok ? col + 8 : 0) * p.w_row_stride + 8 * t;
  const T* x_row[NB];
  bool x_ok[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    const int m = nb * 8 + g;
    x_ok[nb] = m < p.batch;
    x_row[nb] = x + (x_ok[nb] ? m : 0) * p.x_row_stride + 8 * t;
  }
  // A round: steps base + kStep * kWarps * j, j < kInFlight, of this warp; a unit is whole inside or outside
  // the range (k_hi and the steps are multiples of 8).
  constexpr int64_t kStride = int64_t{kStep} * kWarps, kRound = kStride * kInFlight;
  const int64_t unit = 8 * t;
  uint4 wl[kInFlight], wh[kInFlight];
  auto weights = [&](int64_t base, uint4 (&lo)[kInFlight], uint4 (&hi)[kInFlight]) {
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int64_t k = base + kStride * j;
      const bool ok = k + unit < k_hi;
      lo[j] = load_weights(w_lo + (ok ? k : 0), ok && lo_ok);
      hi[j] = load_weights(w_hi + (ok ? k : 0), ok && hi_ok);
    }
  };
  float acc[NB][4];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.f;

  pdl_release();
  int64_t base = k_lo + kStep * warp;
  weights(base, wl, wh);  // no kernel writes the weights: before the wait
  pdl_wait();
  for (; base < k_hi; base += kRound) {
    uint4 xv[kInFlight][NB];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int64_t k = base + kStride * j;
      const bool ok = k + unit < k_hi;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) xv[j][nb] = load_x(x_row[nb] + (ok ? k : 0), ok && x_ok[nb]);
    }
    uint4 nl[kInFlight], nh[kInFlight];
    weights(base + kRound, nl, nh);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) mma_units<T>(acc[nb], wl[j], wh[j], xv[j][nb], half);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      wl[j] = nl[j];
      wh[j] = nh[j];
    }
  }

  // The fragment: acc[nb] = out rows nb * 8 + 2t, + 1 of columns g (c0, c1) and g + 8 (c2, c3).
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    float* r = &part[warp][nb * 8 + 2 * t][g];
    r[0] = acc[nb][0];
    r[kRowStride] = acc[nb][1];
    r[8] = acc[nb][2];
    r[kRowStride + 8] = acc[nb][3];
  }
  __syncthreads();
  constexpr int kQuads = NB * 8 * kCols / 4;  // 4 columns a thread
  for (int q = threadIdx.x; q < kQuads; q += kThreads) {
    const int r = q / (kCols / 4), c = q % (kCols / 4) * 4;
    float4 s = *reinterpret_cast<const float4*>(&part[0][r][c]);
#pragma unroll
    for (int wi = 1; wi < kWarps; ++wi) {
      const float4 v = *reinterpret_cast<const float4*>(&part[wi][r][c]);
      s = make_float4(s.x + v.x, s.y + v.y, s.z + v.z, s.w + v.w);
    }
    *reinterpret_cast<float4*>(&tile[r][c]) = s;
  }

  const uint32_t S = gridDim.y, rank = S > 1 ? cluster_rank() : 0;
  if (S > 1)
    cluster_sync();
  else
    __syncthreads();
  const int64_t total = p.batch * (kCols / 4), per = (total + S - 1) / S, e_hi = min(total, (rank + 1) * per);
  for (int64_t e = rank * per + threadIdx.x; e < e_hi; e += kThreads) {
    const int r = static_cast<int>(e / (kCols / 4)), c = static_cast<int>(e % (kCols / 4)) * 4;
    const float4 sum = cluster_sum4<kMaxCluster>(&tile[r][c], S);
    const float vals[4] = {sum.x, sum.y, sum.z, sum.w};
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kCols + c;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (n0 + j >= p.n) break;
      float v = vals[j];
      if (p.bias) v += to_f(static_cast<const T*>(p.bias)[n0 + j]);
      static_cast<T*>(p.out)[r * p.out_row_stride + n0 + j] = from_f<T>(v);
    }
  }
  if (S > 1) cluster_sync_exit();  // no block leaves while another still reads its tile
#else
  __trap();  // launch_gemv_tc runs it on compute capability 9.0+ only
#endif
}

// Blocks in the k cluster: the smallest power of two that gives a block a multiprocessor (at most 8, each
// block at least one k step a warp).
int auto_cluster(const md_gemv_params& p, int64_t col_blocks) {
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
  int split = 1;
  while (split < kAutoMaxCluster && col_blocks * split < sms && p.k >= int64_t{kStep} * kWarps * split * 2) split *= 2;
  return split;
}

template <typename T, int NB>
cudaError_t launch_nb(const md_gemv_params& p, cudaStream_t stream) {
  const auto kernel = gemv_skinny_kernel<T, NB>;
  const int64_t col_blocks = (p.n + kCols - 1) / kCols;
  const int split = p.split_k ? static_cast<int>(p.split_k) : auto_cluster(p, col_blocks);
  if (split > 8) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
  }
  const int64_t krange = ((p.k + split - 1) / split + kStep - 1) / kStep * kStep;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(split));
  return launch_pdl_cluster(kernel, grid, kThreads, 0, stream, static_cast<unsigned>(split), p, krange);
}

template <typename T>
cudaError_t launch_typed(const md_gemv_params& p, cudaStream_t s) {
  return with_batch_tiles(p.batch, [&](auto nb) { return launch_nb<T, decltype(nb)::value>(p, s); });
}

}  // namespace

bool skinny_form(const md_gemv_params& p) { return p.n <= kSkinnyMaxN && p.conv_dim == 0; }

cudaError_t launch_gemv_skinny(const md_gemv_params& p, cudaStream_t stream) {
  return p.dtype == MD_FLOAT16 ? launch_typed<__half>(p, stream) : launch_typed<__nv_bfloat16>(p, stream);
}

}  // namespace md
