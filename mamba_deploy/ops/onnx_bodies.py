"""Standard-op bodies of the custom Mamba ops: each `emit_*` appends the op's semantics to a GraphBuilder.

The same code builds a model-local FunctionProto (the plugin flavour's function bodies) and the inlined
nodes of `--ops standard`. Semantics are those of the torch references (`*_ref` in this package); all
math is float32 and outputs are cast back to the input dtypes.

The scans are `Scan` loops: Mamba1 over time steps carrying the (batch, dim, dstate) state, Mamba2 over
chunks of 64 steps computed as matrix products (the SSD form). Until 2026-12-02 both were opset-27
`LinearAttention(update_rule="gated")` over (batch * channel/head) rows, which ONNX Runtime 1.32 expands into
a Scan of tiny per-row products per step: 3.8x (Mamba1) and 1.6x (Mamba2) slower prefill. The conv is
Gather-over-windows + ReduceSum, because ONNX Runtime 1.32 has no kernel for the standard
`CausalConvWithState`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from onnx import TensorProto

from .onnx_graph import INT64_MAX, GraphBuilder

F32 = TensorProto.FLOAT


def _f32(g: GraphBuilder, x: str) -> str:
    return g("Cast", x, to=F32)


def _silu(g: GraphBuilder, x: str) -> str:
    return g("Mul", x, g("Sigmoid", x))


def _gate(g: GraphBuilder, y: str, z: Optional[str]) -> str:
    return y if z is None else g("Mul", y, _silu(g, _f32(g, z)))


def _discretize_dt(g: GraphBuilder, dt: str, dt_bias: str, softplus: int, lo: float, hi: float) -> str:
    """dt, dt_bias broadcastable -> float32 clamp(softplus(dt + dt_bias), lo, hi) as the references."""
    out = g("Add", _f32(g, dt), dt_bias)
    if softplus:
        out = g("Softplus", out)
    if lo > 0.0 or math.isfinite(hi):
        out = g("Clip", out, g.f32(lo), g.f32(hi))
    return out


def emit_causal_conv1d(g: GraphBuilder, x: str, weight: str, bias: str, conv_state: str,
                       activation: str = "silu") -> tuple[str, str]:
    """x: (batch, dim, seqlen) -> y like x, new state (batch, dim, width - 1): windows gathered, summed."""
    full = g("Concat", g("CastLike", conv_state, x), x, axis=2)  # (batch, dim, width - 1 + seqlen)
    width, seqlen = g.dim(weight, 1), g.dim(x, 2)
    zero, one = g.const(0), g.const(1)
    steps = g("Range", zero, g("Squeeze", seqlen), one)
    taps = g("Range", zero, g("Squeeze", width), one)
    index = g("Add", g.unsqueeze(steps, 1), g.unsqueeze(taps, 0))  # (seqlen, width): t + k
    windows = g("Gather", _f32(g, full), index, axis=2)  # (batch, dim, seqlen, width)
    y = g("ReduceSum", g("Mul", windows, g.unsqueeze(_f32(g, weight), 1)), g.const([3]), keepdims=0)
    y = g("Add", y, g.unsqueeze(_f32(g, bias), 1))
    if activation in ("silu", "swish"):
        y = _silu(g, y)
    new_state = g("Slice", full, g("Sub", one, width), g.const([INT64_MAX]), g.const([2]))
    return g("CastLike", y, x), g("CastLike", new_state, conv_state)


def emit_causal_conv1d_update(g: GraphBuilder, x: str, weight: str, bias: str, conv_state: str,
                              activation: str = "silu") -> tuple[str, str]:
    """x: (batch, dim) -> y: (batch, dim), new state: the window [state, x] (batch, dim, width) times the taps
    (no gathered windows: a step has one)."""
    window = g("Concat", g("CastLike", conv_state, x), g.unsqueeze(x, 2), axis=2)
    y = g("ReduceSum", g("Mul", _f32(g, window), _f32(g, weight)), g.const([2]), keepdims=0)
    y = g("Add", y, _f32(g, bias))
    if activation in ("silu", "swish"):
        y = _silu(g, y)
    new_state = g("Slice", window, g.const([1]), g.const([INT64_MAX]), g.const([2]))
    return g("CastLike", y, x), g("CastLike", new_state, conv_state)


def emit_selective_scan(g: GraphBuilder, u: str, delta: str, A: str, B: str, C: str, D: str, delta_bias: str,
                        ssm_state: str, z: Optional[str] = None, delta_softplus: int = 1) -> tuple[str, str]:
    """Mamba1 scan as a `Scan` over time carrying the state (batch, dim, dstate): per step
    h = exp(dt_t*A)*h + (dt_t*u_t) B_t and y_t = h C_t (one (dim, dstate) x (dstate, 1) product per row; 20%
    faster than Mul + ReduceSum, same error: 3.4e-6 on the logits of a random mamba-130m).
    LinearAttention with d_v = 1 over (batch * dim) rows ran 3.8x slower on ONNX Runtime's CPU provider (a
    mamba-130m prefill of 512 tokens, 2 threads: 89 -> 342 tokens/s): it expands into a Scan doing
    batch * dim tiny products per step, over B and C copied per channel."""
    dt = _discretize_dt(g, delta, g.unsqueeze(delta_bias, 1), delta_softplus, 0.0, math.inf)  # (b, d, l)
    u32 = _f32(g, u)
    to_time = [2, 0, 1]  # (b, x, l) -> (l, b, x): Scan walks axis 0
    scanned = [g("Transpose", t, perm=to_time) for t in (dt, g("Mul", dt, u32), _f32(g, B), _f32(g, C))]
    body = _scan_step_body(g)
    new_state, _, ys = g("Scan", _f32(g, ssm_state), _f32(g, A), *scanned, outputs=3, body=body,
                         num_scan_inputs=4)
    y = g("Add", g("Transpose", ys, perm=[1, 2, 0]), g("Mul", u32, g.unsqueeze(D, 1)))
    y = _gate(g, y, z)
    return g("CastLike", y, u), g("CastLike", new_state, ssm_state)


def _scan_step_body(g: GraphBuilder):
    """The Scan body of emit_selective_scan: (h, A, dt_t, du_t, B_t, C_t) -> (h', A, y_t)."""
    from onnx import helper

    s = GraphBuilder(prefix=g.fresh("scan_body") + "_")
    names = ["h", "A", "dt_t", "du_t", "B_t", "C_t"]
    h, A, dt_t, du_t, B_t, C_t = (s.fresh(n) for n in names)
    decay = s("Exp", s("Mul", s.unsqueeze(dt_t, 2), A))  # (b, d, n)
    h_new = s("Add", s("Mul", h, decay), s("Mul", s.unsqueeze(du_t, 2), s.unsqueeze(B_t, 1)))
    y_t = s("Squeeze", s("MatMul", h_new, s.unsqueeze(C_t, 2)), s.const([2]))  # (b, d)
    outputs = [h_new, s("Identity", A), y_t]
    ranks = [3, 2, 2, 2, 2, 2]
    info = [helper.make_tensor_value_info(n, F32, [None] * r) for n, r in zip((h, A, dt_t, du_t, B_t, C_t), ranks)]
    out_info = [helper.make_tensor_value_info(n, F32, [None] * r) for n, r in zip(outputs, (3, 2, 2))]
    return helper.make_graph(s.nodes, s.fresh("scan_step"), info, out_info)


SSD_CHUNK = 64  # time steps per Scan iteration of the Mamba2 body (its products are (64, 64) per head)


def emit_chunk_scan(g: GraphBuilder, x: str, dt: str, A: str, B: str, C: str, D: str, dt_bias: str,
                    initial_state: str, z: Optional[str] = None, chunk_size: int = 256, dt_softplus: int = 1,
                    dt_limit_lo: float = 0.0, dt_limit_hi: float = math.inf) -> tuple[str, str]:
    """Mamba2 SSD scan, chunked: a `Scan` over chunks of SSD_CHUNK steps (the sequence zero-padded to whole
    chunks: a padded step has dt = 0, so it neither decays nor feeds the state), each chunk in matrix products
    (_ssd_chunk_body). `chunk_size` is the kernels' tiling; the result does not depend on it."""
    T = SSD_CHUNK
    seqlen = g.dim(x, 1)
    dtf = _discretize_dt(g, dt, dt_bias, dt_softplus, dt_limit_lo, dt_limit_hi)  # (batch, seqlen, nheads)
    x32 = _f32(g, x)
    pad = g("Mod", g("Sub", g.const([T]), g("Mod", seqlen, g.const([T]))), g.const([T]))
    chunks = g("Div", g("Add", seqlen, pad), g.const([T]))

    def by_chunk(t: str, rank: int) -> str:  # (batch, seqlen, ...) -> (chunks, batch, T, ...), zero-padded
        pads = g("Concat", g.const([0] * (rank + 1)), pad, g.const([0] * (rank - 2)), axis=0)
        t = g("Pad", t, pads)
        t = g("Reshape", t, g.shape(g.dim(t, 0), chunks, T, g("Shape", t, start=2)))
        return g("Transpose", t, perm=[1, 0, *range(2, rank + 1)])

    scanned = [by_chunk(g("Mul", x32, g.unsqueeze(dtf, 3)), 4), by_chunk(g("Mul", dtf, A), 3),
               by_chunk(_f32(g, B), 4), by_chunk(_f32(g, C), 4)]
    new_state, ys = g("Scan", _f32(g, initial_state), *scanned, outputs=2, body=_ssd_chunk_body(g, T),
                      num_scan_inputs=4)
    ys = g("Transpose", ys, perm=[1, 0, 2, 3, 4])  # (batch, chunks, T, H, P)
    ys = g("Reshape", ys, g.shape(g.dim(ys, 0), -1, g("Shape", ys, start=3)))
    y = g("Slice", ys, g.const([0]), seqlen, g.const([1]))
    y = _gate(g, g("Add", y, g("Mul", x32, g.unsqueeze(D, 1))), z)
    return g("CastLike", y, x), g("CastLike", new_state, initial_state)


def _ssd_chunk_body(g: GraphBuilder, T: int):
    """Scan body: (S (b, H, P, N), xdt (b, T, H, P), a = dt*A (b, T, H), B, C (b, T, G, N)) -> (S', y (b, T, H, P)).
    With seg[t, s] = a_{s+1} + ... + a_t (summed per segment, not as a difference of running sums) and
    L = exp(seg) on t >= s: y = (C B^T * L) xdt + exp(cum) * C S^T, S' = exp(cum_last) S + (w * xdt)^T B,
    w_s = L[T-1, s]."""
    from onnx import helper

    s = GraphBuilder(prefix=g.fresh("ssd_body") + "_")
    S, xdt, a, B, C = (s.fresh(n) for n in ("S", "xdt", "a", "B", "C"))
    strict = s.const(np.tril(np.ones((T, T), np.float32), -1), np.float32)
    lower = s.const(np.tril(np.ones((T, T), np.float32)), np.float32)
    aH = s("Transpose", a, perm=[0, 2, 1])  # (b, H, T)
    seg = s("CumSum", s("Mul", s.unsqueeze(aH, 3), strict), s.const(2))  # (b, H, T, T)
    L = s("Mul", s("Exp", seg), lower)
    cum = s("CumSum", aH, s.const(2))  # (b, H, T)
    batch, nheads = s.dim(S, 0), s.dim(S, 1)

    def per_head(t):  # (b, T, G, N) -> (b, H, T, N)
        t = s.unsqueeze(s("Transpose", t, perm=[0, 2, 1, 3]), 2)  # (b, G, 1, T, N)
        heads = s.shape(batch, s.dim(t, 1), s("Div", nheads, s.dim(t, 1)), T, s.dim(t, 4))
        return s("Reshape", s("Expand", t, heads), s.shape(batch, nheads, T, s.dim(t, 4)))

    Bh, Ch = per_head(B), per_head(C)
    X = s("Transpose", xdt, perm=[0, 2, 1, 3])  # (b, H, T, P)
    y = s("MatMul", s("Mul", s("MatMul", Ch, s("Transpose", Bh, perm=[0, 1, 3, 2])), L), X)
    y_prev = s("MatMul", Ch, s("Transpose", S, perm=[0, 1, 3, 2]))  # (b, H, T, P)
    y = s("Add", y, s("Mul", y_prev, s.unsqueeze(s("Exp", cum), 3)))
    w = s("Gather", L, s.const(T - 1), axis=2)  # (b, H, T): exp(a_{s+1} + ... + a_{T-1})
    last = s("Exp", s("Gather", cum, s.const(T - 1), axis=2))  # (b, H)
    feed = s("MatMul", s("Transpose", s("Mul", X, s.unsqueeze(w, 3)), perm=[0, 1, 3, 2]), Bh)  # (b, H, P, N)
    S_new = s("Add", s("Mul", S, s.unsqueeze(last, 2, 3)), feed)
    y = s("Transpose", y, perm=[0, 2, 1, 3])  # (b, T, H, P)
    value = [helper.make_tensor_value_info(n, F32, [None] * r) for n, r in ((S, 4), (xdt, 4), (a, 3), (B, 4), (C, 4))]
    out = [helper.make_tensor_value_info(n, F32, [None] * 4) for n in (S_new, y)]
    return helper.make_graph(s.nodes, s.fresh("ssd_chunk"), value, out)


def emit_state_update(g: GraphBuilder, state: str, x: str, dt: str, A: str, B: str, C: str, D: str, dt_bias: str,
                      z: Optional[str] = None, dt_softplus: int = 1, dt_limit_lo: float = 0.0,
                      dt_limit_hi: float = math.inf, *, state_rank: int) -> tuple[str, str]:
    """One step in the state's own shape: Mamba1 (state_rank 3) or Mamba2 (state_rank 4; grouped B/C act on
    (batch, G, heads/G * headdim, N) views, never expanded per head). Written for ONNX Runtime's CPU provider:
    - the new state is one Add read by nothing else, so it lands straight in the bound output (a second
      reader keeps a copy node; a reshape after it would be a copy too);
    - y = new state . C is taken as (decayed state) . C (one MatMul) + (dt x) (B . C), so it reads no
      state after the Add;
    - shapes come from Reshape's 0 / -1 and the inputs' static dims, which ONNX Runtime folds."""
    if state_rank not in (3, 4):
        raise ValueError(f"state_rank must be 3 (Mamba1) or 4 (Mamba2), got {state_rank!r}")
    dtf = _discretize_dt(g, dt, dt_bias, dt_softplus, dt_limit_lo, dt_limit_hi)  # (batch, dim or nheads)
    x32, s32, B32, C32 = (_f32(g, t) for t in (x, state, B, C))
    bc = g("ReduceSum", g("Mul", B32, C32), g.const([-1]), keepdims=1)  # (b, 1) or (b, G, 1)
    if state_rank == 3:  # state (b, dim, N); x, dt (b, dim); A (dim, N); B, C (b, N)
        decayed = g("Mul", s32, g("Exp", g("Mul", g.unsqueeze(dtf, 2), A)))  # (b, dim, N)
        xdt = g("Mul", x32, dtf)  # (b, dim)
        new_state = g("Add", decayed, g("Mul", g.unsqueeze(xdt, 2), g.unsqueeze(B32, 1)))
        y = g("Squeeze", g("MatMul", decayed, g.unsqueeze(C32, 2)), g.const([2]))
        y = g("Add", y, g("Mul", xdt, bc))
        skip = g("Mul", x32, D)
    else:  # state (b, H, P, N); x (b, H, P); dt (b, H); A, D (H,); B, C (b, G, N)
        dt4 = g.unsqueeze(dtf, 2, 3)
        decayed = g("Mul", s32, g("Exp", g("Mul", dt4, g.unsqueeze(A, 1, 2))))  # (b, H, P, N)
        by_group = g("Concat", g.const([0]), g.dim(B, 1), g.const([-1, 1]), axis=0)
        xdt = g("Reshape", g("Mul", g.unsqueeze(x32, 3), dt4), by_group)  # (b, G, H/G * P, 1)
        update = g("Mul", xdt, g.unsqueeze(B32, 2))  # (b, G, H/G * P, N)
        new_state = g("Add", decayed, g("Reshape", update, g("Shape", state)))
        y = g("MatMul", g("Reshape", decayed, g("Shape", update)), g.unsqueeze(C32, 3))  # (b, G, H/G * P, 1)
        y = g("Reshape", g("Add", y, g("Mul", xdt, g.unsqueeze(bc, 3))), g("Shape", x))
        skip = g("Mul", x32, g.unsqueeze(D, 1))
    y = _gate(g, g("Add", y, skip), z)
    return g("CastLike", y, x), g("CastLike", new_state, state)
