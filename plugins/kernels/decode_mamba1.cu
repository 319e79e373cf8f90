// decode_mamba1.cu -- md_launch_mamba1_decode (gemv.h): a Mamba1 model's layers for one token at batch 1 in one
// cooperative launch (decode_persistent.cuh: the ring, the producer, the shared consumer steps and barriers;
// decode_launch.cuh: the checks and the launch).
//
// The streamed matrices of a block, in order: its rows of in_proj, of x_proj, its channels' packed dt_proj rows,
// its rows of out_proj. A layer's phases, each but the last layer's out_proj ended by a grid barrier:
//   norm      every block: residual += hidden (kept in registers), rmsnorm(residual) * w -> x
//   in_proj   its rows (+ bias), the conv update on rows < d_inner -> xz          | barrier
//   x_proj    its rows of x_proj . xz[:d_inner] -> xdbl                          | barrier
//   step      its channels: dt_proj . dt_low, softplus, the state, D, gate -> y   | barrier
//   out_proj  its rows (+ bias) -> hidden                                        | barrier
// The step is mamba1_step_kernel's at batch 1, operation for operation.
#include <cstdint>

#include "common.cuh"
#include "decode_launch.cuh"
#include "decode_persistent.cuh"
#include "gemv.h"

static_assert(sizeof(md_mamba1_layer) == 14 * 8, "md_mamba1_layer: 14 pointers (mamba_deploy/native/persistent.py)");

namespace md {
namespace {

using namespace persistent;

constexpr int kState = 16;     // a half-warp a channel, lane n state n (mamba1_step_kernel's layout)
constexpr int kStepIters = 4;  // channels a half-warp: a block's channels <= 16 kStepIters
constexpr int kMaxRank = 1024;

enum Phase { kIn = 0, kX = 1, kDt = 2, kOut = 3 };

__host__ __device__ inline int64_t padded_rank(const md_mamba1_decode_params& p) { return (p.dt_rank + 7) / 8 * 8; }

struct Phases {
  static constexpr int kCount = 4;
  // Rows of each streamed matrix: (n, row bytes).
  __host__ __device__ static Share share(const md_mamba1_decode_params& p, int phase, int blocks, int b) {
    const int64_t e = elem_bytes(p.dtype);
    switch (phase) {
      case kIn: return share_of(2 * p.d_inner, p.d_model * e, blocks, b);
      case kX: return share_of(p.dt_rank + 2 * p.dstate, p.d_inner * e, blocks, b);
      case kDt: return share_of(p.d_inner, padded_rank(p) * e, blocks, b);
      default: return share_of(p.d_model, p.d_inner * e, blocks, b);
    }
  }
  __device__ static const void* base(const md_mamba1_layer& L, int phase) {
    return phase == kIn ? L.in_w : phase == kX ? L.x_w : phase == kDt ? L.wdt : L.out_w;
  }
};


#if MD_BULK_DEVICE
template <typename T, typename S>
struct Consumer : Stack<T, md_mamba1_decode_params> {
  using Base = Stack<T, md_mamba1_decode_params>;
  using Base::Base;
  using Base::p;
  using Base::lay;
  using Base::smem;
  using Base::full0;
  using Base::empty0;
  using Base::slots;
  using Base::cur;

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
    float* s_dt = reinterpret_cast<float*>(smem + lay.extra);
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
        load8_plain(wrow + r8 * 8, wf);
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
    Share share[Phases::kCount];
#pragma unroll
    for (int ph = 0; ph < Phases::kCount; ++ph) share[ph] = Phases::share(p, ph, gridDim.x, blockIdx.x);
    md_gemv_params conv = this->conv_view(0, p.d_inner);
    const auto same = [](int64_t, float v) { return v; };
    this->prefetch_l2(p.layers, 0, p.n_layer * static_cast<int64_t>(sizeof(md_mamba1_layer)));
    this->stamp(p.n_layer, 0);
    for (int64_t l = 0; l < p.n_layer; ++l) {
      const md_mamba1_layer L = p.layers[l];
      this->prefetch_layer(share[kIn], share[kOut], L, conv);
      this->norm(static_cast<const T*>(L.norm_w), l == 0);
      this->stamp(l, 0);
      this->products(share[kIn], p.d_model);
      this->in_proj_finish(share[kIn], L, conv);
      this->stamp(l, 1);
      this->barrier();
      this->stamp(l, 2);
      this->load_x(static_cast<const T*>(p.xz), p.d_inner);
      this->products(share[kX], p.d_inner);
      this->finish(share[kX], nullptr, p.xdbl, same);
      step_inputs(L, share[kDt]);
      this->stamp(l, 3);
      this->barrier();
      this->stamp(l, 4);
      step(L, share[kDt]);
      this->stamp(l, 5);
      this->barrier();
      this->stamp(l, 6);
      this->load_x(static_cast<const T*>(p.y), p.d_inner);
      this->products(share[kOut], p.d_inner);
      this->finish(share[kOut], L.out_b, p.hidden, same);
      this->stamp(l, 7);
      if (l + 1 < p.n_layer) this->barrier();
    }
    this->write_residual();
  }
};
#endif  // MD_BULK_DEVICE

struct Mamba1 : Model<md_mamba1_decode_params, md::Phases> {
#if MD_BULK_DEVICE
  template <typename T, typename S>
  using Consumer = md::Consumer<T, S>;
#endif
  // Shared memory beyond decode_persistent.cuh's: the step's dt_low, B, C (floats). (The partial sums' rows count
  // the dt phase's too, which has none: its d_inner rows are never more than in_proj's 2 d_inner.)
  __host__ __device__ static Layout layout(const Params& p, int slots, int blocks) {
    return layout_of(slots, p.d_model, most_rows<Phases>(p, blocks), 4 * (padded_rank(p) + 2 * kState));
  }
  static const char* problem(const Params& p) {
    if (p.xdbl == nullptr) return "missing pointer";
    if (p.dstate < 1 || p.dstate > kState) return "dstate must be 1..16";
    if (p.dt_rank < 1 || p.dt_rank > kMaxRank) return "dt_rank must be 1..1024";
    return nullptr;
  }
  // The step holds the inputs of kStepIters channels a half-warp, and waits on all of its slots before it releases
  // any (they must fit in the ring at once).
  static const char* device_problem(const Params& p, int blocks, int slots) {
    const Share step = Phases::share(p, kDt, blocks, 0);
    if (step.rows > 16 * kStepIters) return "more than 64 channels a multiprocessor (d_inner too large for this GPU)";
    if (step.slots > slots) return "a multiprocessor's dt_proj rows do not fit in the ring (dt_rank too large)";
    return nullptr;
  }
};

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_mamba1_decode(const md_mamba1_decode_params* p, cudaStream_t stream) {
  return md::persistent::check_and_launch<md::Mamba1>(p, "mamba1_decode", stream);
}
