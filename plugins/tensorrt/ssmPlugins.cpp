// ssmPlugins.cpp -- MambaSelectiveScan, MambaSelectiveStateUpdate and Mamba2ChunkScan: their
// fields, their tensors' shapes, and the md_ssm_params (one launcher for all three) they become.
// References: mamba_deploy/ops/selective_scan.py, state_update.py, chunk_scan.py.
#include <cmath>
#include <limits>

#include "mdOps.h"

namespace mamba_deploy {
namespace trt {

namespace {

constexpr char const* kDeltaSoftplusField = "delta_softplus"; // MambaSelectiveScan
constexpr char const* kDtSoftplusField = "dt_softplus";
constexpr char const* kDtLimitLoField = "dt_limit_lo";
constexpr char const* kDtLimitHiField = "dt_limit_hi";
constexpr char const* kChunkSizeField = "chunk_size";

constexpr int32_t kNone = -1; // axis absent: stride 0 (broadcast) in md_ssm_params

// Which tensor axis is each logical axis of md_ssm_params, per op form (and, for the state update,
// per family). x / z / y and dt: (batch, seq, head, dim); A: (head, state); B / C: (batch, seq,
// group, state); state: (batch, head, dim, state).
struct SsmLayout
{
    int32_t x[4];
    int32_t dt[4];
    int32_t a[2];
    int32_t bc[4];
    int32_t state[4];
    int32_t xRank, dtRank, aRank, bcRank, stateRank;
};

// Mamba1 prefill: u, delta, z (B, D, L); A (D, N); B, C (B, N, L); state (B, D, N).
constexpr SsmLayout kMamba1Scan{
    {0, 2, 1, kNone}, {0, 2, 1, kNone}, {0, 1}, {0, 2, kNone, 1}, {0, 1, kNone, 2}, 3, 3, 2, 3, 3};
// Mamba1 decode: x, dt, z (B, D); A (D, N); B, C (B, N); state (B, D, N).
constexpr SsmLayout kMamba1Step{
    {0, kNone, 1, kNone}, {0, kNone, 1, kNone}, {0, 1}, {0, kNone, kNone, 1}, {0, 1, kNone, 2}, 2, 2, 2, 2, 3};
// Mamba2 decode: x, z (B, H, P); dt (B, H); A (H); B, C (B, G, N); state (B, H, P, N).
constexpr SsmLayout kMamba2Step{
    {0, kNone, 1, 2}, {0, kNone, 1, kNone}, {0, kNone}, {0, kNone, 1, 2}, {0, 1, 2, 3}, 3, 2, 1, 3, 4};
// Mamba2 prefill: x, z (B, L, H, P); dt (B, L, H); A (H); B, C (B, L, G, N); state (B, H, P, N).
constexpr SsmLayout kMamba2Scan{{0, 1, 2, 3}, {0, 1, 2, kNone}, {0, kNone}, {0, 1, 2, 3}, {0, 1, 2, 3}, 4, 3, 1, 4, 4};

template <SsmForm kForm>
SsmLayout const& layoutOf(OpIO const& io)
{
    switch (kForm)
    {
    case SsmForm::kSelectiveScan: return kMamba1Scan;
    case SsmForm::kChunkScan: return kMamba2Scan;
    case SsmForm::kStateUpdate: break;
    }
    // The state update takes the Mamba1 or Mamba2 form by the state's rank.
    int32_t const rank = io.in[SsmOp<kForm>::kState].dims.nbDims;
    require(rank == 3 || rank == 4, "state must have rank 3 (Mamba1) or 4 (Mamba2), got " + std::to_string(rank));
    return rank == 3 ? kMamba1Step : kMamba2Step;
}

int64_t strideOf(TensorArg const& t, int32_t axis)
{
    return axis == kNone ? 0 : t.stride(axis);
}

void setStrides(TensorArg const& t, int32_t const* axes, int64_t& s0, int64_t& s1, int64_t& s2, int64_t& s3)
{
    s0 = strideOf(t, axes[0]);
    s1 = strideOf(t, axes[1]);
    s2 = strideOf(t, axes[2]);
    s3 = strideOf(t, axes[3]);
}

int64_t sizeOf(TensorArg const& t, int32_t axis, int64_t absent)
{
    return axis == kNone ? absent : t.dim(axis);
}

// Checks that logical axis `l` of `t` (per `axes`) has the size of logical axis `l` of `ref`.
void sameAxis(TensorArg const& t, char const* name, int32_t const* axes, TensorArg const& ref, char const* refName,
    int32_t const* refAxes, int32_t l)
{
    if (t.present && axes[l] != kNone && refAxes[l] != kNone)
    {
        expectSameDim(t, name, axes[l], ref, refName, refAxes[l]);
    }
}

} // namespace

template <SsmForm kForm>
SlotSpec SsmOp<kForm>::slot(int32_t i)
{
    bool const m1 = kForm == SsmForm::kSelectiveScan;
    require(i >= 0 && i < kNbSlots, "slot out of range");
    if (i == kState)
    {
        return {kForm == SsmForm::kChunkScan ? "initial_state" : m1 ? "ssm_state" : "state", Role::kState, false};
    }
    if (i == kX)
    {
        return {m1 ? "u" : "x", Role::kActivation, false};
    }
    if (i == kDt)
    {
        return {m1 ? "delta" : "dt", Role::kActivation, false};
    }
    if (i == kA || i == kD || i == kDtBias)
    {
        return {i == kA ? "A" : i == kD ? "D" : m1 ? "delta_bias" : "dt_bias", Role::kParam, false};
    }
    return {i == kB ? "B" : i == kC ? "C" : "z", Role::kActivation, i == kZ};
}

template <SsmForm kForm>
std::vector<FieldSpec> SsmOp<kForm>::fields()
{
    using T = nvinfer1::PluginFieldType;
    if (kForm == SsmForm::kSelectiveScan)
    {
        return {{kDeltaSoftplusField, T::kINT32, 1}};
    }
    std::vector<FieldSpec> f{{kDtSoftplusField, T::kINT32, 1}, {kDtLimitLoField, T::kFLOAT32, 1},
        {kDtLimitHiField, T::kFLOAT32, 1}};
    if (kForm == SsmForm::kChunkScan)
    {
        f.push_back({kChunkSizeField, T::kINT32, 1});
    }
    return f;
}

template <SsmForm kForm>
SsmAttrs SsmOp<kForm>::parse(FieldReader const& r)
{
    std::string const op(kName);
    SsmAttrs a;
    a.dtLimitHi = std::numeric_limits<float>::infinity();
    char const* softplusField = kForm == SsmForm::kSelectiveScan ? kDeltaSoftplusField : kDtSoftplusField;
    int64_t const softplus = r.getInt(softplusField, 1);
    require(softplus == 0 || softplus == 1, op + ": " + softplusField + " must be 0 or 1");
    a.dtSoftplus = softplus == 1;
    if (kForm != SsmForm::kSelectiveScan)
    {
        a.dtLimitLo = static_cast<float>(r.getFloat(kDtLimitLoField, 0.0));
        a.dtLimitHi = static_cast<float>(r.getFloat(kDtLimitHiField, std::numeric_limits<double>::infinity()));
        require(!std::isnan(a.dtLimitLo) && !std::isnan(a.dtLimitHi) && a.dtLimitLo >= 0.F && a.dtLimitLo <= a.dtLimitHi,
            op + ": need 0 <= dt_limit_lo <= dt_limit_hi, got " + std::to_string(a.dtLimitLo) + ", "
                + std::to_string(a.dtLimitHi));
    }
    if (kForm == SsmForm::kChunkScan)
    {
        int64_t const chunk = r.getInt(kChunkSizeField, 256);
        require(chunk > 0 && chunk <= (1 << 20), op + ": chunk_size must be positive");
        a.chunkSize = static_cast<int32_t>(chunk);
    }
    return a;
}

template <SsmForm kForm>
void SsmOp<kForm>::write(SsmAttrs const& a, FieldWriter& w)
{
    if (kForm == SsmForm::kSelectiveScan)
    {
        w.addInt(kDeltaSoftplusField, a.dtSoftplus ? 1 : 0);
        return;
    }
    w.addInt(kDtSoftplusField, a.dtSoftplus ? 1 : 0);
    w.addFloats(kDtLimitLoField, {a.dtLimitLo});
    w.addFloats(kDtLimitHiField, {a.dtLimitHi});
    if (kForm == SsmForm::kChunkScan)
    {
        w.addInt(kChunkSizeField, a.chunkSize);
    }
}

template <SsmForm kForm>
std::string SsmOp<kForm>::describe(SsmAttrs const& a)
{
    return std::string(kName) + "(softplus=" + std::to_string(a.dtSoftplus ? 1 : 0) + ",dt_limit="
        + std::to_string(a.dtLimitLo) + ":" + std::to_string(a.dtLimitHi) + ",chunk=" + std::to_string(a.chunkSize)
        + ")";
}

template <SsmForm kForm>
void SsmOp<kForm>::checkShapes(SsmAttrs const& /* a */, OpIO const& io)
{
    SsmLayout const& L = layoutOf<kForm>(io);
    TensorArg const& x = io.in[kX];
    TensorArg const& st = io.in[kState];
    TensorArg const& A = io.in[kA];
    expectRank(x, slot(kX).name, L.xRank);
    expectRank(io.in[kDt], slot(kDt).name, L.dtRank);
    expectRank(A, "A", L.aRank);
    expectRank(io.in[kB], "B", L.bcRank);
    expectRank(io.in[kC], "C", L.bcRank);
    expectRank(io.in[kD], "D", 1);
    expectRank(io.in[kDtBias], slot(kDtBias).name, 1);
    expectRank(st, slot(kState).name, L.stateRank);
    if (io.in[kZ].present)
    {
        expectRank(io.in[kZ], "z", L.xRank);
    }
    for (int32_t l = 0; l < 4; ++l) // batch, seq, head, dim of dt and z follow x
    {
        sameAxis(io.in[kDt], slot(kDt).name, L.dt, x, slot(kX).name, L.x, l);
        sameAxis(io.in[kZ], "z", L.x, x, slot(kX).name, L.x, l);
    }
    for (int32_t l : {0, 1}) // batch, seq of B and C
    {
        sameAxis(io.in[kB], "B", L.bc, x, slot(kX).name, L.x, l);
        sameAxis(io.in[kC], "C", L.bc, x, slot(kX).name, L.x, l);
    }
    for (int32_t l = 0; l < 4; ++l) // group and state of C follow B
    {
        sameAxis(io.in[kC], "C", L.bc, io.in[kB], "B", L.bc, l);
    }
    expectSameDim(st, slot(kState).name, L.state[0], x, slot(kX).name, L.x[0]);
    expectSameDim(st, slot(kState).name, L.state[1], x, slot(kX).name, L.x[2]);
    if (L.x[3] != kNone)
    {
        expectSameDim(st, slot(kState).name, L.state[2], x, slot(kX).name, L.x[3]);
    }
    expectSameDim(A, "A", L.a[0], x, slot(kX).name, L.x[2]);
    expectSameDim(io.in[kD], "D", 0, x, slot(kX).name, L.x[2]);
    expectSameDim(io.in[kDtBias], slot(kDtBias).name, 0, x, slot(kX).name, L.x[2]);
    expectSameDim(io.in[kB], "B", L.bc[3], st, slot(kState).name, L.state[3]);
    if (L.a[1] != kNone)
    {
        expectSameDim(A, "A", L.a[1], st, slot(kState).name, L.state[3]);
    }
    int64_t const dstate = st.dim(L.state[3]);
    require(dstate < 0 || (dstate >= 1 && dstate <= MD_MAX_DSTATE),
        "d_state " + std::to_string(dstate) + " is outside 1.." + std::to_string(MD_MAX_DSTATE));
    int64_t const heads = x.dim(L.x[2]);
    int64_t const groups = sizeOf(io.in[kB], L.bc[2], 1);
    require(heads < 0 || groups < 0 || (groups > 0 && heads % groups == 0),
        "nheads " + std::to_string(heads) + " must be a multiple of ngroups " + std::to_string(groups));
}

namespace {

template <SsmForm kForm>
md_ssm_params makeParams(SsmAttrs const& a, OpIO const& io)
{
    using Op = SsmOp<kForm>;
    SsmLayout const& L = layoutOf<kForm>(io);
    TensorArg const& x = io.in[Op::kX];
    TensorArg const& dt = io.in[Op::kDt];
    TensorArg const& A = io.in[Op::kA];
    TensorArg const& B = io.in[Op::kB];
    TensorArg const& C = io.in[Op::kC];
    TensorArg const& D = io.in[Op::kD];
    TensorArg const& z = io.in[Op::kZ];
    TensorArg const& bias = io.in[Op::kDtBias];
    TensorArg const& st = io.in[Op::kState];
    require(A.type == D.type && A.type == bias.type, "A, D and dt_bias must have one type");
    md_ssm_params p{};
    p.batch = x.dim(L.x[0]);
    p.seqlen = sizeOf(x, L.x[1], 1);
    p.nheads = x.dim(L.x[2]);
    p.headdim = sizeOf(x, L.x[3], 1);
    p.dstate = st.dim(L.state[3]);
    p.ngroups = sizeOf(B, L.bc[2], 1);
    p.x_dtype = toMdDtype(x.type);
    p.param_dtype = toMdDtype(A.type);
    p.state_dtype = toMdDtype(st.type);
    p.dt_softplus = a.dtSoftplus ? 1 : 0;
    p.dt_min = a.dtLimitLo;
    p.dt_max = a.dtLimitHi;
    // Tensors the launcher reads through (batch, seq, head, dim) / (batch, seq, group, state) /
    // (batch, head, dim, state) strides; y and state_out are dense and shaped like x and state.
    p.x = x.data;
    p.y = io.y;
    setStrides(x, L.x, p.x_batch_stride, p.x_seq_stride, p.x_head_stride, p.x_dim_stride);
    setStrides(x, L.x, p.y_batch_stride, p.y_seq_stride, p.y_head_stride, p.y_dim_stride);
    p.dt = dt.data;
    setStrides(dt, L.dt, p.dt_batch_stride, p.dt_seq_stride, p.dt_head_stride, p.dt_dim_stride);
    p.A = A.data;
    p.A_head_stride = strideOf(A, L.a[0]);
    p.A_state_stride = strideOf(A, L.a[1]);
    p.B = B.data;
    setStrides(B, L.bc, p.B_batch_stride, p.B_seq_stride, p.B_group_stride, p.B_state_stride);
    p.C = C.data;
    setStrides(C, L.bc, p.C_batch_stride, p.C_seq_stride, p.C_group_stride, p.C_state_stride);
    p.D = D.data;
    p.D_head_stride = D.stride(0);
    p.dt_bias = bias.data;
    p.dt_bias_head_stride = bias.stride(0);
    if (z.present)
    {
        p.z = z.data;
        setStrides(z, L.x, p.z_batch_stride, p.z_seq_stride, p.z_head_stride, p.z_dim_stride);
    }
    p.state_in = st.data;
    p.state_out = io.stateOut; // may alias state_in (in-place update)
    setStrides(st, L.state, p.state_in_batch_stride, p.state_in_head_stride, p.state_in_dim_stride,
        p.state_in_state_stride);
    setStrides(st, L.state, p.state_out_batch_stride, p.state_out_head_stride, p.state_out_dim_stride,
        p.state_out_state_stride);
    return p;
}

} // namespace

// The kernels' time-parallel form (md_launch_ssm_scan_ws) sizes its scratch from the runtime shapes and
// the device, which enqueue cannot match against what getWorkspaceSize reserved at build time; the
// plugins use the single walk, which needs none.
template <SsmForm kForm>
size_t SsmOp<kForm>::workspaceSize(SsmAttrs const& /* a */, OpIO const& /* io */)
{
    return 0;
}

template <SsmForm kForm>
cudaError_t SsmOp<kForm>::launch(SsmAttrs const& a, OpIO const& io, cudaStream_t stream)
{
    md_ssm_params const p = makeParams<kForm>(a, io);
    return md_launch_ssm_scan(&p, stream);
}

template struct SsmOp<SsmForm::kSelectiveScan>;
template struct SsmOp<SsmForm::kStateUpdate>;
template struct SsmOp<SsmForm::kChunkScan>;

} // namespace trt
} // namespace mamba_deploy
