// causal_conv1d.cu -- depthwise causal conv1d from a past state (+ SiLU), and its 1-token update.
// Reference: mamba_deploy/ops/causal_conv1d.py (causal_conv1d_ref, causal_conv1d_update_ref).
//
// One thread computes kTPT consecutive outputs of one (batch, channel): it keeps the conv window
// (width - 1 + kTPT inputs) and the weights in registers. Threads are numbered channel-fastest when
// the channel axis is contiguous (x from a (batch, seqlen, dim) GEMM output), else time-fastest,
// so that a warp's loads are coalesced in both layouts. The thread of chunk 0 is the only one that
// reads state_in and the only one that writes state_out, so the two may alias.
#include "common.cuh"
#include "vec.cuh"

namespace md {
namespace {

constexpr int kTPT = 8;  // outputs per thread
constexpr int kW = MD_MAX_CONV_WIDTH;
constexpr int kThreads = 256;
// The vec kernel's thread: kVecSteps steps of kVecChans channels (8-byte loads), 64 registers, 8 blocks of 128 a
// multiprocessor (77-80 and 6 blocks while it held its weights as floats: on an H100, benchmarks/norms_alone.py's
// 2,048 x 4,352, 17.0 -> 16.5 us contiguous, 17.1 -> 16.8 strided). Measured on the H200
// (benchmarks/conv_scan.py, mamba-1.4b's layer, us): 8 channels x 8 steps
// (149 registers, 3 blocks) 74.6 at 64 x 100 and 22.9 at 1 x 2,048; 8 x 8 with the state_out rows read at the
// end (128 registers) 62.4 / 17.5; 4 x 8 50.9 / 15.8; 4 x 4 53.9 / 17.3; 4 x 16 56.6 / 16.8; 4 x 8 in blocks of
// 256 55.0 / 16.6.
constexpr int kVecChans = 4;
constexpr int kVecSteps = 8;
constexpr int kVecThreads = 128;
constexpr int kVecMinBlocks = 8;  // 64 registers: 1,024 threads a multiprocessor (78 and 768 before)

// full[q] for q in [0, width - 1 + seqlen): the state columns, then x; as x's dtype (like the ref).
template <typename T>
__device__ __forceinline__ float full_at(const md_causal_conv1d_params& p, int64_t b, int64_t c, int64_t q) {
  const int64_t pos = q - (p.width - 1);
  if (pos >= 0) {
    return to_f(static_cast<const T*>(p.x)[b * p.x_batch_stride + c * p.x_dim_stride + pos * p.x_seq_stride]);
  }
  if (p.state_in == nullptr) return 0.f;
  const float s = load_any(p.state_in, p.state_dtype, state_row(p.state_rows, b) * p.state_in_batch_stride +
                           c * p.state_in_dim_stride + q * p.state_in_width_stride);
  return to_f(from_f<T>(s));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_kernel(const md_causal_conv1d_params p, int channel_fastest) {
  const int64_t nchunks = (p.seqlen + kTPT - 1) / kTPT;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.batch * p.dim * nchunks) return;
  int64_t b, c, k;
  if (channel_fastest) {
    c = idx % p.dim;
    k = (idx / p.dim) % nchunks;
    b = idx / (p.dim * nchunks);
  } else {
    k = idx % nchunks;
    c = (idx / nchunks) % p.dim;
    b = idx / (nchunks * p.dim);
  }
  const int width = static_cast<int>(p.width);
  const int64_t t0 = k * kTPT;
  float w[kW];
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    w[i] = i < width ? load_any(p.weight, p.weight_dtype, c * p.weight_dim_stride + i * p.weight_width_stride) : 0.f;
  }
  const float bias = p.bias ? load_any(p.bias, p.weight_dtype, c * p.bias_stride) : 0.f;
  // win[j] = full[t0 + j], the inputs of outputs t0 .. t0 + kTPT - 1
  float win[kW - 1 + kTPT];
#pragma unroll
  for (int j = 0; j < kW - 1 + kTPT; ++j) {
    const int64_t q = t0 + j;
    win[j] = (j < width - 1 + kTPT && q < p.seqlen + width - 1) ? full_at<T>(p, b, c, q) : 0.f;
  }
  float new_state[kW - 1];
  if (k == 0 && p.state_out != nullptr) {  // read everything state_out needs before writing it
#pragma unroll
    for (int j = 0; j < kW - 1; ++j) new_state[j] = j < width - 1 ? full_at<T>(p, b, c, p.seqlen + j) : 0.f;
  }
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + c * p.y_dim_stride;
#pragma unroll
  for (int j = 0; j < kTPT; ++j) {
    float acc = bias;
#pragma unroll
    for (int i = 0; i < kW; ++i) acc += i < width ? w[i] * win[j + i] : 0.f;
    if (p.silu) acc = silu(acc);
    if (t0 + j < p.seqlen) y[(t0 + j) * p.y_seq_stride] = from_f<T>(acc);
  }
  if (k == 0 && p.state_out != nullptr) {
#pragma unroll
    for (int j = 0; j < kW - 1; ++j) {
      if (j < width - 1) {
        store_any(p.state_out, p.state_dtype,
                  state_row(p.state_rows, b) * p.state_out_batch_stride + c * p.state_out_dim_stride +
                      j * p.state_out_width_stride,
                  new_state[j]);
      }
    }
  }
}

// Channel-last prefill (x and y with a unit channel stride, as from a (batch, seqlen, dim) GEMM output), width
// 4, dim % 8 == 0, 16-byte aligned rows: a thread computes kVecSteps steps of kVecChans consecutive channels with
// vector loads and stores; a warp covers 32 x kVecChans consecutive channels of a row (the generic kernel's warp
// reads 64 bytes a row and re-reads each input twice). All of a thread's input rows and weights are loaded before
// the first product, so their loads are in flight together: loaded one row a step, a short prompt's conv took
// ~25 us a layer of DRAM round trips. Same arithmetic, in the same order, as causal_conv1d_kernel.

// kVecChans (4) 16-bit elements: 8 bytes, held packed until used (vec.cuh's unpack4 / store4).
using VecRaw = uint2;
static_assert(kVecChans == 4, "VecRaw holds 4 elements");

template <typename T>
__device__ __forceinline__ VecRaw load_vec(const T* ptr) { return __ldg(reinterpret_cast<const VecRaw*>(ptr)); }

template <typename T>
__device__ __forceinline__ void full_row_vec(const md_causal_conv1d_params& p, int64_t b, int64_t c0, int64_t q,
                                             float* f) {
  constexpr int W = 4;
  if (q >= W - 1) {
    unpack4<T>(load_vec<T>(static_cast<const T*>(p.x) + b * p.x_batch_stride + (q - (W - 1)) * p.x_seq_stride + c0),
               f);
    return;
  }
#pragma unroll
  for (int v = 0; v < kVecChans; ++v) f[v] = full_at<T>(p, b, c0 + v, q);
}

// The W - 1 state columns of the thread's channels, as x's dtype (like full_at), state dtype S: the loads are
// issued before any conversion (through load_any, each waited for its load: ~16 us of round trips in chunk 0).
template <typename T, typename S>
__device__ __forceinline__ void state_cols_vec(const md_causal_conv1d_params& p, int64_t b, int64_t c0,
                                               float (*win)[kVecChans]) {
  constexpr int W = 4;
  const S* st = static_cast<const S*>(p.state_in) + state_row(p.state_rows, b) * p.state_in_batch_stride;
  S raw[W - 1][kVecChans];
#pragma unroll
  for (int j = 0; j < W - 1; ++j) {
#pragma unroll
    for (int v = 0; v < kVecChans; ++v) raw[j][v] = st[(c0 + v) * p.state_in_dim_stride + j * p.state_in_width_stride];
  }
#pragma unroll
  for (int j = 0; j < W - 1; ++j) {
#pragma unroll
    for (int v = 0; v < kVecChans; ++v) win[j][v] = to_f(from_f<T>(to_f(raw[j][v])));
  }
}

// 4 floats holding values of T -> their 8 raw bytes (exact: unpack4 gives the same floats back).
template <typename T>
__device__ __forceinline__ VecRaw pack4(const float* f) {
  __align__(8) T v[kVecChans];
#pragma unroll
  for (int j = 0; j < kVecChans; ++j) v[j] = from_f<T>(f[j]);
  return *reinterpret_cast<const VecRaw*>(v);
}

// An empty asm that the compiler must assume changes the packed weights and bias: their conversions then stay
// inside each step instead of being hoisted out of the loop as 20 live floats.
__device__ __forceinline__ void keep_packed(uint4 (&w)[kVecChans / 2], VecRaw& bias) {
#pragma unroll
  for (int q = 0; q < kVecChans / 2; ++q) asm volatile("" : "+r"(w[q].x), "+r"(w[q].y), "+r"(w[q].z), "+r"(w[q].w));
  asm volatile("" : "+r"(bias.x), "+r"(bias.y));
}

template <typename T>
__global__ void __launch_bounds__(kVecThreads, kVecMinBlocks)
    causal_conv1d_vec_kernel(const md_causal_conv1d_params p) {
  constexpr int W = 4, V = kVecChans, kRows = W - 1 + kVecSteps;
  const int64_t groups = p.dim / V, nchunks = (p.seqlen + kVecSteps - 1) / kVecSteps;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kVecThreads + threadIdx.x;
  if (idx >= p.batch * nchunks * groups) return;
  const int64_t c0 = (idx % groups) * V, k = (idx / groups) % nchunks, b = idx / (groups * nchunks);
  const int64_t t0 = k * kVecSteps;
  // raw[j]: x at time t0 + j - (W - 1), zero outside [0, seqlen); in chunk 0 the state columns (rounded to T),
  // read first, while nothing else is live.
  VecRaw raw[kRows];
  if (k == 0) {
    float cols[W - 1][V];
    if (p.state_in != nullptr && p.state_dtype == MD_FLOAT32) {
      state_cols_vec<T, float>(p, b, c0, cols);
    } else if (p.state_in != nullptr && p.state_dtype == p.x_dtype) {
      state_cols_vec<T, T>(p, b, c0, cols);
    } else {
#pragma unroll
      for (int j = 0; j < W - 1; ++j) full_row_vec<T>(p, b, c0, j, cols[j]);  // zeros, or another state dtype
    }
#pragma unroll
    for (int j = 0; j < W - 1; ++j) raw[j] = pack4<T>(cols[j]);
  }
  const T* xb = static_cast<const T*>(p.x) + b * p.x_batch_stride + c0;
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    if (k == 0 && j < W - 1) continue;  // the state columns, above
    const int64_t pos = t0 + j - (W - 1);
    raw[j] = pos >= 0 && pos < p.seqlen ? load_vec<T>(xb + pos * p.x_seq_stride) : VecRaw{};
  }
  // the V channels' (dim, 4) weights: 8 V contiguous bytes, held as loaded (two 16-byte vectors) and converted at
  // each step: as floats they held the kernel at 78 registers, six blocks a multiprocessor. As 2-byte loads (a
  // warp's lanes 64 bytes apart) they cost more L1 wavefronts than the rows: the kernel ran at ~0.7 TB/s.
  uint4 w_raw[V / 2];
#pragma unroll
  for (int q = 0; q < V / 2; ++q) {
    w_raw[q] = __ldg(reinterpret_cast<const uint4*>(static_cast<const T*>(p.weight) + (c0 + 2 * q) * W));
  }
  VecRaw bias_raw = p.bias ? load_vec<T>(static_cast<const T*>(p.bias) + c0) : VecRaw{};
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + c0;
#pragma unroll
  for (int s = 0; s < kVecSteps; ++s) {
    float w[W][V], bias[V], win[W][V];
    keep_packed(w_raw, bias_raw);
#pragma unroll
    for (int q = 0; q < V / 2; ++q) {
      float f[8];  // channels c0 + 2q, c0 + 2q + 1, 4 taps each
      unpack(w_raw[q], f, T());
#pragma unroll
      for (int i = 0; i < W; ++i) {
        w[i][2 * q] = f[i];
        w[i][2 * q + 1] = f[W + i];
      }
    }
    unpack4<T>(bias_raw, bias);
#pragma unroll
    for (int i = 0; i < W; ++i) unpack4<T>(raw[s + i], win[i]);
    float out[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float acc = bias[v];
#pragma unroll
      for (int i = 0; i < W; ++i) acc += w[i][v] * win[i][v];
      out[v] = p.silu ? silu(acc) : acc;
    }
    if (t0 + s < p.seqlen) store4(y + (t0 + s) * p.y_seq_stride, out);
  }
  if (k == 0 && p.state_out != nullptr) {
    // Read here, not with the rows: kept live through the steps, they cost the kernel a block a multiprocessor.
    // Every read of state_in (which state_out may alias) is this thread's, and done above.
    float new_state[W - 1][V];
#pragma unroll
    for (int j = 0; j < W - 1; ++j) full_row_vec<T>(p, b, c0, p.seqlen + j, new_state[j]);
    const int64_t so = state_row(p.state_rows, b) * p.state_out_batch_stride;
#pragma unroll
    for (int j = 0; j < W - 1; ++j) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        store_any(p.state_out, p.state_dtype, so + (c0 + v) * p.state_out_dim_stride + j * p.state_out_width_stride,
                  new_state[j][v]);
      }
    }
  }
}

// Whether causal_conv1d_vec_kernel applies: see its comment. 16-bit dtypes only: with float32 outputs the
// compiler contracts the generic kernel's guarded products differently (measured: last-bit differences), and
// float32 prefill is not where the time goes.
bool vec_ok(const md_causal_conv1d_params& p) {
  const int64_t elems = 8;  // 16-bit elements in 16 bytes
  return p.x_dtype != MD_FLOAT32 && p.width == 4 && p.x_dim_stride == 1 && p.y_dim_stride == 1 && p.dim % 8 == 0 &&
         p.weight_dtype == p.x_dtype && p.weight_dim_stride == 4 && p.weight_width_stride == 1 &&
         is_aligned(p.weight) && (p.bias == nullptr || (p.bias_stride == 1 && is_aligned(p.bias))) &&
         p.x_batch_stride % elems == 0 && p.x_seq_stride % elems == 0 && p.y_batch_stride % elems == 0 &&
         p.y_seq_stride % elems == 0 && is_aligned(p.x) && is_aligned(p.y);
}

// seqlen 1 (the decode update): a thread per (batch, channel), channel fastest. The chunked kernel above
// would give each thread an 8-output window of which 7 are idle (measured 16 us a layer at batch 64, for
// ~4 MB of traffic). Same arithmetic, in the same order, as the chunked kernel.
template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_update_kernel(const md_causal_conv1d_params p) {
  pdl_release();
  pdl_wait();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.batch * p.dim) return;
  const int64_t c = idx % p.dim, b = idx / p.dim;
  const int width = static_cast<int>(p.width);
  float win[kW];  // full[0 .. width - 1]: the state columns, then x
#pragma unroll
  for (int i = 0; i < kW; ++i) win[i] = i < width ? full_at<T>(p, b, c, i) : 0.f;
  float acc = p.bias ? load_any(p.bias, p.weight_dtype, c * p.bias_stride) : 0.f;
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    const float w = i < width ? load_any(p.weight, p.weight_dtype, c * p.weight_dim_stride + i * p.weight_width_stride)
                              : 0.f;
    acc += i < width ? w * win[i] : 0.f;
  }
  if (p.silu) acc = silu(acc);
  static_cast<T*>(p.y)[b * p.y_batch_stride + c * p.y_dim_stride] = from_f<T>(acc);
  if (p.state_out == nullptr) return;
  const int64_t so = state_row(p.state_rows, b) * p.state_out_batch_stride + c * p.state_out_dim_stride;
#pragma unroll
  for (int j = 0; j < kW - 1; ++j) {
    if (j < width - 1) store_any(p.state_out, p.state_dtype, so + j * p.state_out_width_stride, win[j + 1]);
  }
}

// The decode update of width 4 in the engine's layout (unit channel strides for x and y, weight (dim, 4) and
// bias of x's dtype, state (rows, dim, 3) contiguous per channel, state_out == state_in): the same arithmetic
// as causal_conv1d_update_kernel with no run-time dtype, width or 64-bit division. Grid (ceil(dim / kThreads),
// batch), blocks of kThreads / CH: a thread takes CH consecutive channels; with CH = 4 (update4_vec_ok) its
// state is 3 aligned 4-element accesses, x, y and bias 1 and the weights 4, instead of one element each.
// N consecutive elements <-> floats: as 4-element vector accesses (vec.cuh) when VEC (aligned), else one by one.
template <bool VEC, int N, typename E>
__device__ __forceinline__ void load_n(const E* ptr, float* f) {
#pragma unroll
  for (int j = 0; j < (VEC ? N / 4 : N); ++j) {
    if constexpr (VEC) load4(ptr + 4 * j, f + 4 * j);
    else f[j] = to_f(ptr[j]);
  }
}
template <bool VEC, int N, typename E>
__device__ __forceinline__ void store_n(E* ptr, const float* f) {
#pragma unroll
  for (int j = 0; j < (VEC ? N / 4 : N); ++j) {
    if constexpr (VEC) store4(ptr + 4 * j, f + 4 * j);
    else ptr[j] = from_f<E>(f[j]);
  }
}

template <typename T, typename S, int CH>
__global__ void __launch_bounds__(kThreads / CH) causal_conv1d_update4_kernel(const md_causal_conv1d_params p) {
  constexpr bool kVec = CH == 4;
  pdl_release();
  const int c0 = blockIdx.x * kThreads + threadIdx.x * CH;
  const int64_t b = blockIdx.y;
  if (c0 >= p.dim) return;
  float w[CH * 4], acc[CH], win[CH * 4];
  load_n<kVec, CH * 4>(static_cast<const T*>(p.weight) + 4 * c0, w);
  if (p.bias) {
    load_n<kVec, CH>(static_cast<const T*>(p.bias) + c0, acc);
  } else {
#pragma unroll
    for (int j = 0; j < CH; ++j) acc[j] = 0.f;
  }
  pdl_wait();  // the weights are no kernel's output: loaded before the wait
  S* st = static_cast<S*>(p.state_out) + state_row(p.state_rows, b) * p.state_out_batch_stride + 3 * c0;
  float old[CH * 3], xs[CH];
  load_n<kVec, CH * 3>(st, old);
  load_n<kVec, CH>(static_cast<const T*>(p.x) + b * p.x_batch_stride + c0, xs);
  float y[CH], fresh[CH * 3];
#pragma unroll
  for (int j = 0; j < CH; ++j) {
#pragma unroll
    for (int i = 0; i < 3; ++i) win[4 * j + i] = to_f(from_f<T>(old[3 * j + i]));
    win[4 * j + 3] = xs[j];
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j] += w[4 * j + i] * win[4 * j + i];
    y[j] = p.silu ? silu(acc[j]) : acc[j];
#pragma unroll
    for (int i = 0; i < 3; ++i) fresh[3 * j + i] = win[4 * j + i + 1];
  }
  store_n<kVec, CH>(static_cast<T*>(p.y) + b * p.y_batch_stride + c0, y);
  store_n<kVec, CH * 3>(st, fresh);
}

bool update4_ok(const md_causal_conv1d_params& p) {
  const bool state_t = p.state_dtype == MD_FLOAT32 || p.state_dtype == p.x_dtype;
  return p.seqlen == 1 && p.width == 4 && p.x_dtype != MD_FLOAT32 && p.weight_dtype == p.x_dtype && state_t &&
         p.x_dim_stride == 1 && p.y_dim_stride == 1 && p.weight_dim_stride == 4 && p.weight_width_stride == 1 &&
         (p.bias == nullptr || p.bias_stride == 1) && p.state_in != nullptr && p.state_in == p.state_out &&
         p.state_in_dim_stride == 3 && p.state_in_width_stride == 1 && p.state_out_dim_stride == 3 &&
         p.state_out_width_stride == 1 && p.state_in_batch_stride == p.state_out_batch_stride &&
         p.dim < (int64_t{1} << 30) && p.batch <= 65535;
}

// update4_ok with 4 channels a thread: dim a multiple of 4, every 4-channel group's accesses aligned.
bool update4_vec_ok(const md_causal_conv1d_params& p) {
  const int64_t s_size = elem_bytes(p.state_dtype);
  return p.dim % 4 == 0 && p.x_batch_stride % 4 == 0 && p.y_batch_stride % 4 == 0 &&
         p.state_out_batch_stride % 4 == 0 && is_aligned(p.x, 8) && is_aligned(p.y, 8) && is_aligned(p.weight, 8) &&
         (p.bias == nullptr || is_aligned(p.bias, 8)) && is_aligned(p.state_out, static_cast<size_t>(4 * s_size));
}

template <typename T, int CH>
cudaError_t launch_update4_ch(const md_causal_conv1d_params& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.dim + kThreads - 1) / kThreads), static_cast<unsigned>(p.batch));
  return p.state_dtype == MD_FLOAT32
             ? launch_pdl(causal_conv1d_update4_kernel<T, float, CH>, grid, kThreads / CH, 0, stream, p)
             : launch_pdl(causal_conv1d_update4_kernel<T, T, CH>, grid, kThreads / CH, 0, stream, p);
}

template <typename T>
cudaError_t launch_update4(const md_causal_conv1d_params& p, cudaStream_t stream) {
  return update4_vec_ok(p) ? launch_update4_ch<T, 4>(p, stream) : launch_update4_ch<T, 1>(p, stream);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_causal_conv1d(const md_causal_conv1d_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "causal_conv1d: params is NULL");
  MD_CHECK(p->batch >= 0 && p->dim >= 0 && p->seqlen >= 0, "causal_conv1d: negative size");
  MD_CHECK(p->width >= 1 && p->width <= MD_MAX_CONV_WIDTH, "causal_conv1d: width must be in 1..8");
  MD_CHECK(p->x && p->y && p->weight, "causal_conv1d: x, y and weight are required");
  MD_CHECK(md::valid_dtype(p->weight_dtype) && md::valid_dtype(p->state_dtype), "causal_conv1d: bad dtype code");
  if (md::update4_ok(*p) && p->batch * p->dim > 0) {
    return p->x_dtype == MD_FLOAT16 ? md::launch_update4<__half>(*p, stream)
                                    : md::launch_update4<__nv_bfloat16>(*p, stream);
  }
  if (p->seqlen == 1 && p->batch * p->dim > 0) {
    const int64_t blocks = (p->batch * p->dim + md::kThreads - 1) / md::kThreads;
    MD_CHECK(blocks < (int64_t{1} << 31), "causal_conv1d: too large");
    return MD_DISPATCH_DTYPE(p->x_dtype, T, [&] {
      return md::launch_pdl(md::causal_conv1d_update_kernel<T>, static_cast<unsigned>(blocks), md::kThreads, 0, stream,
                            *p);
    });
  }
  if (md::vec_ok(*p)) {
    const int64_t vchunks = (p->seqlen + md::kVecSteps - 1) / md::kVecSteps;
    const int64_t vblocks = (p->batch * vchunks * (p->dim / md::kVecChans) + md::kVecThreads - 1) / md::kVecThreads;
    MD_CHECK(vblocks < (int64_t{1} << 31), "causal_conv1d: too large");
    const unsigned grid = static_cast<unsigned>(vblocks);
    if (p->x_dtype == MD_FLOAT16) md::causal_conv1d_vec_kernel<__half><<<grid, md::kVecThreads, 0, stream>>>(*p);
    else md::causal_conv1d_vec_kernel<__nv_bfloat16><<<grid, md::kVecThreads, 0, stream>>>(*p);  // vec_ok: 16-bit
    return cudaGetLastError();
  }
  const int64_t nchunks = (p->seqlen + md::kTPT - 1) / md::kTPT;
  const int64_t total = p->batch * p->dim * nchunks;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + md::kThreads - 1) / md::kThreads;
  MD_CHECK(blocks < (int64_t{1} << 31), "causal_conv1d: too large");
  const int channel_fastest = p->x_dim_stride == 1 ? 1 : 0;
  return MD_DISPATCH_DTYPE(p->x_dtype, T, [&] {
    md::causal_conv1d_kernel<T><<<static_cast<unsigned>(blocks), md::kThreads, 0, stream>>>(*p, channel_fastest);
    return cudaGetLastError();
  });
}
