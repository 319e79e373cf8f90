// mdOps.h -- the five Mamba ops as seen by TensorRT: input slots (the ONNX schema order of
// mamba_deploy/ops/registry.py), attributes (plugin fields) and how their tensors map onto the
// launchers of plugins/kernels/mamba_kernels.h. MambaPlugin<Op> (mdPluginBase.h) does the rest.
#pragma once

#include <string>
#include <vector>

#include "mdPluginBase.h"

namespace mamba_deploy {
namespace trt {

// ---- causal conv1d (md_launch_causal_conv1d) ---------------------------------------------------

struct ConvAttrs
{
    bool silu{true};
};

// kUpdate = false: MambaCausalConv1d, x (B, D, L); true: MambaCausalConv1dUpdate, x (B, D).
template <bool kUpdate>
struct CausalConv1dOp
{
    static constexpr char const* kName = kUpdate ? "MambaCausalConv1dUpdate" : "MambaCausalConv1d";
    enum : int32_t
    {
        kX,
        kWeight,
        kBias,
        kState,
        kNbSlotsEnum
    };
    static constexpr int32_t kNbSlots = kNbSlotsEnum;
    static constexpr int32_t kXSlot = kX;
    static constexpr int32_t kStateSlot = kState;
    using Attrs = ConvAttrs;

    static SlotSpec slot(int32_t i);
    static std::vector<FieldSpec> fields();
    static Attrs parse(FieldReader const& r);
    static void write(Attrs const& a, FieldWriter& w);
    static std::string describe(Attrs const& a);
    static void checkShapes(Attrs const& a, OpIO const& io);
    static size_t workspaceSize(Attrs const& a, OpIO const& io);
    static cudaError_t launch(Attrs const& a, OpIO const& io, cudaStream_t stream);
};

using CausalConv1dPrefillOp = CausalConv1dOp<false>;
using CausalConv1dUpdateOp = CausalConv1dOp<true>;

// ---- selective SSM (md_launch_ssm_scan) ---------------------------------------------------------

struct SsmAttrs
{
    bool dtSoftplus{true};
    float dtLimitLo{0.F};
    float dtLimitHi{0.F}; // set to +inf by the parsers
    int32_t chunkSize{256};
};

// The three SSM ops differ in input order, layout and attribute names; Form selects them.
enum class SsmForm : int32_t
{
    kSelectiveScan, // Mamba1 prefill: u, delta, A, B, C, D, delta_bias, ssm_state, [z]
    kStateUpdate,   // decode, both families: state, x, dt, A, B, C, D, dt_bias, [z]
    kChunkScan,     // Mamba2 prefill: x, dt, A, B, C, D, dt_bias, initial_state, [z]
};

template <SsmForm kForm>
struct SsmOp
{
    static constexpr char const* kName = kForm == SsmForm::kSelectiveScan ? "MambaSelectiveScan"
        : kForm == SsmForm::kStateUpdate                                  ? "MambaSelectiveStateUpdate"
                                                                          : "Mamba2ChunkScan";
    // Slot indices. All three put the SSM parameters in the same relative order; only the state
    // moves (first for the state update, before z for the scans).
    static constexpr bool kStateFirst = kForm == SsmForm::kStateUpdate;
    static constexpr int32_t kState = kStateFirst ? 0 : 7;
    static constexpr int32_t kX = kStateFirst ? 1 : 0;
    static constexpr int32_t kDt = kX + 1;
    static constexpr int32_t kA = kX + 2;
    static constexpr int32_t kB = kX + 3;
    static constexpr int32_t kC = kX + 4;
    static constexpr int32_t kD = kX + 5;
    static constexpr int32_t kDtBias = kX + 6;
    static constexpr int32_t kZ = 8;
    static constexpr int32_t kNbSlots = 9;
    static constexpr int32_t kXSlot = kX;
    static constexpr int32_t kStateSlot = kState;
    using Attrs = SsmAttrs;

    static SlotSpec slot(int32_t i);
    static std::vector<FieldSpec> fields();
    static Attrs parse(FieldReader const& r);
    static void write(Attrs const& a, FieldWriter& w);
    static std::string describe(Attrs const& a);
    static void checkShapes(Attrs const& a, OpIO const& io);
    static size_t workspaceSize(Attrs const& a, OpIO const& io);
    static cudaError_t launch(Attrs const& a, OpIO const& io, cudaStream_t stream);
};

using SelectiveScanOp = SsmOp<SsmForm::kSelectiveScan>;
using StateUpdateOp = SsmOp<SsmForm::kStateUpdate>;
using ChunkScanOp = SsmOp<SsmForm::kChunkScan>;

} // namespace trt
} // namespace mamba_deploy
