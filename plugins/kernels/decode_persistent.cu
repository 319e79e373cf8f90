// decode_persistent.cu -- md_launch_mamba1_decode (gemv.h): a Mamba1 model's layers for one token at batch 1 in
// one cooperative launch, one block a multiprocessor. Why: at batch 1 a layer's five launches leave HBM idle
// between the projections (x_proj, the step, the norm, each launch's ramp: ~15 us of a 28 us layer on the H200
// against 12 us of weight bytes; docs/performance.md, session 20), and the staged GEMV showed that weights copied
// into shared memory ahead of their products hide that for one projection. Here a producer warp streams every
// weight row its block owns, layer after layer, into a ring of shared memory, and stops only when the ring is
// full: while the consumers wait at a grid barrier the next phases' weights keep arriving.
//
// A block (warps 0-7 the consumers, warp 8 the producer) owns, in every layer alike, a balanced share of in_proj's
// rows, of x_proj's rows, of the channels (their packed dt_proj rows) and of out_proj's rows; the producer copies
// them in that order, whole rows a slot (one bulk copy a slot), and the consumers take the slots in that order.
// A layer's phases, each but the last layer's out_proj ended by a grid barrier (a counter in p.sync):
//   norm      every block: residual += hidden (kept in registers), rmsnorm(residual) * w -> shared memory
//   in_proj   its rows (+ bias), the conv update on rows < d_inner -> xz          | barrier
//   x_proj    its rows of x_proj . xz[:d_inner] -> xdbl                          | barrier
//   step      its channels: dt_proj . dt_low, softplus, the state, D, gate -> y   | barrier
//   out_proj  its rows (+ bias) -> hidden                                        | barrier
// Each phase's arithmetic is that of the separate kernel (row_norm_kernel, gemv's staged form at batch 1,
// mamba1_step_kernel at batch 1), operation for operation. What other blocks wrote in this launch is read through
// the L2 (ld.global.cg) after a barrier, never through the L1 or the non-coherent path.
#include <cstdint>
#include <cstdlib>

#include "bulk.cuh"
#include "common.cuh"
#include "gemv.h"
#include "gemv_epilogue.cuh"
#include "vec.cuh"

static_assert(sizeof(md_mamba1_layer) == 14 * 8, "md_mamba1_layer: 14 pointers (mamba_deploy/native/persistent.py)");

namespace md {
namespace {

constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp, the last
constexpr int kSlotBytes = 16 * 1024;
constexpr int kMinSlots = 4, kMaxSlots = 16;
constexpr int kMaxK = 8192;       // a projection's k: x held in registers, kMaxVecs 16-byte vectors a thread
constexpr int kMaxModel = 4096;   // d_model: the norm's groups of 8 elements a thread
constexpr int kNormGroups = kMaxModel / (8 * kConsumers);
constexpr int kRowGroup = 4;      // rows of a slot whose products and sums are in flight together (16-bit)
constexpr int kState = 16;        // a half-warp a channel, lane n state n (mamba1_step_kernel's layout)
constexpr int kStepIters = 4;     // channels a half-warp: a block's channels <= 16 kStepIters
constexpr int kMaxRank = 1024;
constexpr unsigned long long kBarrierTimeoutNs = 2000000000ull;

enum Phase { kIn = 0, kX = 1, kDt = 2, kOut = 3, kPhases = 4 };

// A block's rows of one phase, the same in every layer: [row0, row0 + rows), `per_slot` whole rows a ring slot.
struct Share {
  int row0, rows, row_bytes, per_slot, slots;
};

__host__ __device__ inline Share share_of(int64_t n, int64_t row_bytes, int blocks, int b) {
  const int64_t q = n / blocks, r = n % blocks;
  Share s;
  s.row0 = static_cast<int>(b * q + (b < r ? b : r));
  s.rows = static_cast<int>(q + (b < r ? 1 : 0));
  s.row_bytes = static_cast<int>(row_bytes);
  s.per_slot = static_cast<int>(kSlotBytes / row_bytes);
  s.slots = (s.rows + s.per_slot - 1) / s.per_slot;
  return s;
}

__host__ __device__ inline int64_t elem_bytes(const md_mamba1_decode_params& p) {
  return p.dtype == MD_FLOAT32 ? 4 : 2;
}
__host__ __device__ inline int64_t padded_rank(const md_mamba1_decode_params& p) { return (p.dt_rank + 7) / 8 * 8; }

// Rows of each phase: (n, row bytes).
__host__ __device__ inline Share phase_share(const md_mamba1_decode_params& p, int phase, int blocks, int b) {
  const int64_t e = elem_bytes(p);
  switch (phase) {
    case kIn: return share_of(2 * p.d_inner, p.d_model * e, blocks, b);
    case kX: return share_of(p.dt_rank + 2 * p.dstate, p.d_inner * e, blocks, b);
    case kDt: return share_of(p.d_inner, padded_rank(p) * e, blocks, b);
    default: return share_of(p.d_model, p.d_inner * e, blocks, b);
  }
}

// Shared memory: the ring, its full and empty mbarriers, the normed x (d_model floats), the warps' partial sums
// (kConsumerWarps x the most rows a block has in a projection), the step's dt_low / B / C, the block sum's scratch.
struct Layout {
  size_t full, empty, xs, red, sdt, scratch, total;
  int red_rows;
};

__host__ __device__ inline Layout layout_of(const md_mamba1_decode_params& p, int slots, int blocks) {
  Layout l;
  const int in = phase_share(p, kIn, blocks, 0).rows, x = phase_share(p, kX, blocks, 0).rows,
            out = phase_share(p, kOut, blocks, 0).rows;  // block 0 has the most
  l.red_rows = in > x ? (in > out ? in : out) : (x > out ? x : out);
  l.full = static_cast<size_t>(slots) * kSlotBytes;
  l.empty = l.full + 8 * slots;
  l.xs = l.empty + 8 * slots;
  l.red = l.xs + 4 * p.d_model;
  l.sdt = l.red + 4 * static_cast<size_t>(kConsumerWarps) * l.red_rows;
  l.scratch = l.sdt + 4 * (padded_rank(p) + 2 * kState);
  l.total = l.scratch + 4 * kConsumerWarps;
  return l;
}

// ---- device side ------------------------------------------------------------------------------------------
#if MD_BULK_DEVICE
struct Cursor {  // the next slot of the ring and the parity of its current fill
  int slot = 0;
  uint32_t parity = 0;
  __device__ __forceinline__ void next(int slots) {
    if (++slot == slots) slot = 0, parity ^= 1;
  }
  __device__ __forceinline__ Cursor ahead(int k, int slots) const {  // k < slots
    Cursor c;
    c.slot = slot + k >= slots ? slot + k - slots : slot + k;
    c.parity = slot + k >= slots ? parity ^ 1 : parity;
    return c;
  }
};

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The producer (one thread): every layer's rows of the block into the ring, in the consumers' order.
__device__ __forceinline__ void produce(const md_mamba1_decode_params& p, uint32_t ring, uint32_t full0,
                                        uint32_t empty0, int slots) {
  Share share[kPhases];
#pragma unroll
  for (int ph = 0; ph < kPhases; ++ph) share[ph] = phase_share(p, ph, gridDim.x, blockIdx.x);
  Cursor cur;
  bool wrapped = false;  // every slot filled once: from now on a fill waits for the consumers' release
  unsigned long long waited = 0;  // ns in waits for a free slot (p.trace only)
  for (int64_t l = 0; l < p.n_layer; ++l) {
    const md_mamba1_layer& L = p.layers[l];
    const void* base[kPhases] = {L.in_w, L.x_w, L.wdt, L.out_w};
#pragma unroll
    for (int ph = 0; ph < kPhases; ++ph) {
      const Share& s = share[ph];
      const char* src = static_cast<const char*>(base[ph]) + static_cast<int64_t>(s.row0) * s.row_bytes;
      for (int k = 0; k < s.slots; ++k) {
        const int rows = s.rows - k * s.per_slot < s.per_slot ? s.rows - k * s.per_slot : s.per_slot;
        const uint32_t bytes = static_cast<uint32_t>(rows * s.row_bytes);
        if (wrapped) {
          const unsigned long long t0 = p.trace ? global_ns() : 0;
          mbar_wait(empty0 + 8 * cur.slot, cur.parity ^ 1);
          if (p.trace) waited += global_ns() - t0;
        }
        mbar_expect_tx(full0 + 8 * cur.slot, bytes);
        bulk_load(ring + cur.slot * kSlotBytes, src + static_cast<int64_t>(k) * s.per_slot * s.row_bytes, bytes,
                  full0 + 8 * cur.slot);
        if (cur.slot == slots - 1) wrapped = true;
        cur.next(slots);
      }
    }
  }
  if (p.trace) {
    int64_t* row = p.trace + blockIdx.x * (8 * p.n_layer + 3) + 8 * p.n_layer;
    row[1] = static_cast<int64_t>(waited);
    row[2] = static_cast<int64_t>(global_ns());
  }
}

__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }

// block_sum (common.cuh) over the consumer warps: the same tree, so the same sum where row_norm_kernel's block
// has at most kConsumerWarps warps (its other warps add exact zeros here).
__device__ __forceinline__ float consumers_sum(float v, float* scratch) {
  v = group_sum<32>(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  consumers_sync();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  consumers_sync();
  return group_sum<32>(lane < kConsumerWarps ? scratch[lane] : 0.f);
}

// Every consumer thread, after its stores: returns once every block's consumers have arrived `target` times in
// all (or once a barrier of this launch or an earlier one gave up: sync[1], the outputs are then garbage). One
// thread a block arrives and acquires; the bar.sync around it orders the others' stores and loads.
__device__ void grid_barrier(unsigned* sync, unsigned target) {
  consumers_sync();
  if (threadIdx.x == 0) {
    asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(sync) : "memory");
    const unsigned long long start = global_ns();
    for (;;) {
      unsigned seen, failed;
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(sync) : "memory");
      if (seen >= target) break;
      asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(failed) : "l"(sync + 1) : "memory");
      if (failed) break;
      if (global_ns() - start > kBarrierTimeoutNs) {
        atomicExch(sync + 1, 1u);
        break;
      }
      __nanosleep(32);
    }
  }
  consumers_sync();
}

// 8 elements (16-byte aligned) as floats: coherent loads of what another block wrote in this launch, or shared.
template <typename T>
__device__ __forceinline__ void load8_coherent(const T* ptr, float* f) {
  const uint4* v = reinterpret_cast<const uint4*>(ptr);
  unpack(__ldcg(v), f, T());
  if constexpr (sizeof(T) == 4) unpack(__ldcg(v + 1), f + 4, T());
}
template <typename T>
__device__ __forceinline__ void load8_shared(const T* ptr, float* f) {
  const uint4* v = reinterpret_cast<const uint4*>(ptr);
  unpack(v[0], f, T());
  if constexpr (sizeof(T) == 4) unpack(v[1], f + 4, T());
}
template <typename T>
__device__ __forceinline__ float load_coherent(const T* ptr) {
  if constexpr (sizeof(T) == 4) {
    return __ldcg(ptr);
  } else {
    const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(ptr));
    return to_f(*reinterpret_cast<const T*>(&bits));
  }
}

template <typename T, typename S>
struct Consumer {
  static constexpr int EPV = Pack<T>::N;
  static constexpr int kMaxVecs = kMaxK / (kConsumers * EPV);
  static constexpr int kRows = sizeof(T) == 4 ? kRowGroup / 2 : kRowGroup;  // float32: fewer (168 registers)

  const md_mamba1_decode_params& p;  // the kernel's __grid_constant__ parameter
  const Layout lay;
  unsigned char* smem;
  uint32_t full0, empty0;
  int slots;
  Cursor cur;
  unsigned barriers = 0;
  float res[kNormGroups][8];  // the residual stream, groups of 8 elements t + kConsumers g
  float xf[kMaxVecs][EPV];    // a projection's x: the 16-byte vectors t + kConsumers j, zeros past k

  __device__ __forceinline__ void barrier() { grid_barrier(static_cast<unsigned*>(p.sync), ++barriers * gridDim.x); }
  // Measurements (p.trace): stamp k of layer l (k = 8 n_layer + 0: the start).
  __device__ __forceinline__ void stamp(int64_t l, int k) {
    if (p.trace && threadIdx.x == 0) p.trace[blockIdx.x * (8 * p.n_layer + 3) + 8 * l + k] = global_ns();
  }

  // residual += hidden (hidden alone in the first layer); the row norm, rounded to T as row_norm_kernel stores
  // it, into the shared x of in_proj.
  __device__ __forceinline__ void norm(const T* weight, bool first) {
    float* xs = reinterpret_cast<float*>(smem + lay.xs);
    float ss = 0.f;
#pragma unroll
    for (int g = 0; g < kNormGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e >= p.d_model) break;
      float v[8];
      load8_coherent(static_cast<const T*>(p.hidden) + e, v);
      if (!first) norm_combine8(v, res[g], false);
#pragma unroll
      for (int j = 0; j < 8; ++j) res[g][j] = v[j];
      ss = sum_squares8(v, ss);
    }
    const float inv = rms_inverse(consumers_sum(ss, reinterpret_cast<float*>(smem + lay.scratch)), p.d_model,
                                  p.norm_eps);
#pragma unroll
    for (int g = 0; g < kNormGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e >= p.d_model) break;
      float v[8], w[8];
      load8(weight + e, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = res[g][j];
      norm_scale8(v, inv, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) xs[e + j] = to_f(from_f<T>(v[j]));
    }
    consumers_sync();
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int64_t vi = threadIdx.x + static_cast<int64_t>(kConsumers) * j;
#pragma unroll
      for (int e = 0; e < EPV; ++e) xf[j][e] = vi * EPV < p.d_model ? xs[vi * EPV + e] : 0.f;
    }
  }

  // x <- k elements of a row another block wrote (xz's x part, y).
  __device__ __forceinline__ void load_x(const T* x, int64_t k) {
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int64_t vi = threadIdx.x + static_cast<int64_t>(kConsumers) * j;
      const uint4 v = vi * EPV < k ? __ldcg(reinterpret_cast<const uint4*>(x) + vi) : make_uint4(0, 0, 0, 0);
      unpack(v, xf[j], T());
    }
  }

  // The block's rows of a projection (k elements) from the ring: each warp's partial sums of each row into red
  // [warp][row] (gemv_staged_kernel's order: a thread's vectors in turn, then the warp's shuffle tree), each slot
  // released once the warp is done with it.
  __device__ __forceinline__ void products(const Share& s, int64_t k) {
    const int kv = static_cast<int>(k / EPV), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* red = reinterpret_cast<float*>(smem + lay.red);
    const uint4* ring4 = reinterpret_cast<const uint4*>(smem);
    int row = 0;
    for (int n = 0; n < s.slots; ++n) {
      const int nr = s.rows - row < s.per_slot ? s.rows - row : s.per_slot;
      mbar_wait(full0 + 8 * cur.slot, cur.parity);
      const uint4* w4 = ring4 + cur.slot * (kSlotBytes / 16);
      for (int r0 = 0; r0 < nr; r0 += kRows) {
        float acc[kRows] = {};
#pragma unroll
        for (int j = 0; j < kMaxVecs; ++j) {
          if (j * kConsumers >= kv) break;
          const int vi = threadIdx.x + j * kConsumers;
#pragma unroll
          for (int g = 0; g < kRows; ++g) {
            const uint4 wv = r0 + g < nr && vi < kv ? w4[(r0 + g) * kv + vi] : make_uint4(0, 0, 0, 0);
            float wf[EPV];
            unpack(wv, wf, T());
#pragma unroll
            for (int e = 0; e < EPV; ++e) acc[g] = fmaf(wf[e], xf[j][e], acc[g]);
          }
        }
#pragma unroll
        for (int g = 0; g < kRows; ++g) {
          const float v = group_sum<32>(acc[g]);
          if (lane == 0 && r0 + g < nr) red[warp * s.rows + row + r0 + g] = v;
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * cur.slot);
      cur.next(slots);
      row += nr;
    }
    consumers_sync();
  }

  // Each row of the block: the warps' sums in warp order, the bias, epilogue(row, v), the store (finish_rows).
  template <typename Epilogue>
  __device__ __forceinline__ void finish(const Share& s, const void* bias, void* out, Epilogue epilogue) {
    const float* red = reinterpret_cast<const float*>(smem + lay.red);
    for (int i = threadIdx.x; i < s.rows; i += kConsumers) {
      float v = 0.f;
      for (int w = 0; w < kConsumerWarps; ++w) v += red[w * s.rows + i];
      const int64_t row = s.row0 + i;
      if (bias) v += to_f(static_cast<const T*>(bias)[row]);
      static_cast<T*>(out)[row] = from_f<T>(epilogue(row, v));
    }
  }

  // A channel's inputs of the step that no block writes after in_proj: loaded before the barrier that precedes
  // the step (their latency, a DRAM round trip, then overlaps the other blocks' x_proj).
  struct Channel {
    float bias, A, D, h0, x, z;
  };
  Channel inputs[kStepIters];

  // Half-warp `half`'s channels half + 16 it of the block (a half-warp past the channels takes channel 0 and
  // stores nothing), and their inputs.
  __device__ __forceinline__ void step_inputs(const md_mamba1_layer& L, const Share& s) {
    const int n = threadIdx.x & 15, half = threadIdx.x >> 4, N = static_cast<int>(p.dstate);
    const T* xz = static_cast<const T*>(p.xz);
    const int64_t srow = state_row(p.state_rows, 0);
#pragma unroll
    for (int it = 0; it < kStepIters; ++it) {
      if (it * 16 >= s.rows) break;
      const int64_t ch = s.row0 + (half + 16 * it < s.rows ? half + 16 * it : 0);
      Channel& c = inputs[it];
      c.bias = L.dt_bias[ch];
      c.A = n < N ? L.A[ch * N + n] : 0.f;
      c.D = L.D[ch];
      c.h0 = n < N ? to_f(static_cast<const S*>(L.ssm_state)[srow * p.ssm_state_slot_stride + ch * N + n]) : 0.f;
      c.x = load_coherent(xz + ch);
      c.z = load_coherent(xz + p.d_inner + ch);
    }
  }

  // The block's channels (mamba1_step_kernel at batch 1: a half-warp a channel, 16 at a time), their dt_proj rows
  // from the ring, their other inputs from step_inputs.
  __device__ __forceinline__ void step(const md_mamba1_layer& L, const Share& s) {
    const int rp = static_cast<int>(padded_rank(p)), R = static_cast<int>(p.dt_rank), N = static_cast<int>(p.dstate);
    float* s_dt = reinterpret_cast<float*>(smem + lay.sdt);
    float* s_B = s_dt + rp;
    float* s_C = s_B + kState;
    const T* xdbl = static_cast<const T*>(p.xdbl);
    for (int i = threadIdx.x; i < rp; i += kConsumers) s_dt[i] = i < R ? load_coherent(xdbl + i) : 0.f;
    if (threadIdx.x < kState) {
      s_B[threadIdx.x] = threadIdx.x < N ? load_coherent(xdbl + R + threadIdx.x) : 0.f;
      s_C[threadIdx.x] = threadIdx.x < N ? load_coherent(xdbl + R + N + threadIdx.x) : 0.f;
    }
    consumers_sync();
    const int n = threadIdx.x & 15, half = threadIdx.x >> 4;
    const int64_t srow = state_row(p.state_rows, 0);
#pragma unroll
    for (int it = 0; it < kStepIters; ++it) {
      if (it * 16 >= s.rows) break;
      const int cl = half + 16 * it;
      const bool ok = cl < s.rows;
      const int cc = ok ? cl : 0;
      const Channel& c = inputs[it];
      const Cursor at = cur.ahead(cc / s.per_slot, slots);
      mbar_wait(full0 + 8 * at.slot, at.parity);
      const T* wrow = reinterpret_cast<const T*>(smem + at.slot * kSlotBytes) + (cc % s.per_slot) * rp;
      float dt = 0.f;
      for (int r8 = n; r8 < rp / 8; r8 += 16) {
        float wf[8];
        load8_shared(wrow + r8 * 8, wf);
#pragma unroll
        for (int j = 0; j < 8; ++j) dt = fmaf(wf[j], s_dt[r8 * 8 + j], dt);
      }
      float v = group_sum<16>(dt) + c.bias;
      v = softplus_exact(v);
      float y = 0.f;
      if (n < N) {
        const float h = fmaf(c.h0, expf(v * c.A), v * c.x * s_B[n]);
        const int64_t ch = s.row0 + cc;
        if (ok) static_cast<S*>(L.ssm_state)[srow * p.ssm_state_slot_stride + ch * N + n] = from_f<S>(h);
        y = h * s_C[n];
      }
      y = group_sum<16>(y);
      if (ok && n == 0) static_cast<T*>(p.y)[s.row0 + cc] = from_f<T>(fmaf(c.D, c.x, y) * (c.z / (1.f + expf(-c.z))));
    }
    __syncwarp();
    if ((threadIdx.x & 31) == 0) {
      for (int k = 0; k < s.slots; ++k) mbar_arrive(empty0 + 8 * cur.ahead(k, slots).slot);
    }
    for (int k = 0; k < s.slots; ++k) cur.next(slots);
  }

  __device__ __forceinline__ void run() {
    Share share[kPhases];
#pragma unroll
    for (int ph = 0; ph < kPhases; ++ph) share[ph] = phase_share(p, ph, gridDim.x, blockIdx.x);
    md_gemv_params conv{};  // the conv epilogue's view of the layer (gemv_epilogue.cuh)
    conv.conv_lo = 0;
    conv.conv_dim = p.d_inner;
    conv.conv_width = p.conv_width;
    conv.conv_silu = 1;
    conv.conv_state_dtype = p.conv_state_dtype;
    conv.conv_state_batch_stride = p.conv_state_slot_stride;
    conv.conv_state_dim_stride = p.conv_width - 1;
    conv.conv_state_width_stride = 1;
    conv.state_rows = p.state_rows;
    const auto same = [](int64_t, float v) { return v; };
    stamp(p.n_layer, 0);
    for (int64_t l = 0; l < p.n_layer; ++l) {
      const md_mamba1_layer L = p.layers[l];
      norm(static_cast<const T*>(L.norm_w), l == 0);
      stamp(l, 0);
      products(share[kIn], p.d_model);
      conv.conv_w = L.conv_w;
      conv.conv_b = L.conv_b;
      conv.conv_state = L.conv_state;
      finish(share[kIn], L.in_b, p.xz, [&](int64_t row, float v) {
        return row < p.d_inner ? conv_epilogue<T>(conv, 0, row, v) : v;
      });
      stamp(l, 1);
      barrier();
      stamp(l, 2);
      load_x(static_cast<const T*>(p.xz), p.d_inner);
      products(share[kX], p.d_inner);
      finish(share[kX], nullptr, p.xdbl, same);
      step_inputs(L, share[kDt]);
      stamp(l, 3);
      barrier();
      stamp(l, 4);
      step(L, share[kDt]);
      stamp(l, 5);
      barrier();
      stamp(l, 6);
      load_x(static_cast<const T*>(p.y), p.d_inner);
      products(share[kOut], p.d_inner);
      finish(share[kOut], L.out_b, p.hidden, same);
      stamp(l, 7);
      if (l + 1 < p.n_layer) barrier();
    }
    if (blockIdx.x != 0) return;
#pragma unroll
    for (int g = 0; g < kNormGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e < p.d_model) store8(static_cast<float*>(p.residual) + e, res[g]);
    }
  }
};
#endif  // MD_BULK_DEVICE

// Grid: one block a multiprocessor (cooperative); block: kThreads; shared memory: layout_of(p, slots, blocks).
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads, 1) mamba1_decode_kernel(const __grid_constant__ md_mamba1_decode_params p,
                                                                    int slots) {
#if MD_BULK_DEVICE
  extern __shared__ uint4 smem_vecs[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_vecs);
  const Layout lay = layout_of(p, slots, gridDim.x);
  const uint32_t ring = smem_address(smem), full0 = ring + static_cast<uint32_t>(lay.full),
                 empty0 = ring + static_cast<uint32_t>(lay.empty);
  if (threadIdx.x == 0) {
    for (int s = 0; s < slots; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kConsumerWarps);
    }
    fence_mbar_init();
  }
  __syncthreads();  // the last barrier of all 9 warps: from here on the consumers sync among themselves
  if (threadIdx.x >= kConsumers) {
    if (threadIdx.x == kConsumers) produce(p, ring, full0, empty0, slots);
    return;
  }
  Consumer<T, S> c{p, lay, smem, full0, empty0, slots};
  c.run();
#else
  __trap();  // the launcher requires compute capability 9.0+
#endif
}

// The ring's slots: as many as fit beside the rest (at most kMaxSlots); 0 when fewer than kMinSlots fit.
int ring_slots(const md_mamba1_decode_params& p, int blocks, int smem_optin) {
  const size_t rest = layout_of(p, 0, blocks).total + 16 * kMaxSlots;
  if (static_cast<size_t>(smem_optin) < rest + static_cast<size_t>(kMinSlots) * kSlotBytes) return 0;
  const int64_t fit = (smem_optin - static_cast<int64_t>(rest)) / kSlotBytes;
  return static_cast<int>(fit < kMaxSlots ? fit : kMaxSlots);
}

template <typename T, typename S>
cudaError_t launch_typed(const md_mamba1_decode_params& p, int blocks, int slots, cudaStream_t stream) {
  const size_t smem = layout_of(p, slots, blocks).total;
  auto kernel = mamba1_decode_kernel<T, S>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  MD_CHECK(per_sm >= 1, "mamba1_decode: a block does not fit on a multiprocessor");
  err = cudaMemsetAsync(p.sync, 0, sizeof(unsigned), stream);  // the barrier count; not the failure word
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;  // every block resident at once: the grid barriers need it
  attr[0].val.cooperative = 1;
  config.attrs = attr;
  // MD_PERSISTENT_PLAIN_LAUNCH=1 (a measurement switch): a plain launch, one block a multiprocessor all the same
  // while nothing else runs (a barrier that then waits in vain gives up after 2 s; sync word 1)
  const char* plain = std::getenv("MD_PERSISTENT_PLAIN_LAUNCH");
  config.numAttrs = plain != nullptr && plain[0] == '1' ? 0 : 1;
  return cudaLaunchKernelEx(&config, kernel, p, slots);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_mamba1_decode(const md_mamba1_decode_params* p, cudaStream_t stream) {
  using md::kSlotBytes;
  MD_CHECK(p != nullptr, "mamba1_decode: null params");
  MD_CHECK(p->layers && p->hidden && p->residual && p->xz && p->xdbl && p->y && p->sync,
           "mamba1_decode: missing pointer");
  MD_CHECK(md::valid_dtype(p->dtype) && md::valid_dtype(p->conv_state_dtype) &&
           (p->state_dtype == MD_FLOAT32 || p->state_dtype == p->dtype), "mamba1_decode: bad dtype");
  const int64_t e = md::elem_bytes(*p);
  MD_CHECK(p->n_layer >= 1 && p->n_layer < (int64_t{1} << 24), "mamba1_decode: bad n_layer");
  MD_CHECK(p->d_model >= 8 && p->d_model % 8 == 0 && p->d_model <= md::kMaxModel && p->d_model * e <= kSlotBytes,
           "mamba1_decode: d_model must be a multiple of 8, <= 4096, rows <= 16 KB");
  MD_CHECK(p->d_inner >= 8 && p->d_inner % 8 == 0 && p->d_inner * e <= kSlotBytes && p->d_inner <= md::kMaxK,
           "mamba1_decode: d_inner must be a multiple of 8 with rows <= 16 KB");
  MD_CHECK(p->dstate >= 1 && p->dstate <= md::kState, "mamba1_decode: dstate must be 1..16");
  MD_CHECK(p->dt_rank >= 1 && p->dt_rank <= md::kMaxRank, "mamba1_decode: dt_rank must be 1..1024");
  MD_CHECK(p->conv_width >= 2 && p->conv_width <= MD_MAX_CONV_WIDTH, "mamba1_decode: conv_width must be 2..8");
  MD_CHECK(p->conv_state_slot_stride >= 0 && p->ssm_state_slot_stride >= 0, "mamba1_decode: bad state strides");
  MD_CHECK(md::is_aligned(p->hidden) && md::is_aligned(p->residual) && md::is_aligned(p->xz) && md::is_aligned(p->y),
           "mamba1_decode: hidden, residual, xz and y must be 16-byte aligned");
  MD_CHECK(md::is_aligned(p->sync, 8), "mamba1_decode: sync must be 8-byte aligned");
  MD_CHECK(md::device_attribute(cudaDevAttrComputeCapabilityMajor, 0) >= 9 &&
           md::device_attribute(cudaDevAttrCooperativeLaunch, 0) == 1,
           "mamba1_decode: needs compute capability 9.0+ and cooperative launch");
  const int blocks = md::device_attribute(cudaDevAttrMultiProcessorCount, 0);
  const int slots = md::ring_slots(*p, blocks, md::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  MD_CHECK(blocks > 0 && slots > 0, "mamba1_decode: the shapes leave too little shared memory for the ring");
  // The step waits on all of its slots before it releases any (they must fit in the ring at once), and holds the
  // inputs of kStepIters channels a half-warp.
  const md::Share step = md::phase_share(*p, md::kDt, blocks, 0);
  MD_CHECK(step.slots <= slots && step.rows <= 16 * md::kStepIters,
           "mamba1_decode: more than 64 channels a multiprocessor (d_inner too large for this GPU)");
  return MD_DISPATCH_DTYPE(p->dtype, T, [&] {
    if (p->state_dtype == MD_FLOAT32) return md::launch_typed<T, float>(*p, blocks, slots, stream);
    return md::launch_typed<T, T>(*p, blocks, slots, stream);
  });
}
