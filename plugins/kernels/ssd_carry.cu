// ssd_carry.cu -- the first two kernels of Mamba2's SSD chunk scan (ssd_chunk.cu says the whole scheme): each
// chunk's discretised dt and running sum of dt * A, then the state entering each chunk, walked over the chunks
// on tensor cores. Reference: mamba_deploy/ops/chunk_scan.py (chunk_scan_ref).
#include "ssd_common.cuh"

namespace md {
namespace ssd {
namespace {

// dt_s[t] (discretised; 0 past the sequence) and cum_s[t] = sum of dt * A over steps 0..t of the chunk.
// Every thread of the block calls it; threads 0..kQ-1 do the work.
__device__ void chunk_dt(const SsdArgs& a, int64_t b, int64_t h, int64_t t0, int tc, float* dt_s, float* cum_s) {
  const md_ssm_params& p = a.p;
  const int t = threadIdx.x;
  if (t < kQ) {
    float dt = 0.f;
    if (t < tc) {
      dt = load_any(p.dt, p.x_dtype, b * p.dt_batch_stride + (t0 + t) * p.dt_seq_stride + h * p.dt_head_stride);
      if (p.dt_bias) dt += load_any(p.dt_bias, p.param_dtype, h * p.dt_bias_head_stride);
      dt = discretise_dt(p, a.clamp_dt, dt);
    }
    dt_s[t] = dt;
    float v = dt * load_any(p.A, p.param_dtype, h * p.A_head_stride);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float u = __shfl_up_sync(0xffffffffu, v, o);
      if ((t & 31) >= o) v += u;
    }
    cum_s[t] = v;
  }
  __syncthreads();
  const float first_warp = cum_s[31];
  __syncthreads();
  if (t >= 32 && t < kQ) cum_s[t] += first_warp;
  __syncthreads();
}

// ---- per chunk: the discretised dt and the running sum of dt * A (read by the other two kernels) ----
// Grid (nchunks, nheads, batch), kQ threads.
__global__ void __launch_bounds__(kQ) ssd_dt_kernel(const SsdArgs a) {
  __shared__ float dt_s[kQ], cum_s[kQ];
  const int64_t c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * kQ;
  const int tc = static_cast<int>(a.p.seqlen - t0 < kQ ? a.p.seqlen - t0 : kQ);
  chunk_dt(a, b, h, t0, tc, dt_s, cum_s);
  float* out = a.dts + ((b * a.nchunks + c) * a.p.nheads + h) * 2 * kQ;
  out[threadIdx.x] = dt_s[threadIdx.x];
  out[kQ + threadIdx.x] = cum_s[threadIdx.x];
}

// ---- the chunk states: one walk over the chunks per (batch row, head, 16 rows of headdim) ----
// State S (16 x N of headdim x dstate) lives in the warps' accumulator tiles (warp w: column tiles w, w + 8);
// per chunk it is written out as the state entering the chunk, then S = decay * S + (w X)^T B. Scaling X by
// w_s instead of B keeps B exact and splits only the 64 x 16 product w X into hi + lo. A chunk's B, X, dt and
// cum arrive by cp.async kStages - 1 chunks ahead: the walk waits on the products, not on memory.
constexpr int kRows = 16;           // headdim rows per block
constexpr int kCarryThreads = 256;  // 8 warps: a chunk's instructions spread thin (the walk is bound by their latency)
constexpr int kCarryWarps = kCarryThreads / 32;
constexpr int kMaxTiles = 2;        // column tiles a warp holds: dstate <= 16 x 8 x 2 = 256
constexpr int kStages = 4;  // >= 3: chunk c + 1 is split while chunk c is multiplied
static_assert(kStages >= 3, "the walk splits chunk c + 1 while chunk c's stage is in use");
constexpr int kLdx = kRows + kPad;

struct CarryLayout {  // shared-memory offsets (bytes) of ssd_carry_kernel: kStages stages, then the rest
  int ldb, lds;
  size_t B, X, dts, stage;  // within a stage; stage: its size
  size_t Xhi, Xlo, xbuf, S, total;  // xbuf: from one of the two X hi (lo) buffers to the other
};

template <typename T>
__host__ __device__ CarryLayout carry_layout(int N) {
  CarryLayout o{};
  o.ldb = N + kPad;
  o.lds = N + 4;
  size_t at = 0;
  auto take = [&](size_t bytes) { const size_t here = at; at += (bytes + 127) / 128 * 128; return here; };
  o.B = take(sizeof(T) * kQ * o.ldb);
  o.X = take(sizeof(T) * kQ * kRows);     // raw, 32-byte rows
  o.dts = take(sizeof(float) * 2 * kQ);   // dt_s, cum_s (ssd_dt_kernel)
  o.stage = at;
  at *= kStages;
  o.xbuf = (sizeof(T) * kQ * kLdx + 127) / 128 * 128;
  o.Xhi = take(2 * o.xbuf);  // w X, hi and lo, double-buffered
  o.Xlo = take(2 * o.xbuf);
  o.S = take(sizeof(float) * kRows * o.lds);  // the state in and out (float32 staging)
  o.total = at;
  return o;
}

// Chunk c's B rows, X tile and dt / cum into a stage (copy_tile: plain loads where not 16-byte vectors; the stage
// is free then). Commits one group.
template <typename T>
__device__ void issue_chunk(const SsdArgs& a, int64_t b, int64_t h, int64_t g, int64_t p0, int64_t c,
                            unsigned char* stage, const CarryLayout& o, const TileShare& b_share,
                            const TileShare& x_share) {
  const md_ssm_params& p = a.p;
  const int64_t t0 = c * kQ;
  const int tc = static_cast<int>(p.seqlen - t0 < kQ ? p.seqlen - t0 : kQ);
  const T* Bp = static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride + g * p.B_group_stride;
  copy_tile(reinterpret_cast<T*>(stage + o.B), o.ldb, Bp, p.B_seq_stride, p.B_state_stride, tc, b_share);
  const T* xp = static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride + h * p.x_head_stride +
                p0 * p.x_dim_stride;
  copy_tile(reinterpret_cast<T*>(stage + o.X), kRows, xp, p.x_seq_stride, p.x_dim_stride, tc, x_share);
  if (threadIdx.x < 2 * kQ / 4) {  // 2 kQ floats in 16-byte pieces
    const float* src = a.dts + ((b * a.nchunks + c) * p.nheads + h) * 2 * kQ + 4 * threadIdx.x;
    cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(stage + o.dts)) + 16 * threadIdx.x, src, true);
  }
  cp_async_commit();
}

// Grid (headdim / 16, nheads, batch), kCarryThreads threads.
template <typename T, typename S>
__global__ void __launch_bounds__(kCarryThreads, 2) ssd_carry_kernel(const SsdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const md_ssm_params& p = a.p;
  const int64_t h = blockIdx.y, b = blockIdx.z, p0 = int64_t(blockIdx.x) * kRows;
  const int N = static_cast<int>(p.dstate), warp = threadIdx.x / 32;
  const auto col = [&](int j) { return (warp + kCarryWarps * j) * 16; };  // first column of the warp's tile j
  const int64_t g = h / (p.nheads / p.ngroups), sb = state_row(p.state_rows, b);
  const CarryLayout o = carry_layout<T>(N);
  const TileShare b_share(N, kCarryThreads), x_share(kRows, kCarryThreads);
  float* sS = reinterpret_cast<float*>(smem + o.S);

#pragma unroll
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < a.nchunks) issue_chunk<T>(a, b, h, g, p0, c, smem + c * o.stage, o, b_share, x_share);
    else cp_async_commit();
  }
  const S* st_in = p.state_in ? static_cast<const S*>(p.state_in) + sb * p.state_in_batch_stride +
                                    h * p.state_in_head_stride + p0 * p.state_in_dim_stride : nullptr;
  for (int i = threadIdx.x; i < kRows * N; i += kCarryThreads) {
    const int r = i / N, n = i % N;
    sS[r * o.lds + n] = st_in ? to_f(st_in[r * p.state_in_dim_stride + n * p.state_in_state_stride]) : 0.f;
  }
  __syncthreads();
  FragAcc acc[kMaxTiles];
#pragma unroll
  for (int j = 0; j < kMaxTiles; ++j) {
    if (col(j) < N) wmma::load_matrix_sync(acc[j], sS + col(j), o.lds, wmma::mem_row_major);
  }

  // w_s X of chunk c's stage (8 elements of step threadIdx.x / 2, threads 0 .. 2 kQ - 1) -> X hi, lo buffer
  // c % 2; returns the chunk's decay
  const auto split_x = [&](int64_t c) {
    const unsigned char* stage = smem + (c % kStages) * o.stage;
    const float* dt_s = reinterpret_cast<const float*>(stage + o.dts);
    const float* cum_s = dt_s + kQ;
    const float last = cum_s[kQ - 1];
    if (threadIdx.x >= 2 * kQ) return expf(last);
    const int s = threadIdx.x / 2, d = (threadIdx.x % 2) * 8;
    const float w = dt_s[s] * expf(last - cum_s[s]);
    float f[8];
    unpack(*reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(stage + o.X) + s * kRows + d), f, T());
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] *= w;
    const size_t buf = (c & 1) * o.xbuf;
    T* hi = reinterpret_cast<T*>(smem + o.Xhi + buf);
    split8(f, hi + s * kLdx + d, reinterpret_cast<T*>(smem + o.Xlo + buf) + s * kLdx + d);
    return expf(last);
  };
  cp_async_wait<kStages - 2>();
  __syncthreads();  // chunk 0's stage has landed
  float decay = split_x(0);

  // One barrier a chunk: chunk c + 1's w X is split while chunk c's products run (other buffers).
  const int64_t chunk_stride = p.nheads * p.headdim * p.dstate;
  float* out = a.states + (b * a.nchunks * p.nheads + h) * p.headdim * p.dstate + p0 * N;
  for (int64_t c = 0; c < a.nchunks; ++c, out += chunk_stride) {
    cp_async_wait<kStages - 3>();
    __syncthreads();  // chunk c + 1's stage has landed, chunk c's X hi / lo are split; chunk c - 1 is done with
    const int64_t ahead = c + kStages - 1;
    if (ahead < a.nchunks) {
      issue_chunk<T>(a, b, h, g, p0, ahead, smem + (ahead % kStages) * o.stage, o, b_share, x_share);
    } else {
      cp_async_commit();
    }
    const float decay_next = c + 1 < a.nchunks ? split_x(c + 1) : 0.f;
    const T* sB = reinterpret_cast<const T*>(smem + (c % kStages) * o.stage + o.B);
    const T* sXhi = reinterpret_cast<const T*>(smem + o.Xhi + (c & 1) * o.xbuf);
    const T* sXlo = reinterpret_cast<const T*>(smem + o.Xlo + (c & 1) * o.xbuf);
#pragma unroll
    for (int j = 0; j < kMaxTiles; ++j) {
      if (col(j) >= N) continue;
      wmma::store_matrix_sync(out + col(j), acc[j], N, wmma::mem_row_major);
#pragma unroll
      for (int e = 0; e < acc[j].num_elements; ++e) acc[j].x[e] *= decay;
    }
#pragma unroll
    for (int k = 0; k < kQ; k += 16) {
      FragAc<T> xhi, xlo;  // (w X)^T (16 x Q): element (p, s) at sX[s * kLdx + p]
      wmma::load_matrix_sync(xhi, sXhi + k * kLdx, kLdx);
      wmma::load_matrix_sync(xlo, sXlo + k * kLdx, kLdx);
#pragma unroll
      for (int j = 0; j < kMaxTiles; ++j) {
        if (col(j) >= N) continue;
        FragB<T> bf;
        wmma::load_matrix_sync(bf, sB + k * o.ldb + col(j), o.ldb);
        wmma::mma_sync(acc[j], xhi, bf, acc[j]);
        wmma::mma_sync(acc[j], xlo, bf, acc[j]);
      }
    }
    decay = decay_next;
  }
  cp_async_wait<0>();
  if (p.state_out == nullptr) return;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kMaxTiles; ++j) {
    if (col(j) < N) wmma::store_matrix_sync(sS + col(j), acc[j], o.lds, wmma::mem_row_major);
  }
  __syncthreads();
  S* st_out = static_cast<S*>(p.state_out) + sb * p.state_out_batch_stride + h * p.state_out_head_stride +
              p0 * p.state_out_dim_stride;
  for (int i = threadIdx.x; i < kRows * N; i += kCarryThreads) {
    const int r = i / N, n = i % N;
    st_out[r * p.state_out_dim_stride + n * p.state_out_state_stride] = from_f<S>(sS[r * o.lds + n]);
  }
}

}  // namespace

template <typename T, typename S>
cudaError_t launch_states(const SsdArgs& a, cudaStream_t stream) {
  const md_ssm_params& p = a.p;
  const size_t carry_bytes = carry_layout<T>(static_cast<int>(p.dstate)).total;
  cudaError_t err = cudaFuncSetAttribute(ssd_carry_kernel<T, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(carry_bytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.nchunks), static_cast<unsigned>(p.nheads), static_cast<unsigned>(p.batch));
  ssd_dt_kernel<<<grid, kQ, 0, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const dim3 carry_grid(static_cast<unsigned>(p.headdim / kRows), static_cast<unsigned>(p.nheads),
                        static_cast<unsigned>(p.batch));
  ssd_carry_kernel<T, S><<<carry_grid, kCarryThreads, carry_bytes, stream>>>(a);
  return cudaGetLastError();
}

size_t states_smem_bytes(int dstate) { return carry_layout<__half>(dstate).total; }

template cudaError_t launch_states<__half, float>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__half, __half>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__nv_bfloat16, float>(const SsdArgs&, cudaStream_t);
template cudaError_t launch_states<__nv_bfloat16, __nv_bfloat16>(const SsdArgs&, cudaStream_t);

}  // namespace ssd
}  // namespace md
