// gemv_epilogue.cuh -- the causal-conv epilogue shared by the decode projections (gemv.cu, gemm_tc.cu).
#pragma once

#include "common.cuh"
#include "gemv.h"

namespace md {

// Output v of row n = conv_lo + c for batch row b, as the new input of the depthwise causal conv1d step of
// channel c (gemv.h): returns the conv output (SiLU'd if conv_silu) and shifts v into the conv state.
template <typename T>
__device__ __forceinline__ float conv_epilogue(const md_gemv_params& p, int64_t b, int64_t c, float v) {
  const float xin = to_f(from_f<T>(v));  // the GEMV output in the model dtype, as the reference
  const int W = static_cast<int>(p.conv_width);
  const int64_t so = state_row(p.state_rows, b) * p.conv_state_batch_stride + c * p.conv_state_dim_stride;
  float win[MD_MAX_CONV_WIDTH];
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH; ++i) {
    if (i < W - 1) win[i] = to_f(from_f<T>(load_any(p.conv_state, p.conv_state_dtype, so + i * p.conv_state_width_stride)));
    else if (i == W - 1) win[i] = xin;
    else win[i] = 0.f;
  }
  const T* cw = static_cast<const T*>(p.conv_w) + c * W;
  float acc = p.conv_b ? to_f(static_cast<const T*>(p.conv_b)[c]) : 0.f;
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH; ++i) {
    if (i < W) acc = fmaf(to_f(cw[i]), win[i], acc);
  }
#pragma unroll
  for (int i = 0; i < MD_MAX_CONV_WIDTH - 1; ++i) {
    if (i < W - 1) store_any(p.conv_state, p.conv_state_dtype, so + i * p.conv_state_width_stride, win[i + 1]);
  }
  return p.conv_silu ? silu(acc) : acc;
}

}  // namespace md
