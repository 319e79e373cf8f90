// mamba1_scan.cu -- Mamba1's selective scan over a sequence (md_ssm_params in the Mamba1 layout: headdim 1,
// ngroups 1, dstate <= 16), parallel over time inside each block, in one pass and without scratch.
// Reference: mamba_deploy/ops/selective_scan.py.
//
// A block owns kRows channels of one batch row and walks the sequence in chunks of kChunk steps. Per chunk it
// stages discretised dt, dt * x, x, B and C in shared memory; then each channel's kLanes threads take kItems
// consecutive steps each and, state by state, (1) compose their steps' affine maps h -> a h + b (a = exp(dt A),
// b = dt x B) into one, (2) scan those across the channel's lanes with shuffles, (3) replay their steps from
// the state entering them, accumulating y += C h. The state carried between chunks lives in shared memory.
// The composition changes the order of float32 operations against the step-by-step recurrence (the
// reference), not the math. Shared-memory rows are skewed by one float per kItems so that the kLanes lanes
// of a channel read distinct banks.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "mamba1_scan.cuh"

namespace md {
namespace {

constexpr int kRows = 16;    // channels per block: 32 contiguous bytes of a 16-bit channel-last row per step
constexpr int kLanes = 16;   // threads per channel
constexpr int kThreads = kRows * kLanes;
constexpr int kMaxState = 16;
constexpr int kMinSeqlen = 64;  // shorter sequences: the state-parallel walk of ssm_scan.cu is as fast
// Small batches of short sequences (batch x seqlen up to kMaxWalkTokens, seqlen under kMaxWalkSeqlen) also go
// to the walk: measured on the H200 at dim 4096, dstate 16 (benchmarks/mamba1_scan.py), walk / this kernel in
// us: 1 x 100 78 / 159, 4 x 100 81 / 154, 8 x 100 137 / 158; 16 x 100 256 / 233, 8 x 300 455 / 348,
// 1 x 2048 490 / 308. Under 192 steps the walk is one pass with no scratch, as in the TensorRT plugins, which
// give no workspace (longer walks there would be the slow single walk; 1 x 300 was 105 / 161 with scratch).
constexpr int64_t kMaxWalkTokens = 1024, kMaxWalkSeqlen = 192;
// kItems, the consecutive steps per thread, is a template parameter: 16 (chunks of 256 steps) for long
// sequences; 8 (chunks of 128, about 7% slower per step at L = 2048 on the H200) when that pads less, as for
// the batched prefill of short prompts (100 steps: 128 computed instead of 256).
template <int kItems>
struct Tile {
  static constexpr int kChunk = kLanes * kItems;
  static constexpr int kSkewed = kChunk + kChunk / kItems;
  static constexpr int kBlocksPerSM = kItems <= 8 ? 3 : 2;  // what the registers (and shared memory) allow
  __device__ static __forceinline__ int skew(int t) { return t + t / kItems; }
};

template <int kItems>
struct Smem {
  static constexpr int kSkewed = Tile<kItems>::kSkewed;
  float dt[kRows][kSkewed];   // discretised dt; then C . h (scan_chunk, once every thread holds its dt)
  float dtx[kRows][kSkewed];  // dt * x
  float x[kRows][kSkewed];
  float B[kMaxState][kSkewed];
  float C[kMaxState][kSkewed];
  float A2[kRows][kMaxState];     // A * log2(e)
  float carry[kRows][kMaxState];  // the state entering the chunk
};

struct Args {
  md_ssm_params p;
  int rows_fastest;    // x, dt, z, y have a unit channel stride (channel-last): stage channel-fastest
  int states_fastest;  // B, C have a unit state stride
  int clamp_dt;
};

// (row, step) of element i of a kRows x kChunk tile, in the order memory has them.
template <int kChunk>
__device__ __forceinline__ int2 row_step(const Args& a, int i) {
  return a.rows_fastest ? make_int2(i % kRows, i / kRows) : make_int2(i / kChunk, i % kChunk);
}

template <typename T, int kItems>
__device__ void stage_chunk(const Args& a, Smem<kItems>& sm, int64_t b, int64_t row0, int64_t t0, int tc) {
  using Tl = Tile<kItems>;
  constexpr int kChunk = Tl::kChunk;
  const md_ssm_params& p = a.p;
  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + t0 * p.x_seq_stride;
  const T* dt = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + t0 * p.dt_seq_stride;
  batched_loop<kItems, kThreads>(kRows * kChunk, [&](int i) {
    const int2 rt = row_step<kChunk>(a, i);
    const int64_t row = row0 + rt.x;
    if (rt.y >= tc || row >= p.nheads) return make_float2(0.f, 0.f);
    return make_float2(to_f(x[rt.y * p.x_seq_stride + row * p.x_head_stride]),
                       to_f(dt[rt.y * p.dt_seq_stride + row * p.dt_head_stride]));
  }, [&](int i, float2 v) {
    const int2 rt = row_step<kChunk>(a, i);
    const int64_t row = row0 + rt.x;
    float d = 0.f;  // padding steps: a = 1, b = 0 leave the state as it is
    if (rt.y < tc && row < p.nheads) {
      d = discretise_dt(p, a.clamp_dt,
                        v.y + (p.dt_bias ? load_any(p.dt_bias, p.param_dtype, row * p.dt_bias_head_stride) : 0.f));
    }
    const int t = Tl::skew(rt.y);
    sm.dt[rt.x][t] = d;
    sm.dtx[rt.x][t] = d * v.x;
    sm.x[rt.x][t] = v.x;
  });
  const T* B = static_cast<const T*>(p.B) + b * p.B_batch_stride + t0 * p.B_seq_stride;
  const T* C = static_cast<const T*>(p.C) + b * p.C_batch_stride + t0 * p.C_seq_stride;
  auto state_step = [&](int i) {
    return a.states_fastest ? make_int2(i % kMaxState, i / kMaxState) : make_int2(i / kChunk, i % kChunk);
  };
  batched_loop<kItems, kThreads>(kMaxState * kChunk, [&](int i) {
    const int2 nt = state_step(i);
    if (nt.y >= tc || nt.x >= p.dstate) return make_float2(0.f, 0.f);
    return make_float2(to_f(B[nt.y * p.B_seq_stride + nt.x * p.B_state_stride]),
                       to_f(C[nt.y * p.C_seq_stride + nt.x * p.C_state_stride]));
  }, [&](int i, float2 v) {
    const int2 nt = state_step(i);
    sm.B[nt.x][Tl::skew(nt.y)] = v.x;
    sm.C[nt.x][Tl::skew(nt.y)] = v.y;
  });
}

// y = C . h + D x, gated by silu(z), for the chunk's valid channels and steps.
template <typename T, int kItems>
__device__ void write_chunk(const Args& a, Smem<kItems>& sm, int64_t b, int64_t row0, int64_t t0, int tc) {
  using Tl = Tile<kItems>;
  constexpr int kChunk = Tl::kChunk;
  const md_ssm_params& p = a.p;
  const T* z = static_cast<const T*>(p.z) + b * p.z_batch_stride + t0 * p.z_seq_stride;
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + t0 * p.y_seq_stride;
  batched_loop<kItems, kThreads>(kRows * kChunk, [&](int i) {
    const int2 rt = row_step<kChunk>(a, i);
    const int64_t row = row0 + rt.x;
    if (rt.y >= tc || row >= p.nheads || p.z == nullptr) return 0.f;
    return to_f(z[rt.y * p.z_seq_stride + row * p.z_head_stride]);
  }, [&](int i, float zv) {
    const int2 rt = row_step<kChunk>(a, i);
    const int64_t row = row0 + rt.x;
    if (rt.y >= tc || row >= p.nheads) return;
    const int t = Tl::skew(rt.y);
    float v = sm.dt[rt.x][t] + (p.D ? load_any(p.D, p.param_dtype, row * p.D_head_stride) * sm.x[rt.x][t] : 0.f);
    if (p.z) v *= silu(zv);
    y[rt.y * p.y_seq_stride + row * p.y_head_stride] = from_f<T>(v);
  });
}

// One chunk's recurrence for the thread's channel r and steps lane * kItems ..: C . h into sm.dt, the carry
// advanced. Every thread of the block calls it (it holds a barrier).
template <int kItems>
__device__ __forceinline__ void scan_chunk(Smem<kItems>& sm, int r, int lane, int dstate) {
  using Tl = Tile<kItems>;
  float dt[kItems], dtx[kItems], y[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int t = Tl::skew(lane * kItems + i);
    dt[i] = sm.dt[r][t];
    dtx[i] = sm.dtx[r][t];
    y[i] = 0.f;
  }
  __syncthreads();  // sm.dt is free for the outputs
  for (int n = 0; n < dstate; ++n) {
    const float A2 = sm.A2[r][n];
    float decay[kItems], input[kItems], P = 1.f, S = 0.f;  // the thread's steps composed: h -> P h + S
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      decay[i] = fast_exp2(dt[i] * A2);
      input[i] = dtx[i] * sm.B[n][Tl::skew(lane * kItems + i)];
      S = fmaf(decay[i], S, input[i]);
      P *= decay[i];
    }
#pragma unroll
    for (int offset = 1; offset < kLanes; offset *= 2) {  // inclusive scan over the channel's lanes
      const float P_up = __shfl_up_sync(0xffffffffu, P, offset, kLanes);
      const float S_up = __shfl_up_sync(0xffffffffu, S, offset, kLanes);
      if (lane >= offset) {
        S = fmaf(P, S_up, S);
        P *= P_up;
      }
    }
    const float h_chunk = sm.carry[r][n];
    float P_before = __shfl_up_sync(0xffffffffu, P, 1, kLanes), S_before = __shfl_up_sync(0xffffffffu, S, 1, kLanes);
    if (lane == 0) {
      P_before = 1.f;
      S_before = 0.f;
    }
    float h = fmaf(P_before, h_chunk, S_before);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      h = fmaf(decay[i], h, input[i]);
      y[i] = fmaf(sm.C[n][Tl::skew(lane * kItems + i)], h, y[i]);
    }
    __syncwarp();  // every lane of the channel has read carry[r][n]
    if (lane == kLanes - 1) sm.carry[r][n] = h;  // the last lane ends at the chunk's last step
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) sm.dt[r][Tl::skew(lane * kItems + i)] = y[i];
}

// Grid: (ceil(nheads / kRows), batch); kThreads threads.
template <typename T, typename S, int kItems>
__global__ void __launch_bounds__(kThreads, Tile<kItems>::kBlocksPerSM) mamba1_scan_kernel(const Args a) {
  constexpr int kChunk = Tile<kItems>::kChunk;
  extern __shared__ float4 smem_raw[];
  Smem<kItems>& sm = *reinterpret_cast<Smem<kItems>*>(smem_raw);
  const md_ssm_params& p = a.p;
  const int64_t b = blockIdx.y, row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int r = threadIdx.x / kLanes, lane = threadIdx.x % kLanes, dstate = static_cast<int>(p.dstate);
  const int64_t state_b = state_row(p.state_rows, b);
  if (threadIdx.x < kRows * kMaxState) {
    const int rr = threadIdx.x / kMaxState, n = threadIdx.x % kMaxState;
    const int64_t row = row0 + rr;
    const bool ok = row < p.nheads && n < dstate;
    sm.A2[rr][n] = ok ? load_any(p.A, p.param_dtype, row * p.A_head_stride + n * p.A_state_stride) * kLog2e : 0.f;
    sm.carry[rr][n] = ok && p.state_in ? to_f(static_cast<const S*>(p.state_in)[
        state_b * p.state_in_batch_stride + row * p.state_in_head_stride + n * p.state_in_state_stride]) : 0.f;
  }
  for (int64_t t0 = 0; t0 < p.seqlen; t0 += kChunk) {
    const int tc = static_cast<int>(p.seqlen - t0 < kChunk ? p.seqlen - t0 : kChunk);
    stage_chunk<T, kItems>(a, sm, b, row0, t0, tc);
    __syncthreads();
    scan_chunk(sm, r, lane, dstate);
    __syncthreads();
    write_chunk<T, kItems>(a, sm, b, row0, t0, tc);
    __syncthreads();
  }
  if (p.state_out == nullptr || threadIdx.x >= kRows * kMaxState) return;
  const int rr = threadIdx.x / kMaxState, n = threadIdx.x % kMaxState;
  const int64_t row = row0 + rr;
  if (row < p.nheads && n < dstate) {
    static_cast<S*>(p.state_out)[state_b * p.state_out_batch_stride + row * p.state_out_head_stride +
                                 n * p.state_out_state_stride] = from_f<S>(sm.carry[rr][n]);
  }
}

template <typename T, typename S, int kItems>
cudaError_t launch_typed(const Args& a, cudaStream_t stream) {
  const size_t smem = sizeof(Smem<kItems>);
  auto kernel = mamba1_scan_kernel<T, S, kItems>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((a.p.nheads + kRows - 1) / kRows), static_cast<unsigned>(a.p.batch));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

// Whether chunks of 8 steps per thread cost less than chunks of 16 for this length: the steps each computes,
// padding included, the 8-step form's weighted by its measured cost per step (340 / 316 us at L = 2048).
bool short_chunks_pay(int64_t seqlen) {
  const int64_t short_chunk = Tile<8>::kChunk, long_chunk = Tile<16>::kChunk;
  const int64_t padded_short = (seqlen + short_chunk - 1) / short_chunk * short_chunk;
  const int64_t padded_long = (seqlen + long_chunk - 1) / long_chunk * long_chunk;
  return padded_short * 340 < padded_long * 316;
}

template <typename T, typename S>
cudaError_t launch_items(const Args& a, cudaStream_t stream) {
  return short_chunks_pay(a.p.seqlen) ? launch_typed<T, S, 8>(a, stream) : launch_typed<T, S, 16>(a, stream);
}

}  // namespace

bool mamba1_scan_eligible(const md_ssm_params& p) {
  return p.headdim == 1 && p.ngroups == 1 && p.dstate <= kMaxState && p.seqlen >= kMinSeqlen &&
         (p.seqlen >= kMaxWalkSeqlen || p.batch * p.seqlen > kMaxWalkTokens) && p.nheads <= (int64_t{1} << 31) - kRows;
}

cudaError_t launch_mamba1_scan(const md_ssm_params& p, cudaStream_t stream) {
  Args a{};
  a.p = p;
  a.rows_fastest = p.x_head_stride == 1 ? 1 : 0;
  a.states_fastest = p.B_state_stride == 1 ? 1 : 0;
  a.clamp_dt = clamps_dt(p);
  return MD_DISPATCH_DTYPE(p.x_dtype, T, [&] {
    if (p.state_dtype == MD_FLOAT32) return launch_items<T, float>(a, stream);
    return launch_items<T, T>(a, stream);
  });
}

}  // namespace md
