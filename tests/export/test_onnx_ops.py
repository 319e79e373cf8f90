"""Each custom op's ONNX form (plugin node + function body, and inlined standard ops) vs its torch reference."""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from mamba_deploy.ops import DOMAIN, MIN_OPSET, causal_conv1d_ref, causal_conv1d_update_ref, chunk_scan_ref, \
    get_op, register_onnx_schemas, selective_scan_ref, selective_state_update_ref
from mamba_deploy.ops.onnx_graph import GraphBuilder

_NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16}


def _output_sources(op_name):
    """Input index whose type each output has (y like x, state like the state input)."""
    names = [n for n, _, _ in get_op(op_name).onnx.inputs]
    state = next(i for i, n in enumerate(names) if "state" in n)
    return (1 if names[0] == "state" else 0), state


def _like(name, array):
    return helper.make_tensor_value_info(name, _NP_TO_ONNX[array.dtype], [f"{name}_{d}" for d in range(array.ndim)])


def run_op(op_name, inputs, attrs, plugin):
    """Build a one-op model (inputs: list of np arrays or None), run it in ONNX Runtime."""
    g = GraphBuilder()
    names = [None if a is None else f"in{i}" for i, a in enumerate(inputs)]
    static = {"state_rank": inputs[0].ndim} if get_op(op_name).onnx.static else None
    outs = get_op(op_name).emit(g, names, attrs, plugin, static)
    graph = helper.make_graph(
        g.nodes, "op",
        [_like(n, a) for n, a in zip(names, inputs) if a is not None],
        [_like(o, inputs[i]) for o, i in zip(outs, _output_sources(op_name))])
    functions = [get_op(op_name).onnx_function(attrs, inputs[-1] is not None, static=static)] if plugin else []
    opsets = [helper.make_opsetid("", MIN_OPSET)] + ([helper.make_opsetid(DOMAIN, 1)] if plugin else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    register_onnx_schemas()
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a for n, a in zip(names, inputs) if a is not None})


def rel(a, b):
    b = b.float().numpy() if isinstance(b, torch.Tensor) else b
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def t(*shape, scale=1.0, gen):
    return torch.randn(*shape, generator=gen) * scale


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("plugin", [True, False])
@pytest.mark.parametrize("seqlen", [1, 2, 9])
def test_causal_conv1d(plugin, seqlen, gen):
    x, w, b, s = t(2, 6, seqlen, gen=gen), t(6, 4, gen=gen), t(6, gen=gen), t(2, 6, 3, gen=gen)
    y, ns = run_op("MambaCausalConv1d", [a.numpy() for a in (x, w, b, s)], {"activation": "silu"}, plugin)
    ry, rs = causal_conv1d_ref(x, w, b, s, "silu")
    assert rel(y, ry) < 1e-6 and rel(ns, rs) == 0


@pytest.mark.parametrize("plugin", [True, False])
def test_causal_conv1d_update_no_activation(plugin, gen):
    x, w, b, s = t(3, 5, gen=gen), t(5, 4, gen=gen), t(5, gen=gen), t(3, 5, 3, gen=gen)
    y, ns = run_op("MambaCausalConv1dUpdate", [a.numpy() for a in (x, w, b, s)], {"activation": "none"}, plugin)
    ry, rs = causal_conv1d_update_ref(x, w, b, s, None)
    assert rel(y, ry) < 1e-6 and rel(ns, rs) == 0


def _mamba1_inputs(gen, batch=2, dim=6, dstate=4, seqlen=7):
    A = -torch.exp(t(dim, dstate, scale=0.5, gen=gen))
    return dict(u=t(batch, dim, seqlen, gen=gen), delta=t(batch, dim, seqlen, scale=0.5, gen=gen) - 1, A=A,
                B=t(batch, dstate, seqlen, gen=gen), C=t(batch, dstate, seqlen, gen=gen), D=t(dim, gen=gen),
                delta_bias=t(dim, scale=0.1, gen=gen), ssm_state=t(batch, dim, dstate, gen=gen),
                z=t(batch, dim, seqlen, gen=gen))


@pytest.mark.parametrize("plugin", [True, False])
@pytest.mark.parametrize("with_z", [True, False])
def test_selective_scan(plugin, with_z, gen):
    a = _mamba1_inputs(gen)
    if not with_z:
        a["z"] = None
    y, s = run_op("MambaSelectiveScan", [None if v is None else v.numpy() for v in a.values()],
                  {"delta_softplus": 1}, plugin)
    ry, rs = selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                                a["ssm_state"], True)
    assert rel(y, ry) < 1e-5 and rel(s, rs) < 1e-5


def _mamba2_inputs(gen, batch=2, seqlen=7, nheads=4, headdim=3, ngroups=2, dstate=5):
    return dict(x=t(batch, seqlen, nheads, headdim, gen=gen), dt=t(batch, seqlen, nheads, gen=gen) - 1,
                A=-torch.exp(t(nheads, gen=gen)), B=t(batch, seqlen, ngroups, dstate, gen=gen),
                C=t(batch, seqlen, ngroups, dstate, gen=gen), D=t(nheads, gen=gen),
                dt_bias=t(nheads, scale=0.1, gen=gen), initial_state=t(batch, nheads, headdim, dstate, gen=gen),
                z=t(batch, seqlen, nheads, headdim, gen=gen))


@pytest.mark.parametrize("plugin", [True, False])
@pytest.mark.parametrize("dt_limit", [(0.0, math.inf), (0.05, 0.5)])
def test_chunk_scan(plugin, dt_limit, gen):
    a = _mamba2_inputs(gen)
    attrs = {"chunk_size": 4, "dt_softplus": 1, "dt_limit_lo": dt_limit[0], "dt_limit_hi": dt_limit[1]}
    y, s = run_op("Mamba2ChunkScan", [v.numpy() for v in a.values()], attrs, plugin)
    ry, rs = chunk_scan_ref(a["x"], a["dt"], a["A"], a["B"], a["C"], 4, a["D"], a["z"], a["dt_bias"],
                            a["initial_state"], True, dt_limit)
    assert rel(y, ry) < 1e-5 and rel(s, rs) < 1e-5


@pytest.mark.parametrize("seqlen", [1, 63, 64, 65, 150])
@pytest.mark.parametrize("a_scale", [0.1, 3.0])
def test_scans_over_several_chunks(seqlen, a_scale, gen):
    """The Scan bodies past one SSD chunk (64 steps; padded, whole, one over), with slow and fast decay
    (a_scale 3: |A| up to e^9, so exp(dt*A) underflows to 0 within a step)."""
    a = _mamba2_inputs(gen, seqlen=seqlen)
    a["A"] = -torch.exp(t(a["A"].shape[0], scale=a_scale, gen=gen))
    y, s = run_op("Mamba2ChunkScan", [v.numpy() for v in a.values()], {"chunk_size": 16}, False)
    ry, rs = chunk_scan_ref(a["x"], a["dt"], a["A"], a["B"], a["C"], 16, a["D"], a["z"], a["dt_bias"],
                            a["initial_state"], True, (0.0, math.inf))
    assert rel(y, ry) < 1e-5 and rel(s, rs) < 1e-5
    m = _mamba1_inputs(gen, seqlen=seqlen)
    m["A"] = -torch.exp(t(*m["A"].shape, scale=a_scale, gen=gen))
    y, s = run_op("MambaSelectiveScan", [v.numpy() for v in m.values()], {"delta_softplus": 1}, False)
    ry, rs = selective_scan_ref(m["u"], m["delta"], m["A"], m["B"], m["C"], m["D"], m["z"], m["delta_bias"],
                                m["ssm_state"], True)
    assert rel(y, ry) < 1e-5 and rel(s, rs) < 1e-5


@pytest.mark.parametrize("plugin", [True, False])
@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_state_update(plugin, arch, gen):
    if arch == "mamba1":
        a = _mamba1_inputs(gen, seqlen=1)
        args = dict(state=a["ssm_state"], x=a["u"][..., 0], dt=a["delta"][..., 0], A=a["A"], B=a["B"][..., 0],
                    C=a["C"][..., 0], D=a["D"], dt_bias=a["delta_bias"], z=a["z"][..., 0])
        limit = (0.0, math.inf)
    else:
        a = _mamba2_inputs(gen, seqlen=1)
        args = dict(state=a["initial_state"], x=a["x"][:, 0], dt=a["dt"][:, 0], A=a["A"], B=a["B"][:, 0],
                    C=a["C"][:, 0], D=a["D"], dt_bias=a["dt_bias"], z=None)
        limit = (0.0, 0.3)
    attrs = {"dt_softplus": 1, "dt_limit_lo": limit[0], "dt_limit_hi": limit[1]}
    y, s = run_op("MambaSelectiveStateUpdate", [None if v is None else v.numpy() for v in args.values()], attrs,
                  plugin)
    ry, rs = selective_state_update_ref(args["state"], args["x"], args["dt"], args["A"], args["B"], args["C"],
                                        args["D"], args["z"], args["dt_bias"], True, limit)
    assert rel(y, ry) < 1e-6 and rel(s, rs) < 1e-6


def test_float16_inputs_keep_state_dtype(gen):
    a = _mamba2_inputs(gen)
    inputs = [v.numpy().astype(np.float16) if k in ("x", "dt", "B", "C", "z") else v.numpy() for k, v in a.items()]
    y, s = run_op("Mamba2ChunkScan", inputs, {}, True)
    assert y.dtype == np.float16 and s.dtype == np.float32


def test_state_update_body_needs_the_state_rank():
    spec = get_op("MambaSelectiveStateUpdate")
    with pytest.raises(ValueError, match="state_rank"):
        spec.onnx_function(spec.onnx.defaults(), True)
    with pytest.raises(ValueError, match="state_rank must be 3"):
        spec.onnx_function(spec.onnx.defaults(), True, static={"state_rank": 5})
