// attention.cu -- a hybrid's decode attention over per-slot KV caches (gemv.h, md_attention_decode_params):
// rotary on the new q and k, the new k and v written into the cache, then softmax(q K^T) V over the slot's
// positions. One block per (row, kv head); its warps take every kWarps-th position with an online softmax
// each (lane l holds head channels l, l + 32, ...), and the block merges the warps' partial sums at the end.
#include <cstdint>

#include "common.cuh"
#include "gemv.h"

namespace md {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxGroup = 8;       // query heads per kv head
constexpr int kMaxGroupDims = 1024;  // group * head_dim: bounds the shared memory (below 48 KB)

// Channel d of one head (x: its head_dim values) after the rotary embedding at angle index pos.
template <typename T>
__device__ __forceinline__ float rotated(const T* x, int d, int rotary_dim, const float* inv_freq, float pos) {
  const float v = to_f(x[d]);
  if (d >= rotary_dim) return v;
  const int half = rotary_dim / 2;
  const int i = d < half ? d : d - half;
  const float angle = pos * inv_freq[i];
  const float c = cosf(angle), s = sinf(angle);
  return d < half ? v * c - to_f(x[d + half]) * s : v * c + to_f(x[d - half]) * s;
}

// Shared memory: q[group][head_dim], then per warp m[group], l[group], acc[group][head_dim].
inline size_t smem_bytes(int group, int head_dim) {
  return sizeof(float) * (group * head_dim + kWarps * group * (2 + head_dim));
}

// The new token's rotated q (into shared memory, rounded to T as rotary_ref returns it) and its k, v written
// into the cache at pos.
template <typename T>
__device__ void stage_new_token(const md_attention_decode_params& p, int64_t b, int hk, int group, int64_t pos,
                                T* key, T* value, float* q_s) {
  const int D = static_cast<int>(p.head_dim);
  const float fpos = static_cast<float>(pos);
  const T* q = static_cast<const T*>(p.q) + b * p.q_row_stride + static_cast<int64_t>(hk) * group * D;
  for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
    const int h = i / D, d = i % D;
    q_s[i] = to_f(from_f<T>(rotated(q + h * D, d, static_cast<int>(p.rotary_dim), p.inv_freq, fpos)));
  }
  if (pos >= p.max_seq_len) return;
  const T* k = static_cast<const T*>(p.k) + b * p.k_row_stride + static_cast<int64_t>(hk) * D;
  const T* v = static_cast<const T*>(p.v) + b * p.v_row_stride + static_cast<int64_t>(hk) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    key[pos * p.cache_pos_stride + d] = from_f<T>(rotated(k, d, static_cast<int>(p.rotary_dim), p.inv_freq, fpos));
    value[pos * p.cache_pos_stride + d] = v[d];
  }
}

// DPL: head channels per lane (head_dim <= 32 * DPL).
template <typename T, int DPL>
__global__ void __launch_bounds__(kWarps * 32) attention_decode_kernel(const md_attention_decode_params p) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.x;
  const int hk = blockIdx.y, group = static_cast<int>(p.heads / p.heads_kv), D = static_cast<int>(p.head_dim);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  pdl_release();
  pdl_wait();
  const int64_t slot = state_row(p.state_rows, b);
  const int64_t pos = p.length[slot];
  const int64_t last = pos < p.max_seq_len ? pos : p.max_seq_len - 1;
  const int64_t cache_offset = slot * p.cache_slot_stride + static_cast<int64_t>(hk) * p.cache_head_stride;
  T* key = static_cast<T*>(p.key) + cache_offset;
  T* value = static_cast<T*>(p.value) + cache_offset;
  float* q_s = smem;
  float* m_s = q_s + group * D;
  float* l_s = m_s + kWarps * group;
  float* acc_s = l_s + kWarps * group;
  stage_new_token<T>(p, b, hk, group, pos, key, value, q_s);
  __syncthreads();  // the block's cache writes and q_s are visible to all its threads

  float q[kMaxGroup][DPL], acc[kMaxGroup][DPL], m[kMaxGroup], l[kMaxGroup];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const int d = lane + 32 * j;
      q[h][j] = h < group && d < D ? q_s[h * D + d] : 0.f;
      acc[h][j] = 0.f;
    }
  }
  const float scale = static_cast<float>(p.scale);
  for (int64_t t = warp; t <= last; t += kWarps) {
    float kt[DPL], vt[DPL];
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const int d = lane + 32 * j;
      kt[j] = d < D ? to_f(key[t * p.cache_pos_stride + d]) : 0.f;
      vt[j] = d < D ? to_f(value[t * p.cache_pos_stride + d]) : 0.f;
    }
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h >= group) break;  // uniform across the block
      float dot = 0.f;
#pragma unroll
      for (int j = 0; j < DPL; ++j) dot += q[h][j] * kt[j];
      const float score = group_sum<32>(dot) * scale;
      const float m_new = fmaxf(m[h], score);
      const float keep = expf(m[h] - m_new), weight = expf(score - m_new);
      l[h] = l[h] * keep + weight;
#pragma unroll
      for (int j = 0; j < DPL; ++j) acc[h][j] = acc[h][j] * keep + weight * vt[j];
      m[h] = m_new;
    }
  }
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h >= group) break;
    if (lane == 0) {
      m_s[warp * group + h] = m[h];
      l_s[warp * group + h] = l[h];
    }
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const int d = lane + 32 * j;
      if (d < D) acc_s[(warp * group + h) * D + d] = acc[h][j];
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out) + b * p.out_row_stride + static_cast<int64_t>(hk) * group * D;
  for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
    const int h = i / D, d = i % D;
    float top = -INFINITY;
    for (int w = 0; w < kWarps; ++w) top = fmaxf(top, m_s[w * group + h]);
    float total = 0.f, sum = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float f = expf(m_s[w * group + h] - top);  // 0 for a warp that saw no position
      total += l_s[w * group + h] * f;
      sum += acc_s[(w * group + h) * D + d] * f;
    }
    out[i] = from_f<T>(sum / total);
  }
}

template <typename T>
cudaError_t launch_typed(const md_attention_decode_params& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(p.heads_kv));
  const int group = static_cast<int>(p.heads / p.heads_kv), D = static_cast<int>(p.head_dim);
  const size_t smem = smem_bytes(group, D);
  if (D <= 32) return launch_pdl(attention_decode_kernel<T, 1>, grid, kWarps * 32, smem, stream, p);
  if (D <= 64) return launch_pdl(attention_decode_kernel<T, 2>, grid, kWarps * 32, smem, stream, p);
  if (D <= 128) return launch_pdl(attention_decode_kernel<T, 4>, grid, kWarps * 32, smem, stream, p);
  return launch_pdl(attention_decode_kernel<T, 8>, grid, kWarps * 32, smem, stream, p);
}

}  // namespace
}  // namespace md

extern "C" cudaError_t md_launch_attention_decode(const md_attention_decode_params* p, cudaStream_t stream) {
  MD_CHECK(p != nullptr, "attention_decode: params is NULL");
  MD_CHECK(p->batch >= 0 && p->batch < (int64_t{1} << 31), "attention_decode: batch must be in 0..2^31-1");
  if (p->batch == 0) return cudaSuccess;
  MD_CHECK(p->heads_kv >= 1 && p->heads_kv <= 65535 && p->heads % p->heads_kv == 0,
           "attention_decode: heads must be a multiple of heads_kv (1..65535)");
  const int64_t group = p->heads / p->heads_kv;
  MD_CHECK(p->head_dim >= 1 && p->head_dim <= 256, "attention_decode: head_dim must be in 1..256");
  MD_CHECK(group <= md::kMaxGroup && group * p->head_dim <= md::kMaxGroupDims,
           "attention_decode: heads / heads_kv must be <= 8 and times head_dim <= 1024");
  MD_CHECK(p->rotary_dim >= 0 && p->rotary_dim <= p->head_dim && p->rotary_dim % 2 == 0,
           "attention_decode: rotary_dim must be even and <= head_dim");
  MD_CHECK(p->max_seq_len >= 1, "attention_decode: max_seq_len must be >= 1");
  MD_CHECK(p->q && p->k && p->v && p->key && p->value && p->length && p->out && (p->rotary_dim == 0 || p->inv_freq),
           "attention_decode: missing pointer");
  MD_CHECK(md::valid_dtype(p->dtype), "attention_decode: unknown dtype");
  return MD_DISPATCH_DTYPE(p->dtype, T, [&] { return md::launch_typed<T>(*p, stream); });
}
