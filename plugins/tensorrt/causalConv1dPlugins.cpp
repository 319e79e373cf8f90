// causalConv1dPlugins.cpp -- MambaCausalConv1d (prefill) and MambaCausalConv1dUpdate (decode):
// validation of the node's fields and tensors, and the md_causal_conv1d_params they become.
// Reference: causal_conv1d_ref / causal_conv1d_update_ref in mamba_deploy/ops/causal_conv1d.py.
#include "mdOps.h"

namespace mamba_deploy {
namespace trt {

namespace {
constexpr char const* kActivationField = "activation";
} // namespace

template <bool kUpdate>
SlotSpec CausalConv1dOp<kUpdate>::slot(int32_t i)
{
    static constexpr SlotSpec kSlots[] = {
        {"x", Role::kActivation, false},
        {"weight", Role::kParam, false},
        {"bias", Role::kParam, false},
        {"conv_state", Role::kState, false},
    };
    require(i >= 0 && i < kNbSlots, "slot out of range");
    return kSlots[i];
}

template <bool kUpdate>
std::vector<FieldSpec> CausalConv1dOp<kUpdate>::fields()
{
    return {FieldSpec{kActivationField, nvinfer1::PluginFieldType::kCHAR, 0}};
}

template <bool kUpdate>
ConvAttrs CausalConv1dOp<kUpdate>::parse(FieldReader const& r)
{
    std::string const act = r.getString(kActivationField, "silu");
    require(act == "silu" || act == "swish" || act == "none" || act.empty(),
        std::string(kName) + ": activation must be 'silu', 'swish' or 'none', got '" + act + "'");
    ConvAttrs a;
    a.silu = act == "silu" || act == "swish";
    return a;
}

template <bool kUpdate>
void CausalConv1dOp<kUpdate>::write(ConvAttrs const& a, FieldWriter& w)
{
    w.addString(kActivationField, a.silu ? "silu" : "none");
}

template <bool kUpdate>
std::string CausalConv1dOp<kUpdate>::describe(ConvAttrs const& a)
{
    return std::string(kName) + "(activation=" + (a.silu ? "silu" : "none") + ")";
}

template <bool kUpdate>
void CausalConv1dOp<kUpdate>::checkShapes(ConvAttrs const& /* a */, OpIO const& io)
{
    TensorArg const& x = io.in[kX];
    TensorArg const& w = io.in[kWeight];
    TensorArg const& b = io.in[kBias];
    TensorArg const& s = io.in[kState];
    expectRank(x, "x", kUpdate ? 2 : 3);
    expectRank(w, "weight", 2);
    expectRank(b, "bias", 1);
    expectRank(s, "conv_state", 3);
    int64_t const width = w.dim(1);
    require(width < 0 || (width >= 1 && width <= MD_MAX_CONV_WIDTH),
        "conv width " + std::to_string(width) + " is outside 1.." + std::to_string(MD_MAX_CONV_WIDTH));
    expectSameDim(w, "weight", 0, x, "x", 1);
    expectSameDim(b, "bias", 0, x, "x", 1);
    expectSameDim(s, "conv_state", 0, x, "x", 0);
    expectSameDim(s, "conv_state", 1, x, "x", 1);
    expectDim(s, "conv_state", 2, width < 0 ? -1 : width - 1, "width - 1");
}

template <bool kUpdate>
size_t CausalConv1dOp<kUpdate>::workspaceSize(ConvAttrs const& /* a */, OpIO const& /* io */)
{
    return 0; // the conv launcher has no scratch (and no size function)
}

template <bool kUpdate>
cudaError_t CausalConv1dOp<kUpdate>::launch(ConvAttrs const& a, OpIO const& io, cudaStream_t stream)
{
    TensorArg const& x = io.in[kX];
    TensorArg const& w = io.in[kWeight];
    TensorArg const& b = io.in[kBias];
    TensorArg const& s = io.in[kState];
    md_causal_conv1d_params p{};
    p.batch = x.dim(0);
    p.dim = x.dim(1);
    p.seqlen = kUpdate ? 1 : x.dim(2);
    p.width = w.dim(1);
    p.silu = a.silu ? 1 : 0;
    p.x_dtype = toMdDtype(x.type);
    p.weight_dtype = toMdDtype(w.type);
    p.state_dtype = toMdDtype(s.type);
    require(b.type == w.type, "bias and weight must have one type");
    // x and y are dense and alike: (B, D) for the update has no sequence axis.
    p.x = x.data;
    p.y = io.y;
    p.x_batch_stride = p.y_batch_stride = x.stride(0);
    p.x_dim_stride = p.y_dim_stride = x.stride(1);
    p.x_seq_stride = p.y_seq_stride = kUpdate ? 0 : x.stride(2);
    p.weight = w.data;
    p.weight_dim_stride = w.stride(0);
    p.weight_width_stride = w.stride(1);
    p.bias = b.data;
    p.bias_stride = b.stride(0);
    p.state_in = s.data;
    p.state_out = io.stateOut;
    p.state_in_batch_stride = p.state_out_batch_stride = s.stride(0);
    p.state_in_dim_stride = p.state_out_dim_stride = s.stride(1);
    p.state_in_width_stride = p.state_out_width_stride = s.stride(2);
    return md_launch_causal_conv1d(&p, stream);
}

template struct CausalConv1dOp<false>;
template struct CausalConv1dOp<true>;

} // namespace trt
} // namespace mamba_deploy
