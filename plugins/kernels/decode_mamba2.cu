// decode_mamba2.cu -- md_launch_mamba2_decode (gemv.h): a Mamba2 model's layers for one token at batch 1 in one
// cooperative launch (decode_persistent.cuh: the ring, the producer, the shared consumer steps and barriers;
// decode_launch.cuh: the checks and the launch).
//
// The streamed matrices of a block, in order: its rows of in_proj, its rows of out_proj. A layer's phases, each
// but the last layer's out_proj ended by a grid barrier:
//   norm        every block: residual += hidden (kept in registers), rmsnorm(residual) * w -> x
//   in_proj     its rows (+ bias), the conv update on xBC's rows -> xz [z | x B C | dt]            | barrier
//   step        its rows (head, p) of the state: mamba2_step_kernel's update -> y                 | barrier
//   gated norm  every block: rmsnorm(y * silu(z)) * w per norm group -> x (row_norm_kernel's)
//   out_proj    its rows (+ bias) -> hidden                                                      | barrier
// A block's states, A, D and dt bias are prefetched into the L2 before the barrier that precedes the step.
#include <cstdint>

#include "common.cuh"
#include "decode_launch.cuh"
#include "decode_persistent.cuh"
#include "gemv.h"

static_assert(sizeof(md_mamba2_layer) == 13 * 8, "md_mamba2_layer: 13 pointers (mamba_deploy/native/persistent.py)");

namespace md {
namespace {

using namespace persistent;

constexpr int kMaxLaneStates = 4;  // dstate / 32 states a lane (dstate <= 128)
constexpr int kPair = 2;           // state rows a warp updates together
constexpr int kGatedGroups = kMaxK / (8 * kConsumers);  // the gated norm's groups of 8 elements a thread

enum Phase { kIn = 0, kOut = 1 };

__host__ __device__ inline int64_t in_rows(const md_mamba2_decode_params& p) {
  return 2 * p.d_inner + 2 * p.ngroups * p.dstate + p.nheads;
}

struct Phases {
  static constexpr int kCount = 2;
  __host__ __device__ static Share share(const md_mamba2_decode_params& p, int phase, int blocks, int b) {
    const int64_t e = elem_bytes(p.dtype);
    return phase == kIn ? share_of(in_rows(p), p.d_model * e, blocks, b)
                        : share_of(p.d_model, p.d_inner * e, blocks, b);
  }
  __device__ static const void* base(const md_mamba2_layer& L, int phase) { return phase == kIn ? L.in_w : L.out_w; }
};

// The block's rows (head, p) of the state (no streamed matrix: row bytes unused).
__host__ __device__ inline Share state_share(const md_mamba2_decode_params& p, int blocks, int b) {
  return share_of(p.d_inner, 16, blocks, b);
}


#if MD_BULK_DEVICE
template <typename T, typename S>
struct Consumer : Stack<T, md_mamba2_decode_params> {
  using Base = Stack<T, md_mamba2_decode_params>;
  using Base::Base;
  using Base::p;
  using Base::lay;
  using Base::smem;

  // The L2 prefetch of what the step reads that no kernel writes in this launch (the block's states, A, D, dt
  // bias), issued before the barrier that precedes the step (in registers they would spill): warp w's rows
  // row0 + w + kConsumerWarps it of the block.
  __device__ __forceinline__ void step_prefetch(const md_mamba2_layer& L, const Share& s) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t srow = state_row(p.state_rows, 0), lines = (p.dstate * static_cast<int64_t>(sizeof(S)) + 127) / 128;
    for (int r = warp; r < s.rows; r += kConsumerWarps) {
      const int64_t row = s.row0 + r, h = row / p.headdim;
      const S* st = static_cast<const S*>(L.ssm_state) + srow * p.ssm_state_slot_stride + row * p.dstate;
      if (lane < lines) prefetch_line(st + lane * (128 / sizeof(S)));
      const float* scalar = lane == lines ? L.A + h : lane == lines + 1 ? L.D + h : L.dt_bias + h;
      if (lane >= lines && lane < lines + 3) prefetch_line(scalar);
    }
  }

  // mamba2_step_kernel at batch 1 (a warp a row): dt = clamp(softplus(dt + bias)), h = h exp(dt A) + dt x B,
  // y = C . h + D x.
  __device__ __forceinline__ void step(const md_mamba2_layer& L, const Share& s) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, npl = static_cast<int>(p.dstate / 32);
    const int64_t srow = state_row(p.state_rows, 0), d = p.d_inner, gn = p.ngroups * p.dstate;
    const T* xz = static_cast<const T*>(p.xz);
    const T* xbc = xz + d;  // [x | B | C] after the conv
    float* bc = reinterpret_cast<float*>(smem + lay.extra);  // every group's B, then C
    for (int i = threadIdx.x; i < 2 * gn; i += kConsumers) bc[i] = load_coherent(xbc + d + i);
    consumers_sync();
    // kPair rows a warp at a time: their loads in flight together (one L2 round trip), then their updates.
    for (int r0 = warp; r0 < s.rows; r0 += kPair * kConsumerWarps) {
      float A[kPair], Dh[kPair], dt[kPair], x[kPair], hs[kPair][kMaxLaneStates];
      int64_t row[kPair];
#pragma unroll
      for (int k = 0; k < kPair; ++k) {
        const bool ok = r0 + k * kConsumerWarps < s.rows;  // else row r0 again, stored twice with the same values
        row[k] = s.row0 + (ok ? r0 + k * kConsumerWarps : r0);
        const int64_t h = row[k] / p.headdim;
        A[k] = L.A[h];
        Dh[k] = L.D[h];
        dt[k] = load_coherent(xz + d + d + 2 * gn + h) + L.dt_bias[h];
        x[k] = load_coherent(xbc + row[k]);
        const S* st = static_cast<const S*>(L.ssm_state) + srow * p.ssm_state_slot_stride + row[k] * p.dstate +
                      lane * npl;
#pragma unroll
        for (int j = 0; j < kMaxLaneStates; ++j) hs[k][j] = j < npl ? to_f(st[j]) : 0.f;
      }
#pragma unroll
      for (int k = 0; k < kPair; ++k) {
        const int64_t h = row[k] / p.headdim, g = h / (p.nheads / p.ngroups);
        const float* Bv = bc + g * p.dstate + lane * npl;
        const float* Cv = Bv + gn;
        float v = softplus_exact(dt[k]);
        v = fminf(fmaxf(v, static_cast<float>(p.dt_min)), static_cast<float>(p.dt_max));
        const float dA = expf(v * A[k]);
        const float dtx = v * x[k];
        float y = 0.f;
#pragma unroll
        for (int j = 0; j < kMaxLaneStates; ++j) {
          if (j < npl) {
            hs[k][j] = fmaf(hs[k][j], dA, dtx * Bv[j]);
            y = fmaf(hs[k][j], Cv[j], y);
          }
        }
        S* st = static_cast<S*>(L.ssm_state) + srow * p.ssm_state_slot_stride + row[k] * p.dstate + lane * npl;
#pragma unroll
        for (int j = 0; j < kMaxLaneStates; ++j) {
          if (j < npl) st[j] = from_f<S>(hs[k][j]);
        }
        y = group_sum<32>(y);
        if (lane == 0) static_cast<T*>(p.y)[row[k]] = from_f<T>(fmaf(Dh[k], x[k], y));
      }
    }
  }

  // x <- rmsnorm(y * silu(z)) * w over each norm group, rounded to T (row_norm_kernel with gate). v = y * silu(z)
  // waits in xs for the sums (in registers it would spill).
  __device__ __forceinline__ void gated_norm(const T* weight) {
    float* xs = reinterpret_cast<float*>(smem + lay.xs);
    const T* y = static_cast<const T*>(p.y);
    const T* z = static_cast<const T*>(p.xz);
    const bool whole = p.norm_group == p.d_inner;
    float ss[kGatedGroups];
#pragma unroll
    for (int g = 0; g < kGatedGroups; ++g) {
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      ss[g] = 0.f;
      if (e >= p.d_inner) continue;
      float v[8], o[8];
      load8_cg(y + e, v);
      load8_cg(z + e, o);
      norm_combine8(v, o, true);
      ss[g] = sum_squares8(v, 0.f);
#pragma unroll
      for (int j = 0; j < 8; ++j) xs[e + j] = v[j];
    }
    float* scratch = reinterpret_cast<float*>(smem + lay.scratch);
    const float whole_inv = whole ? rms_inverse(consumers_levels_sum(ss, scratch), p.d_inner, p.norm_eps) : 0.f;
#pragma unroll
    for (int g = 0; g < kGatedGroups; ++g) {
      if (static_cast<int64_t>(kConsumers) * g * 8 >= p.d_inner) break;  // uniform: every thread or none
      // a group of at most 2,048 elements: norm_group / 256 whole warps of this level (row_norm_kernel's block)
      const int warps = static_cast<int>(p.norm_group / 256), first = (threadIdx.x >> 5) / warps * warps;
      const float inv = whole ? whole_inv : rms_inverse(consumers_sum(ss[g], scratch, first, warps), p.norm_group,
                                                        p.norm_eps);
      const int64_t e = (threadIdx.x + static_cast<int64_t>(kConsumers) * g) * 8;
      if (e >= p.d_inner) continue;
      float v[8], w[8];
      load8(weight + e, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = xs[e + j];
      norm_scale8(v, inv, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) xs[e + j] = to_f(from_f<T>(v[j]));
    }
    consumers_sync();
    this->load_x_shared(p.d_inner);
  }

  __device__ __forceinline__ void run() {
    const Share in = Phases::share(p, kIn, gridDim.x, blockIdx.x), out = Phases::share(p, kOut, gridDim.x, blockIdx.x);
    const Share state = state_share(p, gridDim.x, blockIdx.x);
    md_gemv_params conv = this->conv_view(p.d_inner, p.d_inner + 2 * p.ngroups * p.dstate);  // xBC's rows
    this->prefetch_l2(p.layers, 0, p.n_layer * static_cast<int64_t>(sizeof(md_mamba2_layer)));
    this->stamp(p.n_layer, 0);
    for (int64_t l = 0; l < p.n_layer; ++l) {
      const md_mamba2_layer L = p.layers[l];
      if constexpr (sizeof(T) == 2) this->prefetch_layer(in, out, L, conv);  // float32 weights: it spills
      this->norm(static_cast<const T*>(L.norm_w), l == 0);
      this->stamp(l, 0);
      this->products(in, p.d_model);
      this->in_proj_finish(in, L, conv);
      step_prefetch(L, state);
      this->prefetch_l2(L.gnorm_w, 0, p.d_inner * elem_bytes(p.dtype));  // every block's gated norm reads it all
      this->stamp(l, 1);
      this->barrier();
      this->stamp(l, 2);
      step(L, state);
      this->stamp(l, 3);
      this->barrier();
      this->stamp(l, 4);
      gated_norm(static_cast<const T*>(L.gnorm_w));
      this->stamp(l, 5);
      this->products(out, p.d_inner);
      this->finish(out, L.out_b, p.hidden, [](int64_t, float v) { return v; });
      this->stamp(l, 6);
      if (l + 1 < p.n_layer) this->barrier();
      this->stamp(l, 7);
    }
    this->write_residual();
  }
};
#endif  // MD_BULK_DEVICE

struct Mamba2 : Model<md_mamba2_decode_params, md::Phases> {
#if MD_BULK_DEVICE
  template <typename T, typename S>
  using Consumer = md::Consumer<T, S>;
#endif
  // The normed x is in_proj's (d_model) or out_proj's (d_inner) input; the model's own bytes: the step's B and C.
  __host__ __device__ static Layout layout(const Params& p, int slots, int blocks) {
    return layout_of(slots, p.d_model > p.d_inner ? p.d_model : p.d_inner, most_rows<Phases>(p, blocks),
                     4 * 2 * p.ngroups * p.dstate);
  }
  static const char* problem(const Params& p) {
    if (p.dstate != 32 && p.dstate != 64 && p.dstate != 128) return "dstate must be 32, 64 or 128";
    if (p.nheads < 1 || p.headdim < 1 || p.nheads * p.headdim != p.d_inner || p.ngroups < 1 ||
        p.nheads % p.ngroups != 0)
      return "nheads x headdim must be d_inner, ngroups divide nheads";
    if (p.norm_group != p.d_inner &&
        (p.norm_group < 256 || p.norm_group % 256 || 2048 % p.norm_group || p.d_inner % p.norm_group))
      return "norm_group must be d_inner, or 256, 512, 1024 or 2048 dividing it";
    return nullptr;
  }
  static const char* device_problem(const Params&, int, int) { return nullptr; }
};

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_mamba2_decode(const md_mamba2_decode_params* p, cudaStream_t stream) {
  return md::persistent::check_and_launch<md::Mamba2>(p, "mamba2_decode", stream);
}
