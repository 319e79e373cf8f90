"""CUDA bindings of the Mamba ops: torch tensors in, the native kernels (plugins/) launched.

Each function has the signature of its reference (`*_ref` in this package) plus keyword-only
`out=` / `state_out=` tensors to write into (state_out may be the input state: in-place update).
Inputs are checked (device, dtype, shape); strides are passed to the kernels, so views such as
slices of an in_proj output work without copies. Launches go on the current torch stream with no
host synchronisation. Importing this module never loads the library; the first call does.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from . import _lib
from ._tensors import DTYPE_CODES, current_stream, data_ptr

is_available = _lib.is_available
unavailable_reason = _lib.unavailable_reason


def _code(t: torch.Tensor, name: str) -> int:
    if t.dtype not in DTYPE_CODES:
        raise ValueError(f"{name}: dtype {t.dtype} not supported (float32, float16, bfloat16)")
    return DTYPE_CODES[t.dtype]


def _check(t: Optional[torch.Tensor], name: str, shape: Sequence[int], device: torch.device) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    _code(t, name)


def _strides(t: Optional[torch.Tensor], dims: Sequence[Optional[int]]) -> list[int]:
    """Element strides of `t` along `dims` (None: a broadcast axis, stride 0)."""
    if t is None:
        return [0] * len(dims)
    return [0 if d is None else t.stride(d) for d in dims]


def _set(params, prefix: str, names: Sequence[str], values: Sequence[int]) -> None:
    for n, v in zip(names, values):
        setattr(params, f"{prefix}_{n}_stride", v)


def _new_or(out: Optional[torch.Tensor], name: str, shape, dtype, device) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    _check(out, name, shape, device)
    if out.dtype != dtype:
        raise ValueError(f"{name}: dtype {out.dtype}, expected {dtype}")
    return out


def _cuda_device(x: torch.Tensor, name: str) -> torch.device:
    if not isinstance(x, torch.Tensor) or not x.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor")
    return x.device


def state_rows_arg(state_rows: Optional[torch.Tensor], batch: int, device: torch.device, name: str) -> Optional[int]:
    """The `state_rows` pointer of a params struct (None: NULL, batch row b uses state row b), after checking
    that it is a contiguous (batch,) int64 tensor on `device`. Its values (distinct rows within the state
    tensors) are the caller's to keep: checking them would need a host sync."""
    if state_rows is None:
        return None
    if not isinstance(state_rows, torch.Tensor) or state_rows.dtype != torch.int64 or state_rows.device != device:
        raise ValueError(f"{name}: state_rows must be an int64 tensor on {device}")
    if tuple(state_rows.shape) != (batch,) or (batch > 1 and state_rows.stride(0) != 1):
        raise ValueError(f"{name}: state_rows must be a contiguous ({batch},) tensor, got shape "
                         f"{tuple(state_rows.shape)}")
    return state_rows.data_ptr()


def _pool(state, state_out, state_rows, batch: int, dev: torch.device, name: str) -> tuple[Optional[int], int]:
    """(state_rows pointer, rows of the state tensors): (None, batch) without state_rows; with it, the state
    and state_out (both required; state_out may be the state) are pools of any number of rows."""
    rows = state_rows_arg(state_rows, batch, dev, name)
    if rows is None:
        return None, batch
    if not isinstance(state, torch.Tensor) or state.dim() < 2 or state_out is None:
        raise ValueError(f"{name}: state_rows needs a state and state_out (state pools; state_out may be the state)")
    return rows, state.shape[0]


def _same_dtype(ref: torch.Tensor, **tensors: Optional[torch.Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype != ref.dtype:
            raise ValueError(f"{name}: dtype {t.dtype}, expected {ref.dtype} (the dtype of x)")


# ---- causal conv1d -------------------------------------------------------------------------------

def causal_conv1d(x, weight, bias=None, conv_state=None, activation="silu", *, out=None, state_out=None,
                  state_rows=None):
    """`causal_conv1d_ref` on the GPU. x: (batch, dim, seqlen) -> (y, new conv state).
    state_rows: optional (batch,) int64 CUDA tensor; batch row b then reads conv_state[state_rows[b]] and
    writes state_out[state_rows[b]] (both required, any number of rows: a state pool)."""
    return _conv(x, weight, bias, conv_state, activation, out, state_out, state_rows, "MambaCausalConv1d")


def causal_conv1d_update(x, weight, bias=None, conv_state=None, activation="silu", *, out=None, state_out=None,
                         state_rows=None):
    """`causal_conv1d_update_ref` on the GPU. x: (batch, dim); state_out=conv_state updates in place;
    state_rows as in causal_conv1d."""
    if x.dim() != 2:
        raise ValueError(f"x: expected (batch, dim), got {tuple(x.shape)}")
    y, st = _conv(x.unsqueeze(-1), weight, bias, conv_state, activation,
                  None if out is None else out.unsqueeze(-1), state_out, state_rows, "MambaCausalConv1dUpdate")
    return y.squeeze(-1), st


def _conv(x, weight, bias, conv_state, activation, out, state_out, state_rows, op):
    if activation not in (None, "silu", "swish", "none"):
        raise ValueError(f"activation must be silu or None, got {activation!r}")
    dev = _cuda_device(x, "x")
    if x.dim() != 3 or weight.dim() != 2:
        raise ValueError(f"x must be (batch, dim, seqlen) and weight (dim, width), got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    _check(weight, "weight", (dim, width), dev)
    _check(bias, "bias", (dim,), dev)
    if bias is not None and bias.dtype != weight.dtype:
        raise ValueError("bias: dtype must match weight")
    rows, pool = _pool(conv_state, state_out, state_rows, batch, dev, "causal_conv1d")
    _check(conv_state, "conv_state", (pool, dim, width - 1), dev)
    state_dtype = conv_state.dtype if conv_state is not None else x.dtype
    y = _new_or(out, "out", (batch, dim, seqlen), x.dtype, dev)
    st = _new_or(state_out, "state_out", (pool, dim, width - 1), state_dtype, dev)
    p = _lib.CausalConv1dParams(batch=batch, dim=dim, seqlen=seqlen, width=width, state_rows=rows,
                                silu=int(activation in ("silu", "swish")), x_dtype=_code(x, "x"),
                                weight_dtype=_code(weight, "weight"), state_dtype=DTYPE_CODES[state_dtype],
                                x=data_ptr(x), weight=data_ptr(weight), bias=data_ptr(bias), state_in=data_ptr(conv_state),
                                state_out=data_ptr(st), y=data_ptr(y))
    _set(p, "x", ("batch", "dim", "seq"), x.stride())
    _set(p, "weight", ("dim", "width"), weight.stride())
    p.bias_stride = 0 if bias is None else bias.stride(0)
    _set(p, "state_in", ("batch", "dim", "width"), _strides(conv_state, (0, 1, 2)))
    _set(p, "state_out", ("batch", "dim", "width"), st.stride())
    _set(p, "y", ("batch", "dim", "seq"), y.stride())
    _lib.launch(_lib.op_kernel(op), p, current_stream(dev))
    return y, st


# ---- selective SSM (Mamba1 scan, Mamba2 chunk scan, state update) --------------------------------

_AXES = ("batch", "seq", "head", "dim")
_BC_AXES = ("batch", "seq", "group", "state")
_STATE_AXES = ("batch", "head", "dim", "state")


def _ssm_params(sizes, dtypes, dt_softplus, dt_limit, tensors, axes):
    """Fill SsmParams. tensors/axes: name -> tensor, and the tensor's dim for each index-space axis."""
    batch, seqlen, nheads, headdim, dstate, ngroups = sizes
    lo, hi = dt_limit
    p = _lib.SsmParams(batch=batch, seqlen=seqlen, nheads=nheads, headdim=headdim, dstate=dstate,
                       ngroups=ngroups, x_dtype=dtypes[0], param_dtype=dtypes[1], state_dtype=dtypes[2],
                       dt_softplus=int(bool(dt_softplus)), dt_min=float(lo), dt_max=float(hi))
    names = {"x": _AXES, "dt": _AXES, "z": _AXES, "y": _AXES, "B": _BC_AXES, "C": _BC_AXES,
             "state_in": _STATE_AXES, "state_out": _STATE_AXES, "A": ("head", "state"), "D": ("head",),
             "dt_bias": ("head",)}
    for name, t in tensors.items():
        setattr(p, name, data_ptr(t))
        _set(p, name, names[name], _strides(t, axes[name]))
    return p


def _param_dtype(A, D, dt_bias) -> int:
    code = _code(A, "A")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and t.dtype != A.dtype:
            raise ValueError(f"{name}: dtype {t.dtype}, expected {A.dtype} (the dtype of A)")
    return code


def _state_dtype(state: Optional[torch.Tensor], x: torch.Tensor) -> torch.dtype:
    dtype = state.dtype if state is not None else torch.float32
    if dtype not in (torch.float32, x.dtype):
        raise ValueError(f"ssm state: dtype {dtype}, expected float32 or {x.dtype}")
    return dtype


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, ssm_state=None, delta_softplus=True,
                   *, out=None, state_out=None, state_rows=None):
    """`selective_scan_ref` on the GPU. u, delta, z: (batch, dim, seqlen); B, C: (batch, dstate, seqlen).
    state_rows: optional (batch,) int64 CUDA tensor: batch row b starts from ssm_state[state_rows[b]] and
    ends in state_out[state_rows[b]] (pools of any number of rows, both required)."""
    dev = _cuda_device(u, "u")
    if u.dim() != 3 or A.dim() != 2:
        raise ValueError(f"u must be (batch, dim, seqlen), A (dim, dstate); got {tuple(u.shape)}, {tuple(A.shape)}")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    rows, pool = _pool(ssm_state, state_out, state_rows, batch, dev, "selective_scan")
    for name, t, shape in (("delta", delta, u.shape), ("z", z, u.shape), ("A", A, (dim, dstate)),
                           ("B", B, (batch, dstate, seqlen)), ("C", C, (batch, dstate, seqlen)),
                           ("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)),
                           ("ssm_state", ssm_state, (pool, dim, dstate))):
        _check(t, name, shape, dev)
    _same_dtype(u, delta=delta, z=z, B=B, C=C)
    sdt = _state_dtype(ssm_state, u)
    y = _new_or(out, "out", u.shape, u.dtype, dev)
    st = _new_or(state_out, "state_out", (pool, dim, dstate), sdt, dev)
    seq3, st3 = (0, 2, 1, None), (0, 1, None, 2)
    p = _ssm_params((batch, seqlen, dim, 1, dstate, 1), (_code(u, "u"), _param_dtype(A, D, delta_bias), DTYPE_CODES[sdt]),
                    delta_softplus, (0.0, math.inf),
                    dict(x=u, dt=delta, z=z, y=y, B=B, C=C, A=A, D=D, dt_bias=delta_bias, state_in=ssm_state,
                         state_out=st),
                    dict(x=seq3, dt=seq3, z=seq3, y=seq3, B=(0, 2, None, 1), C=(0, 2, None, 1), A=(0, 1), D=(0,),
                         dt_bias=(0,), state_in=st3, state_out=st3))
    p.state_rows = rows
    _call_scan("MambaSelectiveScan", p, dev)
    return y, st


def chunk_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=True,
               dt_limit=(0.0, math.inf), *, out=None, state_out=None, state_rows=None, norm_weight=None,
               norm_sumsq=None):
    """`chunk_scan_ref` on the GPU (chunk_size only shapes the reference's arithmetic, not the result).

    x, z: (batch, seqlen, nheads, headdim); dt: (batch, seqlen, nheads); B, C: (batch, seqlen, ngroups, dstate).
    state_rows: as in selective_scan (initial_state and state_out then pools of any number of rows).
    norm_weight (nheads * headdim,) in x's dtype and norm_sumsq (batch, seqlen, nheads) float32 (unit last
    stride), with z: the gated RMSNorm of one group folded in (md_ssm_params.norm_*): out <- g * norm_weight for
    the gated output g, norm_sumsq <- the sum of g^2 over each head; rmsnorm(g) * w is then out * rsqrt(
    norm_sumsq.sum(-1) / (nheads * headdim) + eps), one factor a token.
    """
    dev = _cuda_device(x, "x")
    if x.dim() != 4 or B.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), B (batch, seqlen, ngroups, dstate); "
                         f"got {tuple(x.shape)}, {tuple(B.shape)}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    rows, pool = _pool(initial_state, state_out, state_rows, batch, dev, "chunk_scan")
    if rows is not None:  # a pool: any number of rows (else _check_mamba2 checks the batch's)
        _check(initial_state, "initial_state", (pool, nheads, headdim, dstate), dev)
    _check_mamba2(dev, x, dt, A, B, C, D, z, dt_bias, initial_state if rows is None else None, (batch, seqlen, nheads),
                  (batch, seqlen, ngroups, dstate))
    sdt = _state_dtype(initial_state, x)
    y = _new_or(out, "out", x.shape, x.dtype, dev)
    st = _new_or(state_out, "state_out", (pool, nheads, headdim, dstate), sdt, dev)
    seq4, st4 = (0, 1, 2, 3), (0, 1, 2, 3)
    p = _ssm_params((batch, seqlen, nheads, headdim, dstate, ngroups),
                    (_code(x, "x"), _param_dtype(A, D, dt_bias), DTYPE_CODES[sdt]), dt_softplus, dt_limit,
                    dict(x=x, dt=dt, z=z, y=y, B=B, C=C, A=A, D=D, dt_bias=dt_bias, state_in=initial_state,
                         state_out=st),
                    dict(x=seq4, dt=(0, 1, 2, None), z=seq4, y=seq4, B=seq4, C=seq4, A=(0, None), D=(0,),
                         dt_bias=(0,), state_in=st4, state_out=st4))
    p.state_rows = rows
    _fold_norm_args(p, norm_weight, norm_sumsq, z, x)
    _call_scan("Mamba2ChunkScan", p, dev)
    return y, st


def _fold_norm_args(p, norm_weight, norm_sumsq, z, x) -> None:
    """chunk_scan's folded gated norm into its params `p` (nothing without it), checked."""
    if norm_weight is None and norm_sumsq is None:
        return
    if norm_weight is None or norm_sumsq is None or z is None:
        raise ValueError("the folded gated norm takes norm_weight and norm_sumsq together, and z")
    batch, seqlen, nheads, headdim = x.shape
    _check(norm_weight, "norm_weight", (nheads * headdim,), x.device)
    _check(norm_sumsq, "norm_sumsq", (batch, seqlen, nheads), x.device)
    _same_dtype(x, norm_weight=norm_weight)
    if not norm_weight.is_contiguous() or norm_sumsq.dtype != torch.float32 or norm_sumsq.stride(2) != 1:
        raise ValueError("norm_weight must be contiguous, norm_sumsq float32 with a unit last stride")
    p.norm_weight, p.norm_sumsq = norm_weight.data_ptr(), norm_sumsq.data_ptr()
    p.norm_sumsq_batch_stride, p.norm_sumsq_seq_stride = norm_sumsq.stride(0), norm_sumsq.stride(1)


def _call_scan(op: str, params, dev: torch.device) -> None:
    """Launch a prefill scan with the scratch its time-parallel form wants (torch's caching allocator:
    no cudaMalloc on the hot path, and safe under CUDA-graph capture)."""
    nbytes = _lib.scan_workspace_bytes(params)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=dev) if nbytes else None
    _lib.launch(_lib.op_kernel(op), params, current_stream(dev), (workspace.data_ptr(), nbytes) if nbytes else None)


def _check_mamba2(dev, x, dt, A, B, C, D, z, dt_bias, state, dt_shape, bc_shape):
    nheads, headdim, ngroups, dstate = x.shape[-2], x.shape[-1], bc_shape[-2], bc_shape[-1]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    for name, t, shape in (("dt", dt, dt_shape), ("z", z, x.shape), ("A", A, (nheads,)), ("B", B, bc_shape),
                           ("C", C, bc_shape), ("D", D, (nheads,)), ("dt_bias", dt_bias, (nheads,)),
                           ("state", state, (x.shape[0], nheads, headdim, dstate))):
        _check(t, name, shape, dev)
    _same_dtype(x, dt=dt, z=z, B=B, C=C)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True,
                           dt_limit=(0.0, math.inf), *, out=None, state_out=None, state_rows=None):
    """`selective_state_update_ref` on the GPU; state_out=state updates in place. Rank-3 state: Mamba1
    (x, dt, z (batch, dim); B, C (batch, dstate)); rank 4: Mamba2 (x, z (batch, nheads, headdim);
    dt (batch, nheads); B, C (batch, ngroups, dstate)). state_rows: optional (batch,) int64 CUDA tensor;
    batch row b then updates row state_rows[b] of state / state_out (pools of any number of rows;
    state_out required)."""
    dev = _cuda_device(x, "x")
    sdt = _state_dtype(state, x)
    indexed = state_rows is not None and x.dim() > 0
    if state.dim() == 3:
        pool, dim, dstate = state.shape
        batch = x.shape[0] if indexed else pool
        for name, t, shape in (("x", x, (batch, dim)), ("dt", dt, (batch, dim)), ("z", z, (batch, dim)),
                               ("A", A, (dim, dstate)), ("B", B, (batch, dstate)), ("C", C, (batch, dstate)),
                               ("D", D, (dim,)), ("dt_bias", dt_bias, (dim,)), ("state", state, state.shape)):
            _check(t, name, shape, dev)
        _same_dtype(x, dt=dt, z=z, B=B, C=C)
        sizes = (batch, 1, dim, 1, dstate, 1)
        row, bc, st = (0, None, 1, None), (0, None, None, 1), (0, 1, None, 2)
        a_axes = (0, 1)
    elif state.dim() == 4:
        pool, nheads, headdim, dstate = state.shape
        batch = x.shape[0] if indexed else pool
        if B.dim() != 3:
            raise ValueError(f"B: expected (batch, ngroups, dstate), got {tuple(B.shape)}")
        ngroups = B.shape[1]
        if indexed:  # a pool: any number of rows (else _check_mamba2 checks the batch's)
            _check(state, "state", state.shape, dev)
        _check_mamba2(dev, x, dt, A, B, C, D, z, dt_bias, None if indexed else state, (batch, nheads),
                      (batch, ngroups, dstate))
        if tuple(x.shape) != (batch, nheads, headdim):
            raise ValueError(f"x: shape {tuple(x.shape)}, expected {(batch, nheads, headdim)}")
        sizes = (batch, 1, nheads, headdim, dstate, ngroups)
        row, bc, st = (0, None, 1, 2), (0, None, 1, 2), (0, 1, 2, 3)
        a_axes = (0, None)
    else:
        raise ValueError(f"state must have rank 3 (Mamba1) or 4 (Mamba2), got {tuple(state.shape)}")
    rows, _ = _pool(state, state_out, state_rows, batch, dev, "selective_state_update")
    y = _new_or(out, "out", x.shape, x.dtype, dev)
    so = _new_or(state_out, "state_out", state.shape, sdt, dev)
    dt_axes = row if state.dim() == 3 else (0, None, 1, None)
    p = _ssm_params(sizes, (_code(x, "x"), _param_dtype(A, D, dt_bias), DTYPE_CODES[sdt]), dt_softplus, dt_limit,
                    dict(x=x, dt=dt, z=z, y=y, B=B, C=C, A=A, D=D, dt_bias=dt_bias, state_in=state, state_out=so),
                    dict(x=row, dt=dt_axes, z=row, y=row, B=bc, C=bc, A=a_axes, D=(0,), dt_bias=(0,), state_in=st,
                         state_out=st))
    p.state_rows = rows
    _lib.launch(_lib.op_kernel("MambaSelectiveStateUpdate"), p, current_stream(dev))
    return y, so


# ---- norms -----------------------------------------------------------------------------------------

def _rows(t: torch.Tensor, name: str, hidden: int) -> tuple[torch.Tensor, int]:
    """(..., hidden) -> a (rows, hidden) view with unit last stride, and its row stride."""
    if t.shape[-1] != hidden or t.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must be {hidden} with stride 1, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")
    try:
        v = t.view(-1, hidden)
    except RuntimeError:
        raise ValueError(f"{name}: leading dims cannot be flattened into rows without a copy") from None
    return v, v.stride(0) if v.shape[0] > 1 else hidden


def add_norm(x, residual, weight, bias=None, eps=1e-5, is_rms=True, residual_in_fp32=True, out_dtype=None,
             *, out=None, residual_out=None):
    """`add_norm_ref` on the GPU; residual_out=residual updates the residual stream in place."""
    dev = _cuda_device(x, "x")
    hidden = x.shape[-1]
    _check(residual, "residual", x.shape, dev)
    _check(weight, "weight", (hidden,), dev)
    _check(bias, "bias", (hidden,), dev)
    res_dtype = torch.float32 if residual_in_fp32 else x.dtype
    o = _new_or(out, "out", x.shape, out_dtype or x.dtype, dev)
    r = _new_or(residual_out, "residual_out", x.shape, res_dtype, dev)
    (xv, xs), (_, os_), (_, rs) = _rows(x, "x", hidden), _rows(o, "out", hidden), _rows(r, "residual_out", hidden)
    res_stride = _rows(residual, "residual", hidden)[1] if residual is not None else 0
    if bias is not None and bias.dtype != weight.dtype:
        raise ValueError("bias: dtype must match weight")
    p = _lib.AddNormParams(rows=xv.shape[0], hidden=hidden, is_rms=int(bool(is_rms)), eps=float(eps),
                           x_dtype=_code(x, "x"), residual_dtype=_code(residual, "residual") if residual is not None else 0,
                           residual_out_dtype=DTYPE_CODES[res_dtype], out_dtype=DTYPE_CODES[o.dtype],
                           weight_dtype=_code(weight, "weight"), x=data_ptr(x), x_row_stride=xs, residual=data_ptr(residual),
                           residual_row_stride=res_stride, weight=data_ptr(weight), bias=data_ptr(bias), out=data_ptr(o),
                           out_row_stride=os_, residual_out=data_ptr(r), residual_out_row_stride=rs)
    _lib.launch(_lib.ADD_NORM, p, current_stream(dev))
    return o, r


def gated_rms_norm(x, z, weight, eps=1e-5, group_size=None, *, out=None):
    """`gated_rms_norm_ref` on the GPU. x, z: (..., d); weight: (d,)."""
    dev = _cuda_device(x, "x")
    d = x.shape[-1]
    group_size = group_size or d
    if d % group_size:
        raise ValueError(f"group_size {group_size} must divide {d}")
    _check(z, "z", x.shape, dev)
    _check(weight, "weight", (d,), dev)
    _same_dtype(x, z=z)
    o = _new_or(out, "out", x.shape, x.dtype, dev)
    (xv, xs), (_, os_) = _rows(x, "x", d), _rows(o, "out", d)
    zs = _rows(z, "z", d)[1] if z is not None else 0
    p = _lib.GatedRmsNormParams(rows=xv.shape[0], hidden=d, group_size=group_size, eps=float(eps),
                                x_dtype=_code(x, "x"), out_dtype=DTYPE_CODES[o.dtype], weight_dtype=_code(weight, "weight"),
                                x=data_ptr(x), x_row_stride=xs, z=data_ptr(z), z_row_stride=zs, weight=data_ptr(weight),
                                out=data_ptr(o), out_row_stride=os_)
    _lib.launch(_lib.GATED_RMS_NORM, p, current_stream(dev))
    return o



# ---- the sampler's uniforms ------------------------------------------------------------------------

def philox_uniform_cuda(seeds: torch.Tensor, steps: torch.Tensor, rows: Optional[torch.Tensor] = None, *,
                        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`ops.philox.philox_uniform` on the GPU: out[i] = uniform(seeds[r], steps[r]), r = rows[i] (or i).

    seeds, steps: (m,) int64 (the bits of uint64 values); rows: (n,) int64 indices into them, or None
    (n = m); out: (n,) float32. All contiguous, on one CUDA device."""
    dev = _cuda_device(seeds, "seeds")
    n = seeds.shape[0] if rows is None else rows.shape[0]
    for name, t, length in (("seeds", seeds, seeds.shape[0]), ("steps", steps, seeds.shape[0]), ("rows", rows, n)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.device != dev or t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D int64 tensor on {dev}")
        if t.shape[0] != length or not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor of length {length}, got shape {tuple(t.shape)}")
    u = _new_or(out, "out", (n,), torch.float32, dev)
    if not u.is_contiguous():
        raise ValueError("out: must be contiguous")
    p = _lib.PhiloxParams(n=n, seeds=data_ptr(seeds), steps=data_ptr(steps), rows=data_ptr(rows), out=data_ptr(u))
    _lib.launch(_lib.PHILOX_UNIFORM, p, current_stream(dev))
    return u


def _typed(t: torch.Tensor, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Check that t is a tensor of `shape` and `dtype` on `device`, with unit stride along its last axis."""
    if not isinstance(t, torch.Tensor) or t.device != device or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected {dtype} {tuple(shape)} on {device}, got {got}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected unit stride along its last axis, got strides {t.stride()}")


# The sampler's per-slot tensors that md_sample_fwd reads or updates (all (m,) but seen, (m, V)), by dtype.
SAMPLER_ROWS = {"temperature": torch.float32, "top_p": torch.float32, "min_p": torch.float32,
                "repetition_penalty": torch.float32, "top_k": torch.int64, "seed": torch.int64, "step": torch.int64,
                "last_token": torch.int64, "seen": torch.bool}


def sample_cuda(logits: torch.Tensor, slots: torch.Tensor, vocab_limit: int, weight_bits: int,
                rows: dict[str, torch.Tensor], scratch: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The whole sampler of runtime/sampler.py for one token per logits row, a cluster of blocks per row
    (plugins/kernels/sampling.h); its reference is `SamplerState.sample_torch`.

    logits: (n, V) float32/float16/bfloat16, unit stride along V; slots: (n,) int64, distinct rows of the
    per-slot tensors in `rows` (SAMPLER_ROWS: temperature, top_p, min_p, repetition_penalty (m,) float32; top_k,
    seed, step, last_token (m,) int64; seen (m, V) bool). Advances step, marks seen and sets last_token of the given slots.
    scratch: (>= n, V) float32, overwritten; out: (n,) int64 -> out."""
    dev = _cuda_device(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected (n, V), got shape {tuple(logits.shape)}")
    n, vocab = logits.shape
    _typed(logits, "logits", (n, vocab), logits.dtype, dev)
    _code(logits, "logits")
    _typed(slots, "slots", (n,), torch.int64, dev)
    m = rows["seed"].shape[0] if isinstance(rows.get("seed"), torch.Tensor) else 0
    for name, dtype in SAMPLER_ROWS.items():
        _typed(rows.get(name), name, (m, vocab) if name == "seen" else (m,), dtype, dev)
    if not isinstance(scratch, torch.Tensor) or scratch.dim() != 2 or scratch.shape[0] < n:
        raise ValueError(f"scratch: expected a float32 tensor of at least ({n}, {vocab})")
    _typed(scratch, "scratch", (scratch.shape[0], vocab), torch.float32, dev)
    tokens = torch.empty(n, dtype=torch.int64, device=dev) if out is None else out
    _typed(tokens, "out", (n,), torch.int64, dev)
    p = _lib.SampleParams(rows=n, vocab=vocab, vocab_limit=int(vocab_limit), weight_bits=int(weight_bits),
                          logits_dtype=DTYPE_CODES[logits.dtype], logits=data_ptr(logits),
                          logits_row_stride=logits.stride(0), slots=data_ptr(slots),
                          **{name: data_ptr(rows[name]) for name in SAMPLER_ROWS},
                          seen_row_stride=rows["seen"].stride(0), scratch=data_ptr(scratch),
                          scratch_row_stride=scratch.stride(0), out=data_ptr(tokens))
    _lib.launch(_lib.SAMPLE, p, current_stream(dev))
    return tokens
