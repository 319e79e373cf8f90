// mamba1_split.cu -- Mamba1's selective scan (md_ssm_params in the Mamba1 layout: headdim 1, ngroups 1,
// dstate <= 16) as one walk over time with each channel's 16 states split over kLanes consecutive threads of a
// warp (16 / kLanes states each, in registers). Reference: mamba_deploy/ops/selective_scan.py.
//
// For the batch x channels that leave mamba1_walk.cu's one-thread-a-channel walk short of a wave (prompts at
// batch 1-28): kLanes times the threads in one pass, where the two-pass walk does every step twice. A step
// costs a thread, per state, one exp2, two multiplies and two FMAs; each lane sums C . h over its own states,
// and a tile's partial sums are added across the channel's lanes by a reduce-scatter (kTile - kTile / kLanes
// shuffles a tile, not log2(kLanes) a step), after which each lane finishes kTile / kLanes steps' y.
// The block stages a tile of kTile steps in shared memory, double-buffered: B and C of the batch row and, per
// channel, the step's scalars (discretised dt, dt x, D x, silu(z)); the next tile's global loads are in flight
// during this tile's steps, and the rows kAhead tiles on are prefetched into the L2 (a tile's steps take a few
// hundred cycles: a DRAM round trip is longer). Where the rows allow, two channels (states) a load (PairStager).
// Steps past the end of the sequence are padded with dt = 0 (decay 1, input 0): the state goes through them
// unchanged, so every tile's steps are unrolled. Each state is read and written by one thread: state_in and
// state_out may alias.
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "mamba1_scan.cuh"
#include "mma_sync.cuh"  // unpack2

namespace md {
namespace {

constexpr int kThreads = 128;
constexpr int kState = 16;  // states of a channel (dstate <= kState; the rest stay 0)
constexpr int kTile = 16;   // steps staged at a time (>= kLanes: each lane finishes kTile / kLanes of them)
constexpr int kAhead = 3;   // tiles between a row's L2 prefetch and its load
constexpr int kMaxLanes = 8;  // 16 lanes a channel measured slower than 8 at every size (mamba1_split_lanes)
// Blocks a multiprocessor: at 2 lanes 4 (<= 128 registers; ptxas would take up to 168, 3 blocks), so that 8 x
// 2,048 is one wave of 2,048 warps on an H200; 3 for float32 x, which spills at 128. At 4 and 8 lanes 5 (<= 102
// registers): measured on the H200 at 4 x 2,048 (mamba-1.4b's layer) 368.5 us with 96 registers against 445.5
// with 125.
template <typename T, int kLanes>
constexpr int kMinBlocks = kLanes > 2 ? 5 : sizeof(T) == 4 ? 3 : 4;

struct SplitArgs {
  md_ssm_params p;
  DtFtz discretise;
  int prefetch;        // x, dt, z rows channel-contiguous and B, C state-contiguous (the engine's layout)
  int pairs;           // and two elements at a time aligned (even counts, strides, offsets): PairStager
};

template <int kLanes>
struct Split {
  static_assert(kState % kLanes == 0 && kTile % kLanes == 0 && 32 % kLanes == 0, "lanes of a channel");
  static constexpr int kChannels = kThreads / kLanes;  // of a block
  static constexpr int kPer = kState / kLanes;          // states a thread holds
  static constexpr int kOwn = kTile / kLanes;           // steps a lane finishes; also x / dt / z loads a tile
  static constexpr int kBC = kTile * kState / kThreads; // B and C loads a thread issues a tile
};

template <int kLanes>
struct SplitShared {
  static constexpr int kChannels = Split<kLanes>::kChannels;
  __align__(16) float B[2][kTile][kState];
  __align__(16) float C[2][kTile][kState];
  __align__(16) float2 step_dt[2][kTile][kChannels];   // (discretised dt, dt x)
  __align__(16) float2 step_out[2][kTile][kChannels];  // (D x, silu(z))
};

// A thread's share of staging a tile: kBC values of B and of C (element i = tid + k kThreads of kTile x kState),
// and x, dt, z of kOwn steps of one channel (element i = tid + k kThreads of kTile x kChannels: its channel is
// tid % kChannels in every k), loaded into registers a tile before they are stored.
template <typename T, int kLanes>
struct Stager {
  using Sp = Split<kLanes>;
  float B[Sp::kBC], C[Sp::kBC], x[Sp::kOwn], dt[Sp::kOwn], z[Sp::kOwn];
  unsigned valid = 0;  // bit k: step k's x, dt, z are real (else a padding step)
  float bias = 0.f, Dv = 0.f;
  // Running pointers at the thread's first element of the next tile to load (no 64-bit index products a tile);
  // element k is k rows of kThreads / kState (B, C) or kLanes (x, dt, z) steps further.
  // (Strides are read from the kernel's parameters where used: held in registers they cost 5 pairs.)
  const T *xp, *dtp, *zp, *Bp, *Cp;
  int step_bc, step_row;  // the first element's step within a tile
  bool channel_ok, state_ok;

  __device__ Stager(const md_ssm_params& p, int64_t b, int64_t d0) {
    const int64_t d = d0 + threadIdx.x % Sp::kChannels;
    const int n = threadIdx.x % kState;
    step_bc = threadIdx.x / kState;
    step_row = threadIdx.x / Sp::kChannels;
    channel_ok = d < p.nheads;
    if (channel_ok && p.dt_bias) bias = load_any(p.dt_bias, p.param_dtype, d * p.dt_bias_head_stride);
    if (channel_ok && p.D) Dv = load_any(p.D, p.param_dtype, d * p.D_head_stride);
    state_ok = n < p.dstate;  // else B, C stay 0
    xp = static_cast<const T*>(p.x) + b * p.x_batch_stride + d * p.x_head_stride + step_row * p.x_seq_stride;
    dtp = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + d * p.dt_head_stride + step_row * p.dt_seq_stride;
    zp = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + d * p.z_head_stride + step_row * p.z_seq_stride
             : nullptr;
    Bp = static_cast<const T*>(p.B) + b * p.B_batch_stride + n * p.B_state_stride + step_bc * p.B_seq_stride;
    Cp = static_cast<const T*>(p.C) + b * p.C_batch_stride + n * p.C_state_stride + step_bc * p.C_seq_stride;
  }
  // Steps [t0, t0 + kTile), `left` = seqlen - t0 of them real; then the pointers move to the next tile.
  __device__ void load(const md_ssm_params& p, int64_t left) {
#pragma unroll
    for (int k = 0; k < Sp::kBC; ++k) {
      const bool ok = state_ok && step_bc + k * (kThreads / kState) < left;
      B[k] = ok ? to_f(Bp[k * (kThreads / kState) * p.B_seq_stride]) : 0.f;
      C[k] = ok ? to_f(Cp[k * (kThreads / kState) * p.C_seq_stride]) : 0.f;
    }
    valid = 0;
#pragma unroll
    for (int k = 0; k < Sp::kOwn; ++k) {
      const bool ok = channel_ok && step_row + k * kLanes < left;
      x[k] = ok ? to_f(xp[k * kLanes * p.x_seq_stride]) : 0.f;
      dt[k] = ok ? to_f(dtp[k * kLanes * p.dt_seq_stride]) : 0.f;
      z[k] = ok && zp ? to_f(zp[k * kLanes * p.z_seq_stride]) : 0.f;
      valid |= ok ? 1u << k : 0u;
    }
    Bp += kTile * p.B_seq_stride;
    Cp += kTile * p.C_seq_stride;
    xp += kTile * p.x_seq_stride;
    dtp += kTile * p.dt_seq_stride;
    if (zp) zp += kTile * p.z_seq_stride;
  }
  __device__ void store(const SplitArgs& a, SplitShared<kLanes>& sh, int buf) const {
#pragma unroll
    for (int k = 0; k < Sp::kBC; ++k) {
      const int i = threadIdx.x + k * kThreads;
      sh.B[buf][i / kState][i % kState] = B[k];
      sh.C[buf][i / kState][i % kState] = C[k];
    }
#pragma unroll
    for (int k = 0; k < Sp::kOwn; ++k) {
      const int i = threadIdx.x + k * kThreads, s = i / Sp::kChannels, c = i % Sp::kChannels;
      float delta = 0.f;  // a padding step: decay 1, input 0
      if (valid & (1u << k)) delta = a.discretise(dt[k] + bias);
      sh.step_dt[buf][s][c] = make_float2(delta, delta * x[k]);
      sh.step_out[buf][s][c] = make_float2(Dv * x[k], zp ? silu_ftz(z[k]) : 1.f);
    }
  }
};

// A pair of elements' bits as one word (two 16-bit elements: 32 bits; float32: 64), loaded by a predicated load
// into a zeroed register. A struct of two T was packed into its registers next to its load, which waited there.
template <typename T> struct PairWord { using type = uint32_t; };
template <> struct PairWord<float> { using type = uint2; };
template <typename T>
__device__ __forceinline__ float2 pair_to_f(uint32_t w, T) {
  return unpack2<T>(w);
}
__device__ __forceinline__ float2 pair_to_f(uint2 w, float) {
  return make_float2(__uint_as_float(w.x), __uint_as_float(w.y));
}

// Stager's work in pairs, where SplitArgs::pairs holds: x, dt, z loaded two channels (B, C two states) a load, one
// step a load (4 bytes; 8 for float32); the pair's thread discretises both channels and stores them as one 16-byte
// piece of the step's row. Pair i = tid + k kThreads of the tile's kTile x kChannels / 2 (x, dt, z) or kTile x
// kState / 2 (B, C): its channels (states) are the same in every k. The same float operations as Stager.
template <typename T, int kLanes>
struct PairStager {
  using Sp = Split<kLanes>;
  static constexpr int kPairs = Sp::kChannels / 2;          // channel pairs of a block
  static constexpr int kRows = kThreads / kPairs;             // steps a round of x, dt, z loads covers
  static constexpr int kXY = kTile / kRows;                   // rounds a tile (kOwn / 2)
  static constexpr int kBCRows = kThreads / (kState / 2);     // steps a round of B, C loads covers
  static constexpr int kBC = kTile / kBCRows;
  static_assert(kThreads % kPairs == 0 && kTile % kRows == 0 && kTile % kBCRows == 0, "pairs of a tile");
  using Word = typename PairWord<T>::type;
  Word B[kBC], C[kBC], x[kXY], dt[kXY], z[kXY];
  unsigned valid = 0;  // bit k: round k's step is real
  float bias[2] = {0.f, 0.f}, Dv[2] = {0.f, 0.f};
  const Word *xp, *dtp, *zp, *Bp, *Cp;
  int row, bc_row;  // the first round's step within a tile
  bool channel_ok, state_ok;

  __device__ PairStager(const md_ssm_params& p, int64_t b, int64_t d0) {
    const int64_t d = d0 + 2 * (threadIdx.x % kPairs);
    const int n = 2 * (threadIdx.x % (kState / 2));
    row = threadIdx.x / kPairs;
    bc_row = threadIdx.x / (kState / 2);
    channel_ok = d < p.nheads;  // nheads even: both or neither
    state_ok = n < p.dstate;    // dstate even: both or neither
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (channel_ok && p.dt_bias) bias[j] = load_any(p.dt_bias, p.param_dtype, (d + j) * p.dt_bias_head_stride);
      if (channel_ok && p.D) Dv[j] = load_any(p.D, p.param_dtype, (d + j) * p.D_head_stride);
    }
    const auto at = [](const void* base, int64_t i) {
      return reinterpret_cast<const Word*>(static_cast<const T*>(base) + i);
    };
    xp = at(p.x, b * p.x_batch_stride + d + row * p.x_seq_stride);
    dtp = at(p.dt, b * p.dt_batch_stride + d + row * p.dt_seq_stride);
    zp = p.z ? at(p.z, b * p.z_batch_stride + d + row * p.z_seq_stride) : nullptr;
    Bp = at(p.B, b * p.B_batch_stride + n + bc_row * p.B_seq_stride);
    Cp = at(p.C, b * p.C_batch_stride + n + bc_row * p.C_seq_stride);
  }
  // Strides in words are half the element strides (even: SplitArgs::pairs).
  __device__ void load(const md_ssm_params& p, int64_t left) {
    const Word zero{};
#pragma unroll
    for (int k = 0; k < kBC; ++k) {
      const bool ok = state_ok && bc_row + k * kBCRows < left;
      B[k] = ok ? Bp[k * kBCRows * (p.B_seq_stride / 2)] : zero;
      C[k] = ok ? Cp[k * kBCRows * (p.C_seq_stride / 2)] : zero;
    }
    valid = 0;
#pragma unroll
    for (int k = 0; k < kXY; ++k) {
      const bool ok = channel_ok && row + k * kRows < left;
      x[k] = ok ? xp[k * kRows * (p.x_seq_stride / 2)] : zero;
      dt[k] = ok ? dtp[k * kRows * (p.dt_seq_stride / 2)] : zero;
      z[k] = ok && zp ? zp[k * kRows * (p.z_seq_stride / 2)] : zero;
      valid |= ok ? 1u << k : 0u;
    }
    Bp += kTile * (p.B_seq_stride / 2);
    Cp += kTile * (p.C_seq_stride / 2);
    xp += kTile * (p.x_seq_stride / 2);
    dtp += kTile * (p.dt_seq_stride / 2);
    if (zp) zp += kTile * (p.z_seq_stride / 2);
  }
  __device__ void store(const SplitArgs& a, SplitShared<kLanes>& sh, int buf) const {
    const int pair = threadIdx.x % kPairs, n = threadIdx.x % (kState / 2);
#pragma unroll
    for (int k = 0; k < kBC; ++k) {
      const int s = bc_row + k * kBCRows;
      *reinterpret_cast<float2*>(&sh.B[buf][s][2 * n]) = pair_to_f(B[k], T());
      *reinterpret_cast<float2*>(&sh.C[buf][s][2 * n]) = pair_to_f(C[k], T());
    }
#pragma unroll
    for (int k = 0; k < kXY; ++k) {
      const int s = row + k * kRows;
      const float2 xs = pair_to_f(x[k], T()), dts = pair_to_f(dt[k], T()), zs = pair_to_f(z[k], T());
      const float x0 = xs.x, x1 = xs.y;
      float delta0 = 0.f, delta1 = 0.f;  // a padding step: decay 1, input 0
      if (valid & (1u << k)) {
        delta0 = a.discretise(dts.x + bias[0]);
        delta1 = a.discretise(dts.y + bias[1]);
      }
      const bool gate = zp != nullptr;
      *reinterpret_cast<float4*>(&sh.step_dt[buf][s][2 * pair]) =
          make_float4(delta0, delta0 * x0, delta1, delta1 * x1);
      *reinterpret_cast<float4*>(&sh.step_out[buf][s][2 * pair]) = make_float4(
          Dv[0] * x0, gate ? silu_ftz(zs.x) : 1.f, Dv[1] * x1, gate ? silu_ftz(zs.y) : 1.f);
    }
  }
};

// The block's x, dt, z rows and B, C rows into the L2, a tile at a time from tile 1 (args.prefetch layouts
// only): thread i < 5 kTile covers row i % kTile of tensor i / kTile, one line (a row of kChannels <= 64
// 16-bit channels, or B / C's 16 states) or two (float32 x, dt, z rows of 64 channels).
template <typename T, int kLanes>
struct Prefetcher {
  static constexpr int kLines = (Split<kLanes>::kChannels * int(sizeof(T)) + 127) / 128;
  const T* row = nullptr;  // at step t
  int64_t t = 0, tile_step = 0;
  int lines = 1;

  __device__ Prefetcher(const SplitArgs& a, int64_t b, int64_t d0) {
    const md_ssm_params& p = a.p;
    const int tensor = threadIdx.x / kTile;
    t = kTile + threadIdx.x % kTile;
    if (!a.prefetch || tensor >= 5 || (tensor == 2 && p.z == nullptr)) return;
    // selects, not arrays indexed by `tensor` (those would live in local memory)
    const void* base = tensor == 0 ? p.x : tensor == 1 ? p.dt : tensor == 2 ? p.z : tensor == 3 ? p.B : p.C;
    const int64_t batch_stride = tensor == 0 ? p.x_batch_stride : tensor == 1 ? p.dt_batch_stride
        : tensor == 2 ? p.z_batch_stride : tensor == 3 ? p.B_batch_stride : p.C_batch_stride;
    const int64_t seq_stride = tensor == 0 ? p.x_seq_stride : tensor == 1 ? p.dt_seq_stride
        : tensor == 2 ? p.z_seq_stride : tensor == 3 ? p.B_seq_stride : p.C_seq_stride;
    const int64_t first = tensor < 3 ? d0 : 0;  // x, dt, z: the block's channels (unit head stride)
    row = static_cast<const T*>(base) + b * batch_stride + t * seq_stride + first;
    tile_step = kTile * seq_stride;
    lines = tensor < 3 ? kLines : 1;
  }
  // The next tile's row (nothing past the sequence).
  __device__ __forceinline__ void issue(int64_t seqlen) {
    if (row != nullptr && t < seqlen) {
      prefetch_line(row);
      if (kLines > 1 && lines > 1) prefetch_line(row + 128 / sizeof(T));
    }
    row += tile_step;
    t += kTile;
  }
};

// Grid: (ceil(nheads / kChannels), batch). Block: kChannels channels x kLanes lanes.
template <typename T, typename S, int kLanes, bool kPaired>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kLanes>) mamba1_split_kernel(const SplitArgs a) {
  using Sp = Split<kLanes>;
  using Stage = std::conditional_t<kPaired, PairStager<T, kLanes>, Stager<T, kLanes>>;
  __shared__ SplitShared<kLanes> sh;
  const md_ssm_params& p = a.p;
  const int64_t b = blockIdx.y, d0 = static_cast<int64_t>(blockIdx.x) * Sp::kChannels;
  const int ch = threadIdx.x / kLanes, q = threadIdx.x % kLanes;
  const int64_t d = d0 + ch, state_b = state_row(p.state_rows, b);
  const bool active = d < p.nheads;  // inactive lanes still walk (zeros): their shuffles are the warp's
  float A2[Sp::kPer], h[Sp::kPer];
#pragma unroll
  for (int j = 0; j < Sp::kPer; ++j) {
    const int n = q * Sp::kPer + j;
    const bool ok = active && n < p.dstate;
    A2[j] = ok ? load_any(p.A, p.param_dtype, d * p.A_head_stride + n * p.A_state_stride) * kLog2e : 0.f;
    h[j] = ok && p.state_in ? to_f(static_cast<const S*>(p.state_in)[state_b * p.state_in_batch_stride +
                                  d * p.state_in_head_stride + n * p.state_in_state_stride]) : 0.f;
  }
  Stage stage(p, b, d0);
  stage.load(p, p.seqlen);
  stage.store(a, sh, 0);
  Prefetcher<T, kLanes> prefetch(a, b, d0);
#pragma unroll
  for (int k = 1; k <= kAhead; ++k) prefetch.issue(p.seqlen);
  __syncthreads();
  // This lane's first step of a tile (it finishes steps q kOwn .. q kOwn + kOwn - 1), tile after tile.
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + d * p.y_head_stride + q * Sp::kOwn * p.y_seq_stride;
  int buf = 0;
  for (int64_t t0 = 0; t0 < p.seqlen; t0 += kTile, buf ^= 1) {
    const bool more = t0 + kTile < p.seqlen;
    prefetch.issue(p.seqlen);  // tile kAhead + 1 on
    if (more) stage.load(p, p.seqlen - t0 - kTile);  // in flight during this tile's steps
    float part[kTile];
#pragma unroll
    for (int s = 0; s < kTile; ++s) {
      const float2 step = sh.step_dt[buf][s][ch];
      const float* Bs = &sh.B[buf][s][q * Sp::kPer];
      const float* Cs = &sh.C[buf][s][q * Sp::kPer];
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < Sp::kPer; ++j) {
        h[j] = fmaf(fast_exp2(step.x * A2[j]), h[j], step.y * Bs[j]);
        acc = fmaf(Cs[j], h[j], acc);
      }
      part[s] = acc;
    }
    reduce_scatter<kLanes / 2, kTile>(part, q);  // (common.cuh) part[i], i < kOwn: step q kOwn + i's sum
    const int64_t left = p.seqlen - t0 - q * Sp::kOwn;
#pragma unroll
    for (int i = 0; i < Sp::kOwn; ++i) {
      const float2 out = sh.step_out[buf][q * Sp::kOwn + i][ch];
      if (active && i < left) y[i * p.y_seq_stride] = from_f<T>((part[i] + out.x) * out.y);
    }
    y += kTile * p.y_seq_stride;
    if (more) stage.store(a, sh, buf ^ 1);  // the other buffers: last read a tile ago
    __syncthreads();
  }
  if (!active || p.state_out == nullptr) return;
#pragma unroll
  for (int j = 0; j < Sp::kPer; ++j) {
    const int n = q * Sp::kPer + j;
    if (n < p.dstate) {
      static_cast<S*>(p.state_out)[state_b * p.state_out_batch_stride + d * p.state_out_head_stride +
                                   n * p.state_out_state_stride] = from_f<S>(h[j]);
    }
  }
}

template <typename T, typename S, int kLanes>
cudaError_t launch_lanes(const SplitArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.p.nheads + Split<kLanes>::kChannels - 1) / Split<kLanes>::kChannels),
                  static_cast<unsigned>(a.p.batch));
  // PairStager wherever the rows allow. At 8 lanes (batch 1-3) session 46 measured mamba-2.8b's split batch-1
  // prefill (prefill_split.py) slower with it, 33.3-33.7 ms against 30.7-31.0 on an H100; session 49, on an H100
  // with the kernels around it changed since: level there (30.1-30.8 against 30.0-30.9), 1 x 2,048 x 4,096 alone
  // 124.6 us against 158.6, mamba-1.4b's prefill 15.2-15.6 ms against 16.1-16.4, unsplit 16.2 against 17.9
  // (docs/performance.md).
  if (a.pairs) {
    mamba1_split_kernel<T, S, kLanes, true><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  mamba1_split_kernel<T, S, kLanes, false><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename S>
cudaError_t launch_typed(const SplitArgs& a, int lanes, cudaStream_t stream) {
  switch (lanes) {
    case 2: return launch_lanes<T, S, 2>(a, stream);
    case 4: return launch_lanes<T, S, 4>(a, stream);
    default: return launch_lanes<T, S, kMaxLanes>(a, stream);
  }
}

// Threads a split walk wants in all: 3.5 warps a scheduler (4 a multiprocessor).
int64_t target_threads() { return device_attribute(cudaDevAttrMultiProcessorCount, 132) * 4 * 112; }

// Whether a tensor's pairs of elements (2i, 2i + 1) along its unit-stride dimension are aligned for one load.
bool paired(const void* base, int64_t batch_stride, int64_t seq_stride, int64_t dtype) {
  return is_aligned(base, 2 * elem_bytes(dtype)) && batch_stride % 2 == 0 && seq_stride % 2 == 0;
}

}  // namespace

// The fewest lanes a channel (2, 4 or 8) that give target_threads(), else 8: more lanes cost each state-step a
// larger share of the per-step loads and of the reduce-scatter, fewer leave the schedulers without warps to hide
// a step's latency. Measured on the H200 (dstate 16, 2,048 steps; us): 4,096 channels 159.3 at 8 lanes, 173.7 at
// 16; 5,120 186.0 / 212.4 at 8 / 16; 8,192 224.9 / 344.0 at 8 / 16; 10,240 349.3 / 275.4 at 4 / 8; 16,384
// 388.3 / 436.4 at 4 / 8; 32,768 656.1 / 857.7 at 2 / 8. MD_MAMBA1_SPLIT_LANES (a build option, for
// measurements) fixes the count.
int mamba1_split_lanes(const md_ssm_params& p) {
#ifdef MD_MAMBA1_SPLIT_LANES
  return MD_MAMBA1_SPLIT_LANES;
#else
  const int64_t target = target_threads();
  int lanes = 2;
  while (lanes < kMaxLanes && p.batch * p.nheads * lanes < target) lanes *= 2;
  return lanes;
#endif
}

bool mamba1_split_fills_gpu(const md_ssm_params& p) { return p.batch * p.nheads * kMaxLanes >= target_threads(); }

cudaError_t launch_mamba1_split(const md_ssm_params& p, int lanes, cudaStream_t stream) {
  SplitArgs a{};
  a.p = p;
  a.discretise = DtFtz::of(p);
  a.prefetch = p.x_head_stride == 1 && p.dt_head_stride == 1 && (p.z == nullptr || p.z_head_stride == 1) &&
               p.B_state_stride == 1 && p.C_state_stride == 1;
  a.pairs = a.prefetch && p.nheads % 2 == 0 && p.dstate % 2 == 0 &&
            paired(p.x, p.x_batch_stride, p.x_seq_stride, p.x_dtype) &&
            paired(p.dt, p.dt_batch_stride, p.dt_seq_stride, p.x_dtype) &&
            (p.z == nullptr || paired(p.z, p.z_batch_stride, p.z_seq_stride, p.x_dtype)) &&
            paired(p.B, p.B_batch_stride, p.B_seq_stride, p.x_dtype) &&
            paired(p.C, p.C_batch_stride, p.C_seq_stride, p.x_dtype);
  return MD_DISPATCH_DTYPE(p.x_dtype, T, [&] {
    if (p.state_dtype == MD_FLOAT32) return launch_typed<T, float>(a, lanes, stream);
    return launch_typed<T, T>(a, lanes, stream);
  });
}

}  // namespace md
