// decode_launch.cuh -- the host side of the persistent decodes (decode_persistent.cuh): the ring's size, the
// checks both models share, the cooperative launch of a model's kernel for its dtypes.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

#include "decode_persistent.cuh"

namespace md {
namespace persistent {

// The ring's slots beside the rest of a layout (`rest`: layout_of(0, ...).total): as many as fit, at most
// kMaxSlots; 0 when fewer than kMinSlots fit.
inline int ring_slots(size_t rest, int smem_optin) {
  rest += 16 * kMaxSlots;  // the mbarriers
  if (static_cast<size_t>(smem_optin) < rest + static_cast<size_t>(kMinSlots) * kSlotBytes) return 0;
  const int64_t fit = (smem_optin - static_cast<int64_t>(rest)) / kSlotBytes;
  return static_cast<int>(fit < kMaxSlots ? fit : kMaxSlots);
}

// The launch: one block of kThreads a multiprocessor, `smem` bytes each, all resident at once (a cooperative
// launch), after the barrier count and this launch's failure word (sync words 0 and 1) are zeroed.
// MD_PERSISTENT_PLAIN_LAUNCH=1 (a measurement switch): a plain launch, one block a multiprocessor all the same while
// nothing else runs (a barrier that then waits in vain gives up after 2 s: sync words 1 and 2).
// The kernel's shared-memory limit is the device's opt-in maximum, never a launch's own size: engines of other
// shapes share the kernel, and lowering the limit after a graph captured a larger launch fails its replays.
template <typename P>
cudaError_t launch(void (*kernel)(P, int), const P& p, int blocks, int slots, size_t smem, int smem_optin,
                   cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin);
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  MD_CHECK(per_sm >= 1, "persistent decode: a block does not fit on a multiprocessor");
  err = cudaMemsetAsync(p.sync, 0, 2 * sizeof(int), stream);  // not word 2: failures of earlier launches
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
  const char* plain = std::getenv("MD_PERSISTENT_PLAIN_LAUNCH");
  config.numAttrs = plain != nullptr && plain[0] == '1' ? 0 : 1;
  return cudaLaunchKernelEx(&config, kernel, p, slots);
}

// The checks of the params fields both models have; nullptr when they pass.
template <typename P>
const char* common_problem(const P& p) {
  if (!(p.layers && p.hidden && p.residual && p.xz && p.y && p.sync)) return "missing pointer";
  if (!valid_dtype(p.dtype) || !valid_dtype(p.conv_state_dtype) ||
      (p.state_dtype != MD_FLOAT32 && p.state_dtype != p.dtype))
    return "bad dtype";
  const int64_t e = elem_bytes(p.dtype);
  if (p.n_layer < 1 || p.n_layer > 65536) return "bad n_layer";  // barrier counts: 4 n_layer x blocks < 2^31
  if (p.d_model < 8 || p.d_model % 8 || p.d_model > kMaxModel || p.d_model * e > kSlotBytes)
    return "d_model must be a multiple of 8, <= 4096, rows <= 16 KB";
  if (p.d_inner < 8 || p.d_inner % 8 || p.d_inner * e > kSlotBytes || p.d_inner > kMaxK)
    return "d_inner must be a multiple of 8 with rows <= 16 KB";
  if (p.conv_width < 2 || p.conv_width > MD_MAX_CONV_WIDTH) return "conv_width must be 2..8";
  if (p.conv_state_slot_stride < 0 || p.ssm_state_slot_stride < 0) return "bad state strides";
  if (!is_aligned(p.hidden) || !is_aligned(p.residual) || !is_aligned(p.xz) || !is_aligned(p.y))
    return "hidden, residual, xz and y must be 16-byte aligned";
  if (!is_aligned(p.sync, 8)) return "sync must be 8-byte aligned";
  return nullptr;
}

// Blocks (the multiprocessors) and the opt-in shared memory of the device; nullptr when it runs the persistent
// decode.
inline const char* device_unfit(int* blocks, int* smem_optin) {
  *blocks = device_attribute(cudaDevAttrMultiProcessorCount, 0);
  *smem_optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, 0) < 9 ||
      device_attribute(cudaDevAttrCooperativeLaunch, 0) != 1 || *blocks <= 0)
    return "needs compute capability 9.0+ and cooperative launch";
  return nullptr;
}

// md_launch_mamba*_decode: the common checks, Model::problem(p) (its own fields), the device and the ring,
// Model::device_problem(p, blocks, slots), then the launch for the dtypes. A failed check: cudaErrorInvalidValue
// with "<who>: <problem>".
template <typename Model>
cudaError_t check_and_launch(const typename Model::Params* p, const char* who, cudaStream_t stream) {
  static thread_local std::string message;
  const auto fail = [&](const char* problem) {
    message = std::string(who) + ": " + problem;
    set_check_message(message.c_str());
    return cudaErrorInvalidValue;
  };
  if (p == nullptr) return fail("null params");
  if (const char* problem = common_problem(*p)) return fail(problem);
  if (const char* problem = Model::problem(*p)) return fail(problem);
  int blocks = 0, optin = 0;
  if (const char* problem = device_unfit(&blocks, &optin)) return fail(problem);
  const int slots = ring_slots(Model::layout(*p, 0, blocks).total, optin);
  if (slots == 0) return fail("the shapes leave too little shared memory for the ring");
  if (const char* problem = Model::device_problem(*p, blocks, slots)) return fail(problem);
  const size_t smem = Model::layout(*p, slots, blocks).total;
  return MD_DISPATCH_DTYPE(p->dtype, T, [&] {
    if (p->state_dtype == MD_FLOAT32)
      return launch(decode_kernel<Model, T, float>, *p, blocks, slots, smem, optin, stream);
    return launch(decode_kernel<Model, T, T>, *p, blocks, slots, smem, optin, stream);
  });
}

}  // namespace persistent
}  // namespace md
