// decode_persistent.cuh -- what the persistent batch-1 decodes share (decode_mamba1.cu, decode_mamba2.cu): a
// model's layers for one token in one cooperative launch, one block a multiprocessor. Why: at batch 1 a layer's
// launches leave HBM idle between the projections (the mixer's small kernels, the norms, each launch's ramp: ~15
// us of a 28 us mamba-1.4b layer on the H200 against 12 us of weight bytes; docs/performance.md, session 20), and
// the staged GEMV showed that weights copied into shared memory ahead of their products hide that for one
// projection. Here a producer warp streams every weight row its block owns, layer after layer, into a ring of
// shared memory, and stops only when the ring is full: while the consumers wait at a grid barrier the next
// phases' weights keep arriving.
//
// A block: warps 0-7 the consumers, warp 8 the producer. In every layer alike a block owns a balanced share of
// the rows of each streamed matrix (a Share); the producer copies them in the model's phase order, whole rows a
// ring slot (one bulk copy a slot), and the consumers take the slots in that order. The blocks meet at grid
// barriers (a counter in p.sync, zeroed by the launcher). What other blocks wrote in this launch is read through
// the L2 (ld.global.cg) after a barrier, never through the L1 or the non-coherent path. The norms and projections
// repeat the separate kernels' arithmetic (row_norm_kernel; gemv's staged form at batch 1), operation for
// operation.
//
// A model's file gives: its params P (fields n_layer, d_model, d_inner, dtype, norm_eps, layers, state_rows,
// hidden, residual, sync, trace), a Phases policy (kCount, share(p, phase, blocks, b), base(layer, phase): the
// matrices streamed in order), and a consumer built on Stack below; decode_launch.cuh checks and launches it.
#pragma once

#include <cstdint>

#include "bulk.cuh"
#include "common.cuh"
#include "gemv.h"
#include "gemv_epilogue.cuh"
#include "vec.cuh"

namespace md {
namespace persistent {

constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp, the last
constexpr int kSlotBytes = 16 * 1024;
constexpr int kMinSlots = 4, kMaxSlots = 16;
constexpr int kMaxK = 8192;       // a projection's k: x held in registers, kMaxVecs 16-byte vectors a thread
constexpr int kMaxModel = 4096;   // d_model: the residual norm's groups of 8 elements a thread (kNormGroups)
constexpr int kNormGroups = kMaxModel / (8 * kConsumers);
constexpr int kRowGroup = 4;      // rows of a slot whose products and sums are in flight together (16-bit)
constexpr unsigned long long kBarrierTimeoutNs = 2000000000ull;

// A block's rows of one streamed matrix, the same in every layer: [row0, row0 + rows), `per_slot` whole rows a slot.
struct Share {
  int row0, rows, row_bytes, per_slot, slots;
  __host__ __device__ int slot_rows(int k) const {  // rows in slot k of the share (per_slot but the last)
    return rows - k * per_slot < per_slot ? rows - k * per_slot : per_slot;
  }
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

// The most rows a block has of any streamed matrix (block 0's: shares differ by at most a row, the first ones
// larger): the rows of the warps' partial sums (Layout).
template <typename Phases, typename P>
__host__ __device__ inline int most_rows(const P& p, int blocks) {
  int most = 0;
  for (int ph = 0; ph < Phases::kCount; ++ph) {
    const int rows = Phases::share(p, ph, blocks, 0).rows;
    most = rows > most ? rows : most;
  }
  return most;
}

// Shared memory: the ring, its full and empty mbarriers, the normed x (xs_floats: the longest norm row), the warps'
// partial sums (kConsumerWarps x red_rows: the most rows a block has in a projection), the model's own bytes, the
// block sums' scratch (a float for each of up to 32 warps of row_norm_kernel's block).
// Byte offsets in 32 bits: the kernel holds them in registers, at the edge of its 168 (a launch checks the total
// against the device's shared memory, far below 2^32).
struct Layout {
  uint32_t full, empty, xs, red, extra, scratch, total;
  int red_rows;
};

__host__ __device__ inline Layout layout_of(int slots, int64_t xs_floats, int red_rows, int64_t extra_bytes) {
  Layout l;
  l.red_rows = red_rows;
  l.full = static_cast<uint32_t>(slots) * kSlotBytes;
  l.empty = l.full + 8 * slots;
  l.xs = l.empty + 8 * slots;
  l.red = l.xs + static_cast<uint32_t>(4 * xs_floats);
  l.extra = l.red + 4 * static_cast<uint32_t>(kConsumerWarps) * red_rows;
  l.scratch = l.extra + static_cast<uint32_t>(extra_bytes);
  l.total = l.scratch + 4 * 32;
  return l;
}

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
template <typename Phases, typename P>
__device__ __forceinline__ void produce(const P& p, uint32_t ring, uint32_t full0, uint32_t empty0, int slots) {
  Share share[Phases::kCount];
#pragma unroll
  for (int ph = 0; ph < Phases::kCount; ++ph) share[ph] = Phases::share(p, ph, gridDim.x, blockIdx.x);
  Cursor cur;
  bool wrapped = false;  // every slot filled once: from now on a fill waits for the consumers' release
  unsigned long long waited = 0;  // ns in waits for a free slot (p.trace only)
  for (int64_t l = 0; l < p.n_layer; ++l) {
    const auto& L = p.layers[l];
#pragma unroll
    for (int ph = 0; ph < Phases::kCount; ++ph) {
      const Share& s = share[ph];
      const char* src = static_cast<const char*>(Phases::base(L, ph)) + static_cast<int64_t>(s.row0) * s.row_bytes;
      for (int k = 0; k < s.slots; ++k) {
        const uint32_t bytes = static_cast<uint32_t>(s.slot_rows(k) * s.row_bytes);
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

// The sum over warps first .. first + nwarps - 1 of the consumers (common.cuh: warp_group_sum): block_sum's tree,
// so the same sum as row_norm_kernel's block of those warps (over all 8 where its block has fewer: the others
// add exact zeros).
__device__ __forceinline__ float consumers_sum(float v, float* scratch, int first = 0, int nwarps = kConsumerWarps) {
  return warp_group_sum(v, scratch, first, nwarps, [] { consumers_sync(); });
}

// The sum over the consumers of v[g], thread t's value for the 8-element group t + kConsumers g of a row, exactly as
// row_norm_kernel's block (a thread a group) sums the row (block_sum): that block's warp 8 g + t / 32 holds what
// this warp holds at level g, so each level's warp sums go to scratch[8 g + warp] and the last tree runs over all
// 8 G of them (the reference's warps past the row and these past it alike add exact zeros).
template <int G>
__device__ __forceinline__ float consumers_levels_sum(const float (&v)[G], float* scratch) {
  static_assert(kConsumerWarps * G <= 32, "one warp's tree over the warp sums");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float sums[G];
#pragma unroll
  for (int g = 0; g < G; ++g) sums[g] = group_sum<32>(v[g]);
  consumers_sync();  // scratch may still be read by a previous sum
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) scratch[kConsumerWarps * g + warp] = sums[g];
  }
  consumers_sync();
  return group_sum<32>(lane < kConsumerWarps * G ? scratch[lane] : 0.f);
}

// Every consumer thread, after its stores: returns once every block's consumers have arrived `target` times in
// all (or once a barrier of this launch gave up: sync[1], the outputs are then garbage; sync[2] keeps that it
// happened for the caller, past later launches). One thread a block arrives and acquires; the bar.sync around it
// orders the others' stores and loads.
__device__ __forceinline__ void grid_barrier(int* sync, int target) {
  consumers_sync();
  if (threadIdx.x == 0) {
    release_add(sync);
    const unsigned long long start = global_ns();
    while (relaxed_load(sync) < target && !relaxed_load(sync + 1)) {
      if (global_ns() - start > kBarrierTimeoutNs) {
        atomicExch(sync + 1, 1);
        atomicExch(sync + 2, 1);
        break;
      }
      __nanosleep(32);
    }
    acquire_load(sync);
  }
  consumers_sync();
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

// The consumer side both models share: the residual stream and its norm, a projection's x in registers, the
// products of the block's rows from the ring, their sums and stores, the grid barriers and the trace stamps.
template <typename T, typename P>
struct Stack {
  static constexpr int EPV = Pack<T>::N;
  static constexpr int kMaxVecs = kMaxK / (kConsumers * EPV);
  static constexpr int kRows = sizeof(T) == 4 ? kRowGroup / 2 : kRowGroup;  // float32: fewer (168 registers)

  const P& p;  // the kernel's __grid_constant__ parameter
  const Layout lay;
  unsigned char* smem;
  uint32_t full0, empty0;
  int slots;
  Cursor cur;
  int barriers = 0;
  float res[kNormGroups][8];  // the residual stream, groups of 8 elements t + kConsumers g
  float xf[kMaxVecs][EPV];    // a projection's x: the 16-byte vectors t + kConsumers j, zeros past k

  __device__ Stack(const P& params, const Layout& layout, unsigned char* shared, uint32_t full, uint32_t empty,
                   int ring_slots)
      : p(params), lay(layout), smem(shared), full0(full), empty0(empty), slots(ring_slots) {}

  __device__ __forceinline__ void barrier() {
    grid_barrier(static_cast<int*>(p.sync), ++barriers * static_cast<int>(gridDim.x));
  }
  // Measurements (p.trace): stamp k of layer l (k = 8 n_layer + 0: the start).
  __device__ __forceinline__ void stamp(int64_t l, int k) {
    if (p.trace && threadIdx.x == 0) p.trace[blockIdx.x * (8 * p.n_layer + 3) + 8 * l + k] = global_ns();
  }

  // The bytes [begin, end) of `base` into the L2: each 128-byte line they touch, a line a thread, every address
  // inside the range (nothing for a null base).
  __device__ __forceinline__ static void prefetch_l2(const void* base, int64_t begin, int64_t end) {
    if (base == nullptr || begin >= end) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(base) + begin, hi = reinterpret_cast<uintptr_t>(base) + end;
#pragma unroll 1
    for (uintptr_t line = (lo & ~uintptr_t{127}) + 128 * threadIdx.x; line < hi; line += 128 * kConsumers)
      prefetch_line(reinterpret_cast<const void*>(line < lo ? lo : line));
  }

  // At a layer's start, what it reads from DRAM besides the ring into the L2, each a DRAM round trip on the path
  // of the phase that loads it otherwise: the norm's weight (loaded after the sum: held from the start it spills),
  // the conv state, weights and bias of the block's conv rows (conv: conv_view's rows), the bias of its in_proj
  // rows (s) and of its out_proj rows (out).
  template <typename Layer>
  __device__ __forceinline__ void prefetch_layer(const Share& s, const Share& out, const Layer& L,
                                                 const md_gemv_params& conv) const {
    const int64_t e = elem_bytes(p.dtype), w = p.conv_width, lo = conv.conv_lo, hi = lo + conv.conv_dim;
    prefetch_l2(L.norm_w, 0, p.d_model * e);
    const int64_t c0 = (s.row0 > lo ? s.row0 : lo) - lo, c1 = (s.row0 + s.rows < hi ? s.row0 + s.rows : hi) - lo;
    if (c0 < c1) {
      const int64_t state0 = state_row(p.state_rows, 0) * p.conv_state_slot_stride;
      const int64_t es = elem_bytes(p.conv_state_dtype);
      prefetch_l2(L.conv_state, (state0 + c0 * (w - 1)) * es, (state0 + c1 * (w - 1)) * es);
      prefetch_l2(L.conv_w, c0 * w * e, c1 * w * e);
      prefetch_l2(L.conv_b, c0 * e, c1 * e);
    }
    prefetch_l2(L.in_b, s.row0 * e, (s.row0 + s.rows) * e);
    prefetch_l2(L.out_b, out.row0 * e, (out.row0 + out.rows) * e);
  }

  // residual += hidden (hidden alone in the first layer); the row norm, rounded to T as row_norm_kernel stores
  // it, into xs and then x (the input of in_proj).
  __device__ __forceinline__ void norm(const T* weight, bool first) {
    float* xs = reinterpret_cast<float*>(smem + lay.xs);
    float ss[kNormGroups] = {};
#pragma unroll
    for (int g = 0; g < kNormGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e >= p.d_model) break;
      float v[8];
      load8_cg(static_cast<const T*>(p.hidden) + e, v);
      if (!first) norm_combine8(v, res[g], false);
#pragma unroll
      for (int j = 0; j < 8; ++j) res[g][j] = v[j];
      ss[g] = sum_squares8(v, 0.f);
    }
    const float inv = rms_inverse(consumers_levels_sum(ss, reinterpret_cast<float*>(smem + lay.scratch)),
                                  p.d_model, p.norm_eps);
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
    load_x_shared(p.d_model);
  }

  // x <- the first k floats of xs.
  __device__ __forceinline__ void load_x_shared(int64_t k) {
    const float* xs = reinterpret_cast<const float*>(smem + lay.xs);
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int64_t vi = threadIdx.x + static_cast<int64_t>(kConsumers) * j;
#pragma unroll
      for (int e = 0; e < EPV; ++e) xf[j][e] = vi * EPV < k ? xs[vi * EPV + e] : 0.f;
    }
  }

  // x <- k elements of a row another block wrote.
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
  // released once the warp is done with it. Rows a group: kRows where a slot holds at least 3 / 4 of that, else
  // one (a group's rows past the slot's are products of zeros: 4 a group spent 3 of 4 products on 10 KB rows).
  __device__ __forceinline__ void products(const Share& s, int64_t k) {
    if (4 * s.per_slot >= 3 * kRows) {
      products_by<kRows>(s, k);
    } else {
      products_by<1>(s, k);
    }
  }

  template <int R>
  __device__ __forceinline__ void products_by(const Share& s, int64_t k) {
    const int kv = static_cast<int>(k / EPV), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* red = reinterpret_cast<float*>(smem + lay.red);
    const uint4* ring4 = reinterpret_cast<const uint4*>(smem);
    int row = 0;
    for (int n = 0; n < s.slots; ++n) {
      const int nr = s.slot_rows(n);
      mbar_wait(full0 + 8 * cur.slot, cur.parity);
      const uint4* w4 = ring4 + cur.slot * (kSlotBytes / 16);
      for (int r0 = 0; r0 < nr; r0 += R) {
        float acc[R] = {};
#pragma unroll
        for (int j = 0; j < kMaxVecs; ++j) {
          if (j * kConsumers >= kv) break;
          const int vi = threadIdx.x + j * kConsumers;
#pragma unroll
          for (int g = 0; g < R; ++g) {
            const uint4 wv = r0 + g < nr && vi < kv ? w4[(r0 + g) * kv + vi] : make_uint4(0, 0, 0, 0);
            float wf[EPV];
            unpack(wv, wf, T());
#pragma unroll
            for (int e = 0; e < EPV; ++e) acc[g] = fmaf(wf[e], xf[j][e], acc[g]);
          }
        }
        const float v = rows_sum(acc);  // row g's warp sum on lanes g * 32 / R ..: group_sum<32>'s bits
        const int g = lane / (32 / R);
        if (lane % (32 / R) == 0 && r0 + g < nr) red[warp * s.rows + row + r0 + g] = v;
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

  // The conv epilogue's view (gemv_epilogue.cuh) of in_proj's rows [lo, lo + dim); in_proj_finish sets the layer's
  // pointers.
  __device__ __forceinline__ md_gemv_params conv_view(int64_t lo, int64_t dim) const {
    md_gemv_params conv{};
    conv.conv_lo = lo;
    conv.conv_dim = dim;
    conv.conv_width = p.conv_width;
    conv.conv_silu = 1;
    conv.conv_state_dtype = p.conv_state_dtype;
    conv.conv_state_batch_stride = p.conv_state_slot_stride;
    conv.conv_state_dim_stride = p.conv_width - 1;
    conv.conv_state_width_stride = 1;
    conv.state_rows = p.state_rows;
    return conv;
  }

  // in_proj's rows of the block (+ bias), the conv update on the conv's rows, into xz.
  template <typename Layer>
  __device__ __forceinline__ void in_proj_finish(const Share& s, const Layer& L, md_gemv_params& conv) {
    conv.conv_w = L.conv_w;
    conv.conv_b = L.conv_b;
    conv.conv_state = L.conv_state;
    finish(s, L.in_b, p.xz, [&](int64_t row, float v) {
      const bool conv_row = row >= conv.conv_lo && row < conv.conv_lo + conv.conv_dim;
      return conv_row ? conv_epilogue<T>(conv, 0, row - conv.conv_lo, v) : v;
    });
  }

  // Block 0: the residual entering the final norm, after the last layer.
  __device__ __forceinline__ void write_residual() {
    if (blockIdx.x != 0) return;
#pragma unroll
    for (int g = 0; g < kNormGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e < p.d_model) store8(static_cast<float*>(p.residual) + e, res[g]);
    }
  }
};

// The kernel's start: the ring's mbarriers initialised, then the producer thread streams and the consumers run.
// Returns true in the consumer threads.
template <typename Phases, typename P>
__device__ __forceinline__ bool start(const P& p, unsigned char* smem, const Layout& lay, int slots,
                                      uint32_t& full0, uint32_t& empty0) {
  const uint32_t ring = smem_address(smem);
  full0 = ring + static_cast<uint32_t>(lay.full);
  empty0 = ring + static_cast<uint32_t>(lay.empty);
  if (threadIdx.x == 0) {
    for (int s = 0; s < slots; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kConsumerWarps);
    }
    fence_mbar_init();
  }
  __syncthreads();  // the last barrier of all 9 warps: from here on the consumers sync among themselves
  if (threadIdx.x < kConsumers) return true;
  if (threadIdx.x == kConsumers) produce<Phases>(p, ring, full0, empty0, slots);
  return false;
}
#endif  // MD_BULK_DEVICE

// What a model gives the kernel and the launcher besides: static layout(p, slots, blocks) (its shared memory),
// problem(p) and device_problem(p, blocks, slots) (its own checks: nullptr, or what is wrong) and, in device code,
// Consumer<T, S> (built on Stack, with run()).
template <typename ParamsT, typename PhasesT>
struct Model {
  using Params = ParamsT;
  using Phases = PhasesT;
};

// A model's kernel. Grid: one block a multiprocessor (cooperative); block: kThreads; shared memory:
// Model::layout(p, slots, blocks). Model gives Params, Phases, layout and (device code) Consumer<T, S>.
template <typename Model, typename T, typename S>
__global__ void __launch_bounds__(kThreads, 1) decode_kernel(const __grid_constant__ typename Model::Params p,
                                                             int slots) {
#if MD_BULK_DEVICE
  extern __shared__ uint4 smem_vecs[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_vecs);
  const Layout lay = Model::layout(p, slots, gridDim.x);
  uint32_t full0, empty0;
  if (!start<typename Model::Phases>(p, smem, lay, slots, full0, empty0)) return;
  typename Model::template Consumer<T, S> c(p, lay, smem, full0, empty0, slots);
  c.run();
#else
  __trap();  // the launcher requires compute capability 9.0+
#endif
}

}  // namespace persistent
}  // namespace md
