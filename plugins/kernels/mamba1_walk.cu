// mamba1_walk.cu -- Mamba1's selective scan (md_ssm_params in the Mamba1 layout: headdim 1, ngroups 1,
// dstate <= 16) as a walk over time with one thread per (batch row, channel, chunk of steps), all the
// channel's states in registers (their decay rates in shared memory). Reference: mamba_deploy/ops/selective_scan.py.
//
// A step costs a thread one exp2, two multiplies and two FMAs per state: no shuffles, no composition of steps.
// B and C of a step are the same for every channel of a batch row: the block stages them in shared memory, a
// tile of kTile steps at a time. The per-step scalars of a channel (discretised dt, dt x, D x, silu(z)) are
// worked out one tile ahead into the thread's own shared-memory columns (B and C double-buffered), so the
// next tile's global loads are in flight during this tile's steps; those rows are prefetched into the L2 a
// tile earlier still.
// When batch x channels leave the GPU idle (a few long prompts; mamba1_walk_chunks), the sequence is cut into
// chunks walked in parallel, in two passes over a float32 workspace:
//   local   each chunk from a zero state (the first from the initial state): its end state and the sum of its
//           discretised dt (the chunk's decay of state n is exp2(A2[n] * that sum));
//   carry   per (row, channel, state), the true end state of each chunk, in chunk order;
//   output  each chunk again from the true state entering it, writing y (and the final state).
// The chunk's decay as one exp2 of the summed dt, and the carry's reassociation, change the order of float32
// operations against the step-by-step recurrence, not the math. Other shapes short of a wave (moderate batches,
// short prompts, no workspace): mamba1_walk_chunks says 0, and mamba1_split.cu's walk takes them.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "mamba1_scan.cuh"

namespace md {
namespace {

constexpr int kThreads = 128;  // channels per block
// <= 72 registers a thread: the 16 states, the loads in flight. Measured on the H200 (64 x 100, mamba-1.4b's
// layer): 8 blocks (64 registers: ptxas spills) 309.5 us, 7 blocks 299.4.
constexpr int kBlocksPerSM = 7;
constexpr int kState = 16;     // states a thread holds (dstate <= kState; the rest stay 0)
constexpr int kTile = 8;       // steps staged at a time
constexpr int kMinChunk = 32;  // shortest chunk of the two-pass form
// Measured on the H200 (mamba-1.4b's layer: 4,096 channels, batch 1), us, this walk in two passes / mamba1_split.cu's
// walk at 16 lanes a channel: 2,048 steps 187.0 / 178.5, 4,096 299.6 / 343.2, 32,768 1,928 / 2,830 (at 8 lanes,
// 2,048 steps: 159.3). Two batch rows split: 8,192 steps 1,012 / 933 (two passes / split).
constexpr int64_t kMinTwoPassSteps = 4096;
constexpr int kMaxChunks = 256;
constexpr int64_t kMaxWorkspace = int64_t(256) << 20;

enum Pass { kWhole = 0, kLocal = 1, kOutput = 2 };

struct WalkArgs {
  md_ssm_params p;
  int64_t nchunks, chunk_len;
  // (nchunks, batch, nheads, kState): slot c < nchunks - 1 the end state of chunk c (local pass: from its own
  // start; after the carry: the true one); slot nchunks - 1 the initial state, copied by the local pass so
  // that the output pass never reads state_in (state_out may alias it).
  float* ws_h;
  float* ws_dt;  // (nchunks, batch, nheads): the sum of each chunk's discretised dt
  DtFtz discretise;
};

// B and C of steps [t0, t0 + kTile) of batch row b (0 past t_end or dstate) into the thread's registers: element
// i = threadIdx.x + k * kThreads of the tile's kTile x kState values.
template <typename T, bool kNeedC>
struct TileLoader {
  static constexpr int kPer = kTile * kState / kThreads;
  T B[kPer], C[kPer];  // in T until the store: a conversion next to its load would wait there for it

  __device__ void load(const md_ssm_params& p, int64_t b, int64_t t0, int64_t t_end) {
    const T* Bp = static_cast<const T*>(p.B) + b * p.B_batch_stride;
    const T* Cp = static_cast<const T*>(p.C) + b * p.C_batch_stride;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = threadIdx.x + k * kThreads, s = i / kState, n = i % kState;
      const bool ok = t0 + s < t_end && n < p.dstate;
      B[k] = ok ? Bp[(t0 + s) * p.B_seq_stride + n * p.B_state_stride] : from_f<T>(0.f);
      C[k] = ok && kNeedC ? Cp[(t0 + s) * p.C_seq_stride + n * p.C_state_stride] : from_f<T>(0.f);
    }
  }
  __device__ void store(float (*Bs)[kState], float (*Cs)[kState]) const {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = threadIdx.x + k * kThreads;
      Bs[i / kState][i % kState] = to_f(B[k]);
      if (kNeedC) Cs[i / kState][i % kState] = to_f(C[k]);
    }
  }
};

// The per-step x, dt and z rows of the block's channels for steps [t0, t0 + kTile) into the L2, a tile before
// their loads (which run one step ahead of use: too little to hide a DRAM miss, ncu's largest stall). Rows of
// channels contiguous in memory only (head strides 1): 128-byte lines, lane l of the first warps one line.
template <typename T>
__device__ __forceinline__ void prefetch_tile(const md_ssm_params& p, int64_t b, int64_t d0, int64_t t0,
                                              int64_t t_end, bool with_z) {
  constexpr int kLinesPerStep = (kThreads * sizeof(T) + 127) / 128;
  constexpr int kLinesPerTensor = kTile * kLinesPerStep;
  const int i = threadIdx.x % kLinesPerTensor, tensor = threadIdx.x / kLinesPerTensor;
  const int64_t t = t0 + i / kLinesPerStep, d = d0 + (i % kLinesPerStep) * (128 / sizeof(T));
  if (tensor > (with_z ? 2 : 1) || t >= t_end || d >= p.nheads) return;
  const void* base = tensor == 0 ? p.x : tensor == 1 ? p.dt : p.z;
  const int64_t batch_stride = tensor == 0 ? p.x_batch_stride : tensor == 1 ? p.dt_batch_stride : p.z_batch_stride;
  const int64_t seq_stride = tensor == 0 ? p.x_seq_stride : tensor == 1 ? p.dt_seq_stride : p.z_seq_stride;
  const T* line = static_cast<const T*>(base) + b * batch_stride + t * seq_stride + d;
  prefetch_line(line);
}

struct WalkShared {
  __align__(16) float B[2][kTile][kState];  // B and C of a tile's steps, double-buffered
  __align__(16) float C[2][kTile][kState];
  // Per step and channel, as pairs (one 8-byte load or store each): (discretised dt, dt * x), (D * x, silu(z)).
  // One buffer: a thread writes step s of the next tile into its own column once step s of this tile is done
  // with it.
  float2 step_dt[kTile][kThreads];
  float2 step_out[kTile][kThreads];
  // Each thread's decay rates A[n] log2(e), states 4q..4q+3 at [q][thread] (a warp's loads: consecutive 16-byte
  // words), here rather than in 16 registers: 7 blocks a multiprocessor instead of 6.
  float4 A2[kState / 4][kThreads];
};

// Grid: (ceil(nheads / kThreads), nchunks, batch). kWhole: nchunks == 1, no workspace.
template <typename T, typename S, int kPass>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM) mamba1_walk_kernel(const WalkArgs a) {
  constexpr bool kNeedC = kPass != kLocal;
  __shared__ WalkShared sh;
  const md_ssm_params& p = a.p;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, c = blockIdx.y, b = blockIdx.z;
  const bool active = d < p.nheads;
  const int64_t t_begin = c * a.chunk_len, t_end = t_begin + a.chunk_len < p.seqlen ? t_begin + a.chunk_len : p.seqlen;
  const int64_t state_b = state_row(p.state_rows, b);
  const int64_t ws_row = b * p.nheads + d;  // of one workspace slot
  const int64_t ws_slot = p.batch * p.nheads;

  // The thread's loads are all issued before any use: a use right behind each load (load_any's conversion, the
  // scaling by log2(e), the copy into the workspace) would serialise 16-32 round trips at the start of a block.
  float A2[kState], h[kState];
  float bias = 0.f, Dv = 0.f;
  if (active) {
    if (p.dt_bias) bias = load_any(p.dt_bias, p.param_dtype, d * p.dt_bias_head_stride);
    if (p.D) Dv = load_any(p.D, p.param_dtype, d * p.D_head_stride);
  }
  if (p.param_dtype == MD_FLOAT32) {
    const float* A = static_cast<const float*>(p.A) + d * p.A_head_stride;
#pragma unroll
    for (int n = 0; n < kState; ++n) A2[n] = active && n < p.dstate ? A[n * p.A_state_stride] : 0.f;
  } else {
#pragma unroll
    for (int n = 0; n < kState; ++n) {
      A2[n] = active && n < p.dstate ? load_any(p.A, p.param_dtype, d * p.A_head_stride + n * p.A_state_stride) : 0.f;
    }
  }
  const int64_t h0_slot = c == 0 ? a.nchunks - 1 : c - 1;
  const S* state_in = c == 0 && p.state_in ? static_cast<const S*>(p.state_in) + state_b * p.state_in_batch_stride +
                                                 d * p.state_in_head_stride : nullptr;
#pragma unroll
  for (int n = 0; n < kState; ++n) {
    const bool ok = active && n < p.dstate;
    float h0 = 0.f;
    if (ok && kPass == kOutput) h0 = a.ws_h[(h0_slot * ws_slot + ws_row) * kState + n];
    else if (ok && state_in) h0 = to_f(state_in[n * p.state_in_state_stride]);
    h[n] = h0;
  }
#pragma unroll
  for (int q = 0; q < kState / 4; ++q) {
    sh.A2[q][threadIdx.x] = make_float4(A2[4 * q] * kLog2e, A2[4 * q + 1] * kLog2e, A2[4 * q + 2] * kLog2e,
                                        A2[4 * q + 3] * kLog2e);
  }
  if (kPass == kLocal && c == 0 && a.nchunks > 1 && active) {
#pragma unroll
    for (int n = 0; n < kState; ++n) a.ws_h[((a.nchunks - 1) * ws_slot + ws_row) * kState + n] = h[n];
  }

  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + d * p.x_head_stride;
  const T* dt = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + d * p.dt_head_stride;
  const T* z = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + d * p.z_head_stride : nullptr;
  const bool has_z = kNeedC && z != nullptr;
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + d * p.y_head_stride;
  float dt_sum = 0.f;

  const int tid = threadIdx.x;
  // The per-step scalars of step s of a tile (discretised dt, dt * x, D * x, silu(z)) go to this thread's own
  // columns (no barrier): those of the next tile are loaded during this tile's steps, one step ahead of their
  // use, so their global loads and softplus / silu chains overlap the walk.
  const auto scalars = [&](int s, float xv, float dtv, float zv) {
    const float delta = a.discretise(dtv + bias);
    sh.step_dt[s][tid] = make_float2(delta, delta * xv);
    if (kNeedC) {
      sh.step_out[s][tid] = make_float2(Dv * xv, has_z ? silu_ftz(zv) : 1.f);
    }
  };
  // The steps are loaded, and y stored, in time order: through running pointers, with no 64-bit index products
  // in the step loop.
  const T *xn = x + t_begin * p.x_seq_stride, *dtn = dt + t_begin * p.dt_seq_stride;
  // Without z, zn re-reads x's first step (stride 0): no branch in the step loop.
  const T* zn = has_z ? z + t_begin * p.z_seq_stride : xn;
  const int64_t z_step = has_z ? p.z_seq_stride : 0;
  T* yn = y + t_begin * p.y_seq_stride;
  const auto load_step = [&](float& xv, float& dtv, float& zv) {
    xv = to_f(*xn);
    dtv = to_f(*dtn);
    xn += p.x_seq_stride;
    dtn += p.dt_seq_stride;
    zv = 0.f;
    if (kNeedC) {
      zv = to_f(*zn);
      zn += z_step;
    }
  };
  TileLoader<T, kNeedC> next;
  next.load(p, b, t_begin, t_end);
  next.store(sh.B[0], sh.C[0]);
  const int first = static_cast<int>(t_end - t_begin < kTile ? t_end - t_begin : kTile);
  for (int s = 0; active && s < first; ++s) {
    float xv, dtv, zv;
    load_step(xv, dtv, zv);
    scalars(s, xv, dtv, zv);
  }
  __syncthreads();
  int buf = 0;
  const bool prefetch = p.x_head_stride == 1 && p.dt_head_stride == 1 && (!has_z || p.z_head_stride == 1);
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * kThreads;
  if (prefetch) prefetch_tile<T>(p, b, d0, t_begin + kTile, t_end, has_z);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kTile, buf ^= 1) {
    const bool more = t0 + kTile < t_end;
    if (prefetch) prefetch_tile<T>(p, b, d0, t0 + 2 * kTile, t_end, has_z);
    if (more) next.load(p, b, t0 + kTile, t_end);  // in flight during this tile's steps
    const int tn = static_cast<int>(t_end - t0 < kTile ? t_end - t0 : kTile);  // kTile whenever `more`
    const int next_tn = more ? static_cast<int>(t_end - t0 - kTile < kTile ? t_end - t0 - kTile : kTile) : 0;
#pragma unroll 1
    for (int s = 0; active && s < tn; ++s) {
      float xv = 0.f, dtv = 0.f, zv = 0.f;
      if (s < next_tn) load_step(xv, dtv, zv);
      const float2 step_dt = sh.step_dt[s][tid];
      const float delta = step_dt.x, dx = step_dt.y;
      dt_sum += delta;
      const float4* Bq = reinterpret_cast<const float4*>(sh.B[buf][s]);
      const float4* Cq = reinterpret_cast<const float4*>(sh.C[buf][s]);
      float acc[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: a short dependency chain
#pragma unroll
      for (int q = 0; q < kState / 4; ++q) {
        const float4 Bv = Bq[q], Av = sh.A2[q][tid];
        const float Bn[4] = {Bv.x, Bv.y, Bv.z, Bv.w}, An[4] = {Av.x, Av.y, Av.z, Av.w};
        float Cn[4] = {0.f, 0.f, 0.f, 0.f};
        if (kNeedC) {
          const float4 Cv = Cq[q];
          Cn[0] = Cv.x; Cn[1] = Cv.y; Cn[2] = Cv.z; Cn[3] = Cv.w;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int n = 4 * q + k;
          h[n] = fmaf(fast_exp2(delta * An[k]), h[n], dx * Bn[k]);
          if (kNeedC) acc[k] = fmaf(Cn[k], h[n], acc[k]);
        }
      }
      if (kNeedC) {
        const float2 step_out = sh.step_out[s][tid];
        const float out = ((acc[0] + acc[1]) + (acc[2] + acc[3]) + step_out.x) * step_out.y;
        *yn = from_f<T>(out);
        yn += p.y_seq_stride;
      }
      if (s < next_tn) scalars(s, xv, dtv, zv);
    }
    if (more) next.store(sh.B[buf ^ 1], sh.C[buf ^ 1]);  // the other buffers: last read a tile ago
    __syncthreads();
  }
  if (!active) return;
  if (kPass == kLocal) {
    if (c + 1 < a.nchunks) {
#pragma unroll
      for (int n = 0; n < kState; ++n) a.ws_h[(c * ws_slot + ws_row) * kState + n] = h[n];
      a.ws_dt[c * ws_slot + ws_row] = dt_sum;
    }
    return;
  }
  if (p.state_out == nullptr || c + 1 < a.nchunks) return;
  for (int n = 0; n < p.dstate; ++n) {
    static_cast<S*>(p.state_out)[state_b * p.state_out_batch_stride + d * p.state_out_head_stride +
                                 n * p.state_out_state_stride] = from_f<S>(h[n]);
  }
}

// Per (batch row, channel, state): the true end state of chunks 1 .. nchunks - 2 from the local ones (chunk 0's
// local end is already true: it started from the initial state).
__global__ void mamba1_carry_kernel(const WalkArgs a) {
  const md_ssm_params& p = a.p;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t ws_slot = p.batch * p.nheads;
  if (i >= ws_slot * kState) return;
  const int64_t row = i / kState, d = row % p.nheads;
  const int n = static_cast<int>(i % kState);
  if (n >= p.dstate) return;
  const float A2 = load_any(p.A, p.param_dtype, d * p.A_head_stride + n * p.A_state_stride) * kLog2e;
  float h = a.ws_h[row * kState + n];
  // kBatch chunks' loads are issued before their chain: one load round trip a chunk made the carry of
  // 1 x 2,048 (55 chunks) ~15 us a layer.
  constexpr int kBatch = 8;
  for (int64_t c0 = 1; c0 + 1 < a.nchunks; c0 += kBatch) {
    float dt_sum[kBatch], local[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t c = c0 + j;
      const bool ok = c + 1 < a.nchunks;
      dt_sum[j] = ok ? a.ws_dt[c * ws_slot + row] : 0.f;
      local[j] = ok ? a.ws_h[(c * ws_slot + row) * kState + n] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t c = c0 + j;
      if (c + 1 >= a.nchunks) break;
      h = fmaf(fast_exp2(A2 * dt_sum[j]), h, local[j]);
      a.ws_h[(c * ws_slot + row) * kState + n] = h;
    }
  }
}

// The local pass skips the last chunk: its end state is not needed.
template <typename T, typename S, int kPass>
cudaError_t launch_pass(const WalkArgs& a, cudaStream_t stream) {
  const int64_t chunks = kPass == kLocal ? a.nchunks - 1 : a.nchunks;
  const dim3 grid(static_cast<unsigned>((a.p.nheads + kThreads - 1) / kThreads), static_cast<unsigned>(chunks),
                  static_cast<unsigned>(a.p.batch));
  // kBlocksPerSM blocks of ~27 KB shared memory: more than the default carveout holds
  const cudaError_t err = cudaFuncSetAttribute(mamba1_walk_kernel<T, S, kPass>,
                                               cudaFuncAttributePreferredSharedMemoryCarveout,
                                               cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  mamba1_walk_kernel<T, S, kPass><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename S>
cudaError_t launch_typed(const WalkArgs& a, cudaStream_t stream) {
  if (a.nchunks == 1) return launch_pass<T, S, kWhole>(a, stream);
  cudaError_t err = launch_pass<T, S, kLocal>(a, stream);
  if (err != cudaSuccess) return err;
  if (a.nchunks > 2) {
    const int64_t n = a.p.batch * a.p.nheads * kState;
    mamba1_carry_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(a);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return launch_pass<T, S, kOutput>(a, stream);
}

int64_t chunk_len_of(const md_ssm_params& p, int64_t nchunks) { return (p.seqlen + nchunks - 1) / nchunks; }

}  // namespace

bool mamba1_walk_eligible(const md_ssm_params& p) {
  return p.headdim == 1 && p.ngroups == 1 && p.dstate <= kState && p.seqlen >= 1 &&
         p.nheads <= (int64_t{1} << 31) - kThreads;
}

// 1 (the one-pass walk, no workspace) when batch x channels fill a wave of resident blocks. Fewer: 0 (the walk of
// mamba1_split.cu, states split over lanes) unless even that would leave the GPU short of threads over
// kMinTwoPassSteps steps or more, where two passes of this walk in chunks are faster (one long prompt); then
// chunks enough for two waves, each at least kMinChunk steps. Every block walks the same number of steps, so the
// count is rounded down to whole waves where that still gives 3 chunks: 1 x 2,048 had taken 42 chunks of 32
// blocks, 2.04 waves of 660 (5 blocks a multiprocessor then), so the output pass ran a third wave for 24 blocks.
int64_t mamba1_walk_chunks(const md_ssm_params& p) {
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, 132);
  const int64_t threads = p.batch * p.nheads, wave = sms * kBlocksPerSM * kThreads, target = 2 * wave;
  if (threads >= wave) return 1;
  if (mamba1_split_fills_gpu(p) || p.seqlen < kMinTwoPassSteps) return 0;
  const int64_t chunk_blocks = p.batch * ((p.nheads + kThreads - 1) / kThreads);
  const int64_t whole_waves = 2 * sms * kBlocksPerSM / chunk_blocks;
  int64_t n = whole_waves >= 3 ? whole_waves : (target + threads - 1) / threads;
  n = std::min<int64_t>({n, p.seqlen / kMinChunk, kMaxChunks});
  const int64_t per_chunk = threads * (kState + 1) * int64_t(sizeof(float));
  n = std::min(n, kMaxWorkspace / per_chunk);
  n = (p.seqlen + chunk_len_of(p, n) - 1) / chunk_len_of(p, n);  // no empty chunk
  return n >= 3 && threads * n >= wave ? n : 0;
}

size_t mamba1_walk_workspace_bytes(const md_ssm_params& p, int64_t nchunks) {
  return nchunks <= 1 ? 0 : static_cast<size_t>(nchunks * p.batch * p.nheads * (kState + 1)) * sizeof(float);
}

cudaError_t launch_mamba1_walk(const md_ssm_params& p, int64_t nchunks, void* workspace, cudaStream_t stream) {
  WalkArgs a{};
  a.p = p;
  a.nchunks = nchunks;
  a.chunk_len = chunk_len_of(p, nchunks);
  a.discretise = DtFtz::of(p);
  if (nchunks > 1) {
    a.ws_h = static_cast<float*>(workspace);
    a.ws_dt = a.ws_h + nchunks * p.batch * p.nheads * kState;
  }
  return MD_DISPATCH_DTYPE(p.x_dtype, T, [&] {
    if (p.state_dtype == MD_FLOAT32) return launch_typed<T, float>(a, stream);
    return launch_typed<T, T>(a, stream);
  });
}

}  // namespace md
