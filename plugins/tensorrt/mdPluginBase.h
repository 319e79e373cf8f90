// mdPluginBase.h -- the IPluginV3 boilerplate shared by all Mamba plugins, written once.
//
// MambaPlugin<Op> implements IPluginV3 + IPluginV3OneCore + IPluginV3OneBuild(V2) +
// IPluginV3OneRuntime and MambaPluginCreator<Op> implements IPluginCreatorV3One for an op
// description `Op` (see mdOps.h) that provides only what differs between ops:
//
//   static constexpr char const* kName;                 // ONNX op type == plugin name
//   static constexpr int32_t kNbSlots;                  // inputs in ONNX order, optional ones included
//   static constexpr int32_t kXSlot, kStateSlot;        // output 0 is like kXSlot, output 1 like kStateSlot
//   static SlotSpec slot(int32_t i);                    // name, role, optional
//   struct Attrs; static std::vector<FieldSpec> fields();
//   static Attrs parse(FieldReader const&);             // validates, throws std::invalid_argument
//   static void write(Attrs const&, FieldWriter&);      // fields to serialize (parse() reads them back)
//   static std::string describe(Attrs const&);          // timing-cache id / metadata
//   static void checkShapes(Attrs const&, OpIO const&); // throws; -1 dims are unknown
//   static size_t workspaceSize(Attrs const&, OpIO const&);
//   static cudaError_t launch(Attrs const&, OpIO const&, cudaStream_t);
//
// Every op has two outputs: y (like the x input) and the new state (like the state input, which
// the build-v2 interface declares aliased so TensorRT may update it in place when the builder
// enables PreviewFeature::kALIASED_PLUGIN_IO_10_03; otherwise the state output is a distinct
// buffer and the runtime ping-pongs two state sets). The plugin only validates, casts and calls
// the launcher of plugins/kernels/mamba_kernels.h.
#pragma once

#include <array>
#include <bitset>
#include <string>
#include <vector>

#include "mdTrtCommon.h"

namespace mamba_deploy {
namespace trt {

enum class Role : int32_t
{
    kActivation, // x, z, dt, B, C and the y output: float32/float16/bfloat16, all one type
    kParam,      // weights (A, D, dt_bias, conv weight/bias): one float type
    kState,      // state input and output: float32, or the activation type
};

struct SlotSpec
{
    char const* name;
    Role role;
    bool optional;
};

constexpr int32_t kMaxSlots = 12;
constexpr int32_t kNbOutputs = 2;
// Bit i set: input slot i is bound (TensorRT inputs are the present slots, in slot order). Set by
// mamba-deploy's builder when it drops the empty optional inputs of a node.
constexpr char const* kPresentField = "md_inputs_present";

struct OpIO
{
    std::array<TensorArg, kMaxSlots> in{};
    void* y{nullptr};
    void* stateOut{nullptr};
};

#if MD_TRT_HAS_BUILD_V2
using BuildInterface = nvinfer1::IPluginV3OneBuildV2;
#else
using BuildInterface = nvinfer1::IPluginV3OneBuild;
#endif

// Which slots the TensorRT inputs are, given the explicit mask (-1: none) and the input count.
template <class Op>
int32_t resolvePresentMask(int64_t explicitMask, int32_t nbInputs)
{
    int32_t all = 0;
    int32_t required = 0;
    for (int32_t i = 0; i < Op::kNbSlots; ++i)
    {
        all |= 1 << i;
        required |= Op::slot(i).optional ? 0 : 1 << i;
    }
    if (explicitMask >= 0)
    {
        auto const mask = static_cast<int32_t>(explicitMask);
        require(static_cast<int32_t>(std::bitset<32>(static_cast<uint32_t>(mask)).count()) == nbInputs,
            std::string(kPresentField) + " does not match the " + std::to_string(nbInputs) + " inputs");
        return mask;
    }
    if (nbInputs == Op::kNbSlots)
    {
        return all;
    }
    require(nbInputs == static_cast<int32_t>(std::bitset<32>(static_cast<uint32_t>(required)).count()),
        std::to_string(nbInputs) + " inputs is ambiguous (some optional inputs omitted): set the "
            + kPresentField + " attribute, as `mamba-deploy build` does");
    return required;
}

// TensorRT input index of `slot` under `mask`, or -1 when the slot is absent.
inline int32_t inputIndex(int32_t mask, int32_t slot)
{
    if (((mask >> slot) & 1) == 0)
    {
        return -1;
    }
    return static_cast<int32_t>(std::bitset<32>(static_cast<uint32_t>(mask & ((1 << slot) - 1))).count());
}

template <class Op>
class MambaPlugin : public nvinfer1::IPluginV3,
                    public nvinfer1::IPluginV3OneCore,
                    public BuildInterface,
                    public nvinfer1::IPluginV3OneRuntime
{
public:
    using Attrs = typename Op::Attrs;

    MambaPlugin(std::string name, Attrs const& attrs, int64_t presentMask)
        : mLayerName(std::move(name))
        , mAttrs(attrs)
        , mExplicitMask(presentMask)
        , mDescription(Op::describe(attrs))
    {
    }

    MambaPlugin(MambaPlugin const& other)
        : mLayerName(other.mLayerName)
        , mAttrs(other.mAttrs)
        , mExplicitMask(other.mExplicitMask)
        , mResolvedMask(other.mResolvedMask)
        , mNbInputs(other.mNbInputs)
        , mDescription(other.mDescription)
    {
    }
    MambaPlugin& operator=(MambaPlugin const&) = delete;
    ~MambaPlugin() override = default;

    // ---- IPluginV3 ----
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<BuildInterface*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        return guard<nvinfer1::IPluginV3*>(
            Op::kName, "clone", nullptr, [&]() -> nvinfer1::IPluginV3* { return new MambaPlugin(*this); });
    }

    // ---- IPluginV3OneCore ----
    char const* getPluginName() const noexcept override { return Op::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // ---- IPluginV3OneBuild ----
    int32_t getNbOutputs() const noexcept override { return kNbOutputs; }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        return guard(Op::kName, "getOutputDataTypes", int32_t{-1}, [&]() {
            require(nbOutputs == kNbOutputs, "expected 2 outputs");
            int32_t const mask = resolve(nbInputs);
            outputTypes[0] = inputTypes[inputIndex(mask, Op::kXSlot)];
            outputTypes[1] = inputTypes[inputIndex(mask, Op::kStateSlot)];
            return int32_t{0};
        });
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* /* shapeInputs */, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& /* exprBuilder */) noexcept override
    {
        return guard(Op::kName, "getOutputShapes", int32_t{-1}, [&]() {
            require(nbShapeInputs == 0, "no shape-tensor inputs expected");
            require(nbOutputs == kNbOutputs, "expected 2 outputs");
            int32_t const mask = resolve(nbInputs);
            // Validate what is already known (build-time constants; dynamic dims stay symbolic).
            OpIO io;
            for (int32_t s = 0; s < Op::kNbSlots; ++s)
            {
                int32_t const i = inputIndex(mask, s);
                if (i >= 0)
                {
                    io.in[s].present = true;
                    io.in[s].dims = constantDims(inputs[i]);
                }
            }
            Op::checkShapes(mAttrs, io);
            // y has x's (batch, seq, ...) expressions and the new state the past state's: both
            // stay symbolic, so one engine serves every batch and sequence length of the profile.
            outputs[0] = inputs[inputIndex(mask, Op::kXSlot)];
            outputs[1] = inputs[inputIndex(mask, Op::kStateSlot)];
            return int32_t{0};
        });
    }

    bool supportsFormatCombination(
        int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        return guard(Op::kName, "supportsFormatCombination", false, [&]() {
            require(nbOutputs == kNbOutputs && pos >= 0 && pos < nbInputs + nbOutputs, "position out of range");
            int32_t const mask = resolve(nbInputs);
            auto const& desc = inOut[pos].desc;
            if (desc.format != nvinfer1::TensorFormat::kLINEAR || !isFloatType(desc.type))
            {
                return false;
            }
            // Decide on inOut[0..pos] only: the first earlier tensor of each role fixes its type.
            bool seen[3] = {false, false, false};
            nvinfer1::DataType first[3] = {};
            for (int32_t p = 0; p < pos; ++p)
            {
                auto const r = static_cast<int32_t>(roleAt(mask, p, nbInputs));
                if (!seen[r])
                {
                    seen[r] = true;
                    first[r] = inOut[p].desc.type;
                }
            }
            int32_t const act = static_cast<int32_t>(Role::kActivation);
            int32_t const state = static_cast<int32_t>(Role::kState);
            auto const role = static_cast<int32_t>(roleAt(mask, pos, nbInputs));
            if (seen[role] && desc.type != first[role])
            {
                return false;
            }
            bool const stateOk = [&]() {
                if (role == state)
                {
                    return desc.type == nvinfer1::DataType::kFLOAT || !seen[act] || desc.type == first[act];
                }
                if (role == act && seen[state])
                {
                    return first[state] == nvinfer1::DataType::kFLOAT || first[state] == desc.type;
                }
                return true;
            }();
            return stateOk;
        });
    }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept override
    {
        return guard(Op::kName, "configurePlugin", int32_t{-1}, [&]() {
            require(nbOutputs == kNbOutputs, "expected 2 outputs");
            OpIO io = describeInputs(nbInputs, [&](int32_t i) { return in[i].desc; });
            Op::checkShapes(mAttrs, io);
            return int32_t{0};
        });
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* /* outputs */, int32_t /* nbOutputs */) const noexcept override
    {
        return guard(Op::kName, "getWorkspaceSize", size_t{0}, [&]() {
            // The largest shapes of the profile bound the scratch any smaller problem needs.
            OpIO io = describeInputs(nbInputs, [&](int32_t i) {
                nvinfer1::PluginTensorDesc d = inputs[i].desc;
                d.dims = inputs[i].max;
                return d;
            });
            return Op::workspaceSize(mAttrs, io);
        });
    }

    char const* getTimingCacheID() noexcept override { return mDescription.c_str(); }
    char const* getMetadataString() noexcept override { return mDescription.c_str(); }

#if MD_TRT_HAS_BUILD_V2
    int32_t getAliasedInput(int32_t outputIndex) noexcept override
    {
        return guard(Op::kName, "getAliasedInput", int32_t{-1}, [&]() {
            int32_t const mask = mResolvedMask >= 0 ? mResolvedMask : static_cast<int32_t>(mExplicitMask);
            return outputIndex == 1 && mask >= 0 ? inputIndex(mask, Op::kStateSlot) : int32_t{-1};
        });
    }
#endif

    // ---- IPluginV3OneRuntime ----
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept override
    {
        return guard(Op::kName, "onShapeChange", int32_t{-1}, [&]() {
            require(nbOutputs == kNbOutputs, "expected 2 outputs");
            Op::checkShapes(mAttrs, describeInputs(nbInputs, [&](int32_t i) { return in[i]; }));
            return int32_t{0};
        });
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /* outputDesc */,
        void const* const* inputs, void* const* outputs, void* /* workspace */, cudaStream_t stream) noexcept override
    {
        return guard(Op::kName, "enqueue", int32_t{-1}, [&]() {
            // onShapeChange() ran before (it resolved the inputs); a deserialized plugin also has its mask.
            int32_t const nbInputs = mNbInputs > 0 ? mNbInputs
                                                   : static_cast<int32_t>(std::bitset<32>(
                                                       static_cast<uint32_t>(mExplicitMask)).count());
            OpIO io = describeInputs(nbInputs, [&](int32_t i) { return inputDesc[i]; });
            for (int32_t s = 0; s < Op::kNbSlots; ++s)
            {
                int32_t const i = inputIndex(mResolvedMask, s);
                io.in[s].data = i >= 0 ? inputs[i] : nullptr;
            }
            io.y = outputs[0];
            io.stateOut = outputs[1];
            cudaError_t const err = Op::launch(mAttrs, io, stream);
            require(err == cudaSuccess, mLayerName + ": " + launchError(err));
            return int32_t{0};
        });
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return guard<nvinfer1::PluginFieldCollection const*>(Op::kName, "getFieldsToSerialize", nullptr, [&]() {
            mSerialized.clear();
            Op::write(mAttrs, mSerialized);
            int32_t const mask = mResolvedMask >= 0 ? mResolvedMask : static_cast<int32_t>(mExplicitMask);
            if (mask >= 0)
            {
                mSerialized.addInt(kPresentField, mask);
            }
            return mSerialized.collection();
        });
    }

private:
    int32_t resolve(int32_t nbInputs) const
    {
        require(nbInputs > 0 && nbInputs <= Op::kNbSlots, "unexpected number of inputs " + std::to_string(nbInputs));
        mResolvedMask = resolvePresentMask<Op>(mExplicitMask, nbInputs);
        mNbInputs = nbInputs;
        return mResolvedMask;
    }

    Role roleAt(int32_t mask, int32_t pos, int32_t nbInputs) const
    {
        if (pos >= nbInputs)
        {
            return pos == nbInputs ? Role::kActivation : Role::kState;
        }
        for (int32_t s = 0; s < Op::kNbSlots; ++s)
        {
            if (inputIndex(mask, s) == pos)
            {
                return Op::slot(s).role;
            }
        }
        throw std::invalid_argument("no slot for input " + std::to_string(pos));
    }

    template <typename DescOf>
    OpIO describeInputs(int32_t nbInputs, DescOf descOf) const
    {
        int32_t const mask = resolve(nbInputs);
        OpIO io;
        for (int32_t s = 0; s < Op::kNbSlots; ++s)
        {
            int32_t const i = inputIndex(mask, s);
            if (i >= 0)
            {
                nvinfer1::PluginTensorDesc const d = descOf(i);
                io.in[s].present = true;
                io.in[s].dims = d.dims;
                io.in[s].type = d.type;
            }
        }
        return io;
    }

    static nvinfer1::Dims constantDims(nvinfer1::DimsExprs const& e)
    {
        nvinfer1::Dims d{};
        d.nbDims = e.nbDims;
        for (int32_t i = 0; i < e.nbDims; ++i)
        {
            d.d[i] = e.d[i] != nullptr && e.d[i]->isConstant() ? e.d[i]->getConstantValue() : -1;
        }
        return d;
    }

    std::string mLayerName;
    Attrs mAttrs;
    int64_t mExplicitMask{-1};
    mutable int32_t mResolvedMask{-1};
    mutable int32_t mNbInputs{0};
    std::string mDescription;
    FieldWriter mSerialized;
};

template <class Op>
class MambaPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    MambaPluginCreator()
        : mSpecs(Op::fields())
    {
        mSpecs.push_back(FieldSpec{kPresentField, nvinfer1::PluginFieldType::kINT32, 1});
        for (auto const& s : mSpecs)
        {
            mFieldNames.emplace_back(s.name, nullptr, s.type, s.length);
        }
        mCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mCollection.fields = mFieldNames.data();
    }

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override
    {
        return guard<nvinfer1::IPluginV3*>(Op::kName, "createPlugin", nullptr, [&]() -> nvinfer1::IPluginV3* {
            FieldReader const reader(fc);
            if (phase == nvinfer1::TensorRTPhase::kBUILD)
            {
                for (auto const& extra : reader.unknown(mSpecs))
                {
                    log(nvinfer1::ILogger::Severity::kWARNING,
                        std::string(Op::kName) + ": ignoring unknown field '" + extra + "'");
                }
            }
            typename Op::Attrs const attrs = Op::parse(reader);
            int64_t const mask = reader.getInt(kPresentField, -1);
            if (mask >= 0)
            {
                for (int32_t s = 0; s < Op::kNbSlots; ++s)
                {
                    require(Op::slot(s).optional || ((mask >> s) & 1) != 0,
                        std::string(kPresentField) + ": required input '" + Op::slot(s).name + "' is missing");
                }
                require((mask >> Op::kNbSlots) == 0, std::string(kPresentField) + " names inputs the op does not have");
            }
            return new MambaPlugin<Op>(name != nullptr ? name : Op::kName, attrs, mask);
        });
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
    char const* getPluginName() const noexcept override { return Op::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<FieldSpec> mSpecs;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace trt
} // namespace mamba_deploy
