// gemv_staged.cu -- the staged form of md_launch_gemv (gemv.h, algo MD_GEMV_ALGO_STAGED): batch 1-16 with the
// weights copied into shared memory by bulk copies issued before pdl_wait(). At small batch the kernels between
// two projections are bound by latency and leave HBM idle; a staged projection's weights stream in meanwhile,
// so that after the wait only the products from shared memory remain. Batch 1-2: the products on CUDA cores
// (below); batch 3-16, fp16 / bf16: on tensor cores (gemv_staged_mma_kernel, further down).
//
// Batch 1-2: one block of 8 warps a multiprocessor, owning `rows` consecutive rows of w; its shared memory is a ring of
// `slots` rows (all of its rows where they fit: then every copy is issued before the wait). Thread 0 issues the
// copies (a row each, completing that slot's `full` mbarrier) and refills a slot once the 8 warps have arrived
// on its `empty` mbarrier. The warps split k (thread t: the 16-byte vectors t + 256 j), x held in registers as
// float32; each warp reduces its partial sums 8 rows at a time (shuffles) into shared memory, and once every row
// is done thread (row, batch row) adds them in warp order, adds the bias, applies the conv epilogue and stores.
#include <cstdint>
#include <type_traits>

#include "bulk.cuh"
#include "common.cuh"
#include "gemm_tc.cuh"
#include "gemv.h"
#include "gemv_epilogue.cuh"
#include "mma_sync.cuh"
#include "vec.cuh"

namespace md {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kGroup = 8;    // rows reduced together
constexpr int kMaxVecs = 4;  // 16-byte vectors of x a thread holds: k <= kMaxVecs * kThreads * (16 / element size)
// The ring's bytes: the rest of a multiprocessor's shared memory is left to the small kernels that run beside it.
constexpr int64_t kStageBytes = 216 * 1024;
constexpr int64_t kCudaCoreBatch = 2;  // batch rows of the CUDA-core products; above, tensor cores

struct StagedPlan {
  int rows, slots;
  unsigned blocks;
  size_t smem;
};

// Rows a block: n over the multiprocessors; slots: as many rows as fit in the ring beside the partial sums.
StagedPlan staged_plan(const md_gemv_params& p) {
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132), nb = p.batch;
  const int64_t rows = (p.n + sms - 1) / sms, row_bytes = p.k * elem_bytes(p.dtype) + 16;
  const int64_t partials = rows * static_cast<int64_t>(sizeof(float)) * kWarps * nb;
  const int64_t fit = partials < kStageBytes ? (kStageBytes - partials) / row_bytes : 0;
  StagedPlan plan;
  plan.rows = static_cast<int>(rows);
  plan.slots = static_cast<int>(rows < fit ? rows : fit);
  plan.blocks = static_cast<unsigned>((p.n + rows - 1) / rows);
  plan.smem = static_cast<size_t>(plan.slots * row_bytes + partials);
  return plan;
}

// x row b's vectors of thread t (t + kThreads j) as float32, zeros past k and past the batch.
template <typename T, int NB>
__device__ __forceinline__ void load_x(const md_gemv_params& p, int kv, float (&xf)[NB][kMaxVecs][Pack<T>::N]) {
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    const uint4* row = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + b * p.x_row_stride);
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int vi = threadIdx.x + j * kThreads;
      // A coherent load, not __ldg: under programmatic launch the kernel that writes x runs during this one's
      // lifetime, so x is not read-only for it (through the non-coherent path the batch-2 form read stale rows
      // inside the engine's graphs; session 20).
      const uint4 v = b < p.batch && vi < kv ? row[vi] : make_uint4(0, 0, 0, 0);
      unpack(v, xf[b][j], T());
    }
  }
}

// The warp's partial sums of rows [i0, i0 + kGroup) into red[warp][row][b] (shared memory): each (row, b) the
// warp's group_sum<32>, through rows_sum (kGroup NB sums in 9 or 16 shuffles, not 40 or 80); lane l then holds sum
// l / (32 / (kGroup NB)), and the first lane of each group of 32 / (kGroup NB) stores it.
template <int NB>
__device__ __forceinline__ void store_partials(float (&acc)[kGroup][NB], float* red, int rows, int i0) {
  constexpr int kSums = kGroup * NB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, i = lane / (32 / kSums);
  float v[kSums];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
#pragma unroll
    for (int b = 0; b < NB; ++b) v[g * NB + b] = acc[g][b];
  }
  const float sum = rows_sum(v);
  const int g = i / NB, b = i % NB;
  if (lane % (32 / kSums) == 0 && i0 + g < rows) red[(warp * rows + i0 + g) * NB + b] = sum;
}

// Every (row, batch row) of the block: the warps' partial sums added in warp order, the bias, the conv epilogue,
// the store. All at once after the products, so that the epilogue's loads are one latency, not one a row group.
template <typename T, int NB>
__device__ __forceinline__ void finish_rows(const md_gemv_params& p, const float* red, int64_t row0, int rows) {
  const int batch = static_cast<int>(p.batch);
  for (int t = threadIdx.x; t < rows * NB; t += kThreads) {
    const int i = t / NB, b = t % NB;
    if (b >= batch) continue;
    float v = 0.f;
    for (int w = 0; w < kWarps; ++w) v += red[(w * rows + i) * NB + b];
    const int64_t row = row0 + i;
    if (p.bias) v += to_f(static_cast<const T*>(p.bias)[row]);
    if (p.conv_dim > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_dim)
      v = conv_epilogue<T>(p, b, row - p.conv_lo, v);
    static_cast<T*>(p.out)[b * p.out_row_stride + row] = from_f<T>(v);
  }
}

// Grid: plan.blocks blocks of kThreads; shared memory: the ring (slots x k), full[slots] and empty[slots]
// mbarriers, then the warps' partial sums (kWarps x rows x NB floats).
template <typename T, int NB>
__global__ void __launch_bounds__(kThreads, 1) gemv_staged_kernel(const md_gemv_params p, int rows_per_block,
                                                                  int slots) {
#if MD_BULK_DEVICE
  constexpr int EPV = Pack<T>::N;
  extern __shared__ uint4 smem_vecs[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_vecs);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int rows = static_cast<int>(p.n - row0 < rows_per_block ? p.n - row0 : rows_per_block);
  const uint32_t row_bytes = static_cast<uint32_t>(p.k * sizeof(T));
  const int kv = static_cast<int>(p.k / EPV);
  const uint32_t ring = smem_address(smem), full0 = ring + slots * row_bytes, empty0 = full0 + 8 * slots;
  float* red = reinterpret_cast<float*>(smem + static_cast<size_t>(slots) * (row_bytes + 16));
  const T* w = static_cast<const T*>(p.w) + row0 * p.w_row_stride;
  auto fill = [&](int i, int s) {  // row i into slot s
    mbar_expect_tx(full0 + 8 * s, row_bytes);
    bulk_load(ring + s * row_bytes, w + i * p.w_row_stride, row_bytes, full0 + 8 * s);
  };
  pdl_release();
  if (threadIdx.x == 0) {  // the weights (no kernel writes them) before the wait
    for (int s = 0; s < slots; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kWarps);
    }
    fence_mbar_init();
    for (int s = 0; s < slots && s < rows; ++s) fill(s, s);
  }
  __syncthreads();  // the mbarriers initialised before any thread waits on them
  pdl_wait();
  float xf[NB][kMaxVecs][EPV];
  load_x<T, NB>(p, kv, xf);
  const uint4* ring4 = reinterpret_cast<const uint4*>(smem);
  int slot = 0;        // the slot of the next row
  uint32_t phase = 0;  // the parity of that slot's fill
  for (int i0 = 0; i0 < rows; i0 += kGroup) {
    // kGroup rows at a time, their loads all in flight before their products: the chains of fmaf are the
    // rows' (a row at a time, the loop was bound by the latency of each load and chain: ~0.4 us a row).
    int s[kGroup];
    uint32_t parity[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      s[g] = slot;
      parity[g] = phase;
      if (++slot == slots) slot = 0, phase ^= 1;
      if (i0 + g < rows) mbar_wait(full0 + 8 * s[g], parity[g]);
    }
    float acc[kGroup][NB] = {};
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      if (j * kThreads >= kv) break;
      const int vi = threadIdx.x + j * kThreads;
      uint4 wv[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
        wv[g] = i0 + g < rows && vi < kv ? ring4[s[g] * kv + vi] : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float wf[EPV];
        unpack(wv[g], wf, T());
#pragma unroll
        for (int b = 0; b < NB; ++b) {
#pragma unroll
          for (int e = 0; e < EPV; ++e) acc[g][b] = fmaf(wf[e], xf[b][j][e], acc[g][b]);
        }
      }
    }
    store_partials<NB>(acc, red, rows, i0);
    if (i0 + slots < rows) {  // refills: row i + slots into the slot of row i once every warp is done with it
      __syncwarp();
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int i = i0 + g;
        if (i + slots >= rows) break;
        if ((threadIdx.x & 31) == 0) mbar_arrive(empty0 + 8 * s[g]);
        if (threadIdx.x == 0) {
          mbar_wait(empty0 + 8 * s[g], parity[g]);
          fill(i + slots, s[g]);
        }
      }
    }
  }
  __syncthreads();
  finish_rows<T, NB>(p, red, row0, rows);
#else
  __trap();  // staged_ok said no: device code below 9.0
#endif
}

// ---- batch 3-16, fp16 / bf16: the products on tensor cores (mma.sync m16n8k16, mma_sync.cuh's 16-byte units) ----
// A block's rows are whole in shared memory (no ring), in tiles of 16; the warps split k in steps of 32 (warp w:
// steps w, w + 8, ..), each lane's x units (batch rows g and g + 8) loaded kRound steps ahead of their products.
// (k split over a cluster of blocks instead, so that a block reads 1/8 of x, not all of it, was slower: out_proj
// of mamba-1.4b alone at batch 4 12.3 us against 7.7, every cluster resident at once; session 21.)
constexpr int kMmaTiles = 2;   // 16-row tiles a block: rows <= 32
constexpr int kMmaBatch = 16;  // two n8 tiles of batch rows
constexpr int kRowPad = 64;    // bytes after each row: rows g and g + 1 fall in the two halves of the banks
constexpr int kRound = 4;      // k32 steps of x a lane holds in registers ahead of their products

struct MmaPlan {
  int rows, stride;  // rows a block (a multiple of 16), bytes from one row to the next in shared memory
  unsigned blocks;
  size_t smem;       // the rows, an mbarrier each, the warps' partial sums
};

MmaPlan staged_mma_plan(const md_gemv_params& p) {
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
  const int64_t rows = ((p.n + sms - 1) / sms + 15) / 16 * 16, stride = p.k * 2 + kRowPad;
  MmaPlan plan;
  plan.rows = static_cast<int>(rows);
  plan.stride = static_cast<int>(stride);
  plan.blocks = static_cast<unsigned>((p.n + rows - 1) / rows);
  plan.smem = static_cast<size_t>(rows * (stride + 8) + rows * kWarps * kMmaBatch * sizeof(float));
  return plan;
}

bool staged_mma_fits(const MmaPlan& plan) {
  return plan.rows <= 16 * kMmaTiles && plan.smem <= static_cast<size_t>(kStageBytes);
}

// Grid: plan.blocks blocks of kThreads. NT: n8 tiles of batch rows (1: batch <= 8).
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) gemv_staged_mma_kernel(const md_gemv_params p, int rows_per_block,
                                                                      int stride) {
#if MD_BULK_DEVICE
  extern __shared__ uint4 smem_vecs[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_vecs);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int rows = static_cast<int>(p.n - row0 < rows_per_block ? p.n - row0 : rows_per_block);
  const uint32_t row_bytes = static_cast<uint32_t>(p.k * sizeof(T)), base = smem_address(smem);
  const uint32_t full0 = base + rows_per_block * stride;
  float* red = reinterpret_cast<float*>(smem + static_cast<size_t>(rows_per_block) * (stride + 8));
  pdl_release();
  if (threadIdx.x == 0) {  // the weights (no kernel writes them) before the wait
    for (int i = 0; i < rows; ++i) mbar_init(full0 + 8 * i, 1);
    fence_mbar_init();
    const T* w = static_cast<const T*>(p.w) + row0 * p.w_row_stride;
    for (int i = 0; i < rows; ++i) {
      mbar_expect_tx(full0 + 8 * i, row_bytes);
      bulk_load(base + i * stride, w + i * p.w_row_stride, row_bytes, full0 + 8 * i);
    }
  }
  __syncthreads();
  pdl_wait();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int kv = static_cast<int>(p.k / 8), steps = (kv + 3) / 4;
  const int mine = steps > warp ? (steps - warp + kWarps - 1) / kWarps : 0;  // the warp's k32 steps
  const auto load_round = [&](int r0, uint4 (&xv)[kRound][NT]) {  // coherent loads: x's writer may still run
#pragma unroll
    for (int j = 0; j < kRound; ++j) {
      const int u = 4 * (warp + kWarps * (r0 + j)) + t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int b = g + 8 * nt;
        xv[j][nt] = r0 + j < mine && u < kv && b < p.batch
                        ? reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + b * p.x_row_stride)[u]
                        : make_uint4(0, 0, 0, 0);
      }
    }
  };
  uint4 xv[kRound][NT], next[kRound][NT];
  load_round(0, xv);
  for (int i = 0; i < rows; ++i) mbar_wait(full0 + 8 * i, 0);
  const int tiles = rows_per_block / 16;
  const uint4* wsm = reinterpret_cast<const uint4*>(smem);
  const int row_vecs = stride / 16;
  float acc[kMmaTiles][NT][4] = {};
  for (int r0 = 0; r0 < mine; r0 += kRound) {
    if (r0 + kRound < mine) load_round(r0 + kRound, next);
#pragma unroll
    for (int j = 0; j < kRound; ++j) {
      const int u = 4 * (warp + kWarps * (r0 + j)) + t;
      const bool in_k = r0 + j < mine && u < kv;  // past k, or rows past n: zeros, not whatever shared memory holds
#pragma unroll
      for (int mt = 0; mt < kMmaTiles; ++mt) {
        if (mt >= tiles) break;
        const int r = 16 * mt + g;
        const uint4 lo = in_k && r < rows ? wsm[r * row_vecs + u] : make_uint4(0, 0, 0, 0);
        const uint4 hi = in_k && r + 8 < rows ? wsm[(r + 8) * row_vecs + u] : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_units<T>(acc[mt][nt], lo, hi, xv[j][nt], 0);
          mma_units<T>(acc[mt][nt], lo, hi, xv[j][nt], 1);
        }
      }
    }
    if (r0 + kRound >= mine) break;
#pragma unroll
    for (int j = 0; j < kRound; ++j) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) xv[j][nt] = next[j][nt];
    }
  }
  // accumulator (row 16 mt + g (+ 8), batch row 8 nt + 2 t (+ 1)) -> red[warp][row][batch row]
#pragma unroll
  for (int mt = 0; mt < kMmaTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = 16 * mt + g + (e >= 2 ? 8 : 0), b = 8 * nt + 2 * t + (e & 1);
        if (mt < tiles && r < rows) red[(warp * rows + r) * kMmaBatch + b] = acc[mt][nt][e];
      }
    }
  }
  __syncthreads();
  finish_rows<T, kMmaBatch>(p, red, row0, rows);
#else
  __trap();  // staged_ok said no: device code below 9.0
#endif
}

// kernel under programmatic launch, with the same shared-memory bound on every call (a plan's bytes are within it):
// lowering it after a graph captured a larger launch would fail that graph's replays.
template <typename... Params, typename... Args>
cudaError_t launch_staged(void (*kernel)(Params...), unsigned blocks, size_t smem, cudaStream_t stream, Args... args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStageBytes);
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  return err != cudaSuccess ? err : launch_pdl(kernel, blocks, kThreads, smem, stream, args...);
}

template <typename T>
cudaError_t launch_staged_typed(const md_gemv_params& p, cudaStream_t stream) {
  if constexpr (!std::is_same<T, float>::value) {  // staged_ok: batch 3-16 only in the 16-bit dtypes
    if (p.batch > kCudaCoreBatch) {
      const MmaPlan plan = staged_mma_plan(p);
      const auto kernel = p.batch <= 8 ? gemv_staged_mma_kernel<T, 1> : gemv_staged_mma_kernel<T, 2>;
      return launch_staged(kernel, plan.blocks, plan.smem, stream, p, plan.rows, plan.stride);
    }
  }
  const StagedPlan plan = staged_plan(p);
  const auto kernel = p.batch <= 1 ? gemv_staged_kernel<T, 1> : gemv_staged_kernel<T, 2>;
  return launch_staged(kernel, plan.blocks, plan.smem, stream, p, plan.rows, plan.slots);
}

}  // namespace

bool gemv_staged_ok(const md_gemv_params& p) {
  if (!valid_dtype(p.dtype) || p.batch < 1 || p.batch > kStagedMaxBatch || p.norm_w) return false;
  const int64_t size = elem_bytes(p.dtype), epv = 16 / size;
  const bool vec = p.k > 0 && p.k % epv == 0 && (p.w_row_stride * size) % 16 == 0 &&
                   rows_aligned(p.x, p.batch, p.x_row_stride, size) && is_aligned(p.w);
  if (!vec || device_attribute(cudaDevAttrComputeCapabilityMajor, 0) < 9) return false;
  if (p.batch > kCudaCoreBatch) return p.dtype != MD_FLOAT32 && staged_mma_fits(staged_mma_plan(p));
  if (p.k > kMaxVecs * kThreads * epv) return false;
  const StagedPlan plan = staged_plan(p);
  return plan.slots >= (plan.rows < kGroup ? plan.rows : kGroup);  // a row group's rows in distinct slots
}

cudaError_t launch_gemv_staged(const md_gemv_params& p, cudaStream_t stream) {
  switch (p.dtype) {
    case MD_FLOAT32: return launch_staged_typed<float>(p, stream);
    case MD_FLOAT16: return launch_staged_typed<__half>(p, stream);
    default: return launch_staged_typed<__nv_bfloat16>(p, stream);
  }
}

}  // namespace md
