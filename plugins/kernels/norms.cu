// norms.cu -- fused residual add + RMSNorm / LayerNorm, Mamba2's gated grouped RMSNorm, and the decode row norm
// (gemv.h: 16-byte accesses, one block a row or group; it may sum a k-split projection's float32 slices first).
// References: mamba_deploy/ops/norms.py (add_norm_ref, gated_rms_norm_ref).
//
// One block per row (per (row, group) for the gated norm). Each thread keeps up to kMaxPer
// elements of the row in registers (element tid + i * blockDim.x: coalesced), so the row is read
// once and written once; the statistics are block-wide sums in float32. Element-wise aliasing
// (residual_out == residual, out == x) is safe: each element is read and written by one thread.
#include "common.cuh"
#include "gemv.h"
#include "vec.cuh"

namespace md {
namespace {

constexpr int kMaxPer = MD_MAX_NORM_HIDDEN / 1024;  // elements per thread at 1024 threads

int threads_for(int64_t n) {
  int64_t t = (n + 7) / 8;           // aim at 8 elements per thread
  t = (t + 31) / 32 * 32;
  if (t < 32) t = 32;
  if (t * kMaxPer < n) t = (n + kMaxPer - 1) / kMaxPer;
  t = (t + 31) / 32 * 32;
  return static_cast<int>(t > 1024 ? 1024 : t);
}

__global__ void __launch_bounds__(1024) add_norm_kernel(const md_add_norm_params p) {
  pdl_release();
  pdl_wait();
  __shared__ float scratch[33];
  const int64_t row = blockIdx.x, n = p.hidden;
  const int64_t xo = row * p.x_row_stride, ro = row * p.residual_row_stride;
  float v[kMaxPer];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    v[i] = 0.f;
    if (e < n) {
      v[i] = load_any(p.x, p.x_dtype, xo + e) + (p.residual ? load_any(p.residual, p.residual_dtype, ro + e) : 0.f);
      sum += p.is_rms ? v[i] * v[i] : v[i];
    }
  }
  if (p.residual_out) {
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (e < n) store_any(p.residual_out, p.residual_out_dtype, row * p.residual_out_row_stride + e, v[i]);
    }
  }
  float mean = 0.f, inv;
  if (p.is_rms) {
    inv = rsqrtf(block_sum(sum, scratch) / n + static_cast<float>(p.eps));
  } else {
    mean = block_sum(sum, scratch) / n;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (e < n) sq += (v[i] - mean) * (v[i] - mean);
    }
    inv = rsqrtf(block_sum(sq, scratch) / n + static_cast<float>(p.eps));
  }
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (e >= n) continue;
    float o = (v[i] - mean) * inv * load_any(p.weight, p.weight_dtype, e);
    if (p.bias) o += load_any(p.bias, p.weight_dtype, e);
    store_any(p.out, p.out_dtype, row * p.out_row_stride + e, o);
  }
}

// Grid: (rows, hidden / group_size). The bound names its one block a multiprocessor: with __launch_bounds__(1024)
// alone ptxas (CUDA 13) kept the kernel at 32 registers and spilled one once silu divided with __fdividef.
__global__ void __launch_bounds__(1024, 1) gated_rms_norm_kernel(const md_gated_rms_norm_params p) {
  pdl_release();
  pdl_wait();
  __shared__ float scratch[33];
  const int64_t row = blockIdx.x, gs = p.group_size, base = blockIdx.y * gs;
  float v[kMaxPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    v[i] = 0.f;
    if (e < gs) {
      v[i] = load_any(p.x, p.x_dtype, row * p.x_row_stride + base + e);
      if (p.z) v[i] *= silu(load_any(p.z, p.x_dtype, row * p.z_row_stride + base + e));
      ss += v[i] * v[i];
    }
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / gs + static_cast<float>(p.eps));
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (e < gs) {
      store_any(p.out, p.out_dtype, row * p.out_row_stride + base + e,
                v[i] * inv * load_any(p.weight, p.weight_dtype, base + e));
    }
  }
}

// x at element i of a row (md_row_norm_params.x_parts): dtype, or the sum of float32 slices in slice order,
// rounded to dtype.
__device__ __forceinline__ void load_x8(const md_row_norm_params& p, int64_t i, float (&v)[8]) {
  if (!p.x_parts) {
    load8_any(p.x, p.dtype, i, v);
    return;
  }
  load8_any(p.x, MD_FLOAT32, i, v);
  for (int64_t s = 1; s < p.x_parts; ++s) {
    float o[8];
    load8_any(p.x, MD_FLOAT32, s * p.x_part_stride + i, o);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] += o[j];
  }
  round8_any(v, p.dtype);
}

// The folded gated norm's factor of row r (md_row_norm_params.x_sumsq): every warp adds the row's partial sums in
// the same order (lane strides, then group_sum's tree), so every thread of the block holds the same value.
__device__ __forceinline__ float folded_norm_factor(const md_row_norm_params& p, int64_t r) {
  const float* sums = static_cast<const float*>(p.x_sumsq) + r * p.x_sumsq_row_stride;
  float s = 0.f;
  for (int64_t i = threadIdx.x % 32; i < p.x_sumsq_count; i += 32) s += sums[i];
  return rms_inverse(group_sum<32>(s), p.x_sumsq_dim, p.x_sumsq_eps);
}

// Row norm. Grid: (rows, hidden / group_size); group_size / 8 threads, 8 elements each.
__global__ void __launch_bounds__(1024) row_norm_kernel(const md_row_norm_params p) {
  pdl_release();
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x, e = static_cast<int64_t>(blockIdx.y) * p.group_size + threadIdx.x * 8;
  float v[8], w[8];
  load8_any(p.weight, p.dtype, e, w);  // before the wait: no kernel writes the weights
  pdl_wait();
  load_x8(p, r * p.x_row_stride + e, v);
  if (p.x_sumsq) {
    const float f = folded_norm_factor(p, r);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] *= f;
  }
  if (p.residual) {
    float o[8];
    load8_any(p.residual, p.gate ? p.dtype : p.residual_dtype, r * p.residual_row_stride + e, o);
    norm_combine8(v, o, p.gate != 0);
  }
  if (!p.gate && p.residual_out) store8_any(p.residual_out, p.residual_dtype, r * p.residual_out_row_stride + e, v);
  const float inv = rms_inverse(block_sum(sum_squares8(v, 0.f), scratch), p.group_size, p.eps);
  norm_scale8(v, inv, w);
  store8_any(p.out, p.dtype, r * p.out_row_stride + e, v);
}

// row_norm_kernel for a 16-bit T whose x is one tensor and whose residual (R) is float32 or T, at a prefill's
// rows: the same elements a thread and the same float operations, with no dtype branches, so ptxas fits it in 32
// registers and a multiprocessor holds 2,048 threads. Why: one block a row loads, then waits at block_sum with
// nothing in flight; at 64 registers (the general kernel) two 512-thread gated-norm blocks a multiprocessor kept
// HBM at half its copy rate (H200, 2,048 x 4,096: 23.8 us against 16.6; docs/performance.md, session 48). Decode's
// norms (at most 64 rows) keep the general kernel: this one was timed only at prefill sizes.
constexpr int64_t kTypedMinRows = 256;

template <typename T, typename R, bool kGate>
__global__ void __launch_bounds__(1024, 2) row_norm_typed_kernel(const md_row_norm_params p) {
  pdl_release();
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x, e = static_cast<int64_t>(blockIdx.y) * p.group_size + threadIdx.x * 8;
  const uint4 w_bits = __ldg(reinterpret_cast<const uint4*>(static_cast<const T*>(p.weight) + e));
  pdl_wait();
  float v[8];
  load8(static_cast<const T*>(p.x) + r * p.x_row_stride + e, v);
  if (p.residual) {
    float o[8];
    if constexpr (kGate) load8(static_cast<const T*>(p.residual) + r * p.residual_row_stride + e, o);
    else load8(static_cast<const R*>(p.residual) + r * p.residual_row_stride + e, o);
    norm_combine8(v, o, kGate);
  }
  if (!kGate && p.residual_out) store8(static_cast<R*>(p.residual_out) + r * p.residual_out_row_stride + e, v);
  const float inv = rms_inverse(block_sum(sum_squares8(v, 0.f), scratch), p.group_size, p.eps);
  float w[8];
  unpack(w_bits, w, T());
  norm_scale8(v, inv, w);
  store8(static_cast<T*>(p.out) + r * p.out_row_stride + e, v);
}

template <typename T>
cudaError_t launch_row_norm_typed(const md_row_norm_params& p, dim3 grid, unsigned threads, cudaStream_t stream) {
  if (p.gate) return launch_pdl(row_norm_typed_kernel<T, T, true>, grid, threads, 0, stream, p);
  if (p.residual_dtype == MD_FLOAT32)
    return launch_pdl(row_norm_typed_kernel<T, float, false>, grid, threads, 0, stream, p);
  return launch_pdl(row_norm_typed_kernel<T, T, false>, grid, threads, 0, stream, p);
}

// gemv.h's "every row 16-byte aligned": each pointer and, past one row, each row stride in bytes a multiple of 16
// (every access is a 16-byte vector; a misaligned one would fault on the device, not return an error).
bool row_norm_aligned(const md_row_norm_params& p) {
  const int64_t e = elem_bytes(p.dtype), res = p.gate ? e : elem_bytes(p.residual_dtype);
  return is_aligned(p.weight) && rows_aligned(p.x, p.rows, p.x_row_stride, p.x_parts ? 4 : e) &&
         rows_aligned(p.out, p.rows, p.out_row_stride, e) &&
         rows_aligned(p.residual, p.rows, p.residual_row_stride, res) &&
         rows_aligned(p.residual_out, p.rows, p.residual_out_row_stride, res);
}

// Whether row_norm_typed_kernel serves p: a prefill's rows of a 16-bit model, x one tensor, nothing owed from a
// folded norm, the residual float32 or the model's dtype.
bool row_norm_typed_serves(const md_row_norm_params& p) {
  return p.rows >= kTypedMinRows && p.dtype != MD_FLOAT32 && !p.x_parts && !p.x_sumsq &&
         (p.gate || p.residual_dtype == MD_FLOAT32 || p.residual_dtype == p.dtype);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_add_norm(const md_add_norm_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "add_norm: params is NULL");
  MD_CHECK(p->rows >= 0 && p->hidden > 0 && p->hidden <= MD_MAX_NORM_HIDDEN, "add_norm: hidden must be in 1..16384");
  MD_CHECK(p->x && p->weight && p->out, "add_norm: x, weight and out are required");
  MD_CHECK(md::valid_dtype(p->x_dtype) && md::valid_dtype(p->out_dtype) && md::valid_dtype(p->weight_dtype) &&
               md::valid_dtype(p->residual_dtype) && md::valid_dtype(p->residual_out_dtype),
           "add_norm: bad dtype code");
  MD_CHECK(p->rows < (int64_t{1} << 31), "add_norm: too many rows");
  if (p->rows == 0) return cudaSuccess;
  return md::launch_pdl(md::add_norm_kernel, static_cast<unsigned>(p->rows), md::threads_for(p->hidden), 0, stream,
                        *p);
}

extern "C" cudaError_t md_launch_gated_rms_norm(const md_gated_rms_norm_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "gated_rms_norm: params is NULL");
  MD_CHECK(p->rows >= 0 && p->hidden > 0 && p->group_size > 0 && p->hidden % p->group_size == 0,
           "gated_rms_norm: group_size must divide hidden");
  MD_CHECK(p->group_size <= MD_MAX_NORM_HIDDEN, "gated_rms_norm: group_size must be <= 16384");
  MD_CHECK(p->x && p->weight && p->out, "gated_rms_norm: x, weight and out are required");
  MD_CHECK(md::valid_dtype(p->x_dtype) && md::valid_dtype(p->out_dtype) && md::valid_dtype(p->weight_dtype),
           "gated_rms_norm: bad dtype code");
  MD_CHECK(p->rows < (int64_t{1} << 31) && p->hidden / p->group_size <= 65535, "gated_rms_norm: too large");
  if (p->rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p->rows), static_cast<unsigned>(p->hidden / p->group_size));
  return md::launch_pdl(md::gated_rms_norm_kernel, grid, md::threads_for(p->group_size), 0, stream, *p);
}

extern "C" cudaError_t md_launch_row_norm(const md_row_norm_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "row_norm: params is NULL");
  MD_CHECK(p->group_size > 0 && p->group_size % 256 == 0 && p->group_size <= 8192 && p->hidden % p->group_size == 0,
           "row_norm: group_size must be a multiple of 256, <= 8192, dividing hidden");
  MD_CHECK(p->gate || p->group_size == p->hidden, "row_norm: groups only with gate");
  MD_CHECK(p->x && p->weight && p->out && (!p->gate || p->residual), "row_norm: missing pointer");
  MD_CHECK(md::valid_dtype(p->dtype) && md::valid_dtype(p->residual_dtype), "row_norm: bad dtype");
  MD_CHECK(p->rows >= 0 && p->rows < (int64_t{1} << 31), "row_norm: bad rows");
  MD_CHECK(!p->x_sumsq || (!p->gate && p->x_sumsq_count > 0 && p->x_sumsq_dim > 0 && p->x_sumsq_row_stride >= 0),
           "row_norm: x_sumsq needs gate 0, a positive count and dim");
  MD_CHECK(p->x_parts >= 0 && (!p->x_parts || (!p->gate && p->x_part_stride % 4 == 0 && p->x_row_stride % 4 == 0)),
           "row_norm: x_parts needs gate 0 and strides of whole 16-byte vectors");
  MD_CHECK(md::row_norm_aligned(*p), "row_norm: pointers and row strides must be whole 16-byte vectors");
  if (p->rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p->rows), static_cast<unsigned>(p->hidden / p->group_size));
  const unsigned threads = static_cast<unsigned>(p->group_size / 8);
  if (md::row_norm_typed_serves(*p)) {
    return p->dtype == MD_FLOAT16 ? md::launch_row_norm_typed<__half>(*p, grid, threads, stream)
                                  : md::launch_row_norm_typed<__nv_bfloat16>(*p, grid, threads, stream);
  }
  return md::launch_pdl(md::row_norm_kernel, grid, threads, 0, stream, *p);
}
