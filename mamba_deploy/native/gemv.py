"""ctypes bindings of plugins/kernels/gemv.cu: small-batch GEMV (+ causal-conv epilogue) and the
fused decode kernels (Mamba1 step, Mamba2 state update, row norms). Same library and conventions as mamba_deploy.ops.cuda (torch tensors in,
launched on the current stream, no host sync, `out=` written in place).
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..ops import _lib
from ..ops.cuda import _DTYPES, _ptr, _stream

MAX_BATCH = 16  # MD_GEMV_MAX_BATCH
_VERSION = 2

_I, _P = ctypes.c_int64, ctypes.c_void_p


class GemvParams(ctypes.Structure):
    _fields_ = [(n, _I) for n in "batch n k dtype split_k".split()] + [
        ("x", _P), ("x_row_stride", _I), ("w", _P), ("w_row_stride", _I), ("bias", _P), ("out", _P),
        ("out_row_stride", _I)] + [(n, _I) for n in "conv_lo conv_dim conv_width conv_silu conv_state_dtype".split()] + [
        ("conv_w", _P), ("conv_b", _P), ("conv_state", _P)] + [
        (n, _I) for n in "conv_state_batch_stride conv_state_dim_stride conv_state_width_stride".split()]


class Mamba1StepParams(ctypes.Structure):
    _fields_ = [(n, _I) for n in "batch dim dstate dt_rank dtype state_dtype".split()] + [
        ("x", _P), ("x_row_stride", _I), ("z", _P), ("z_row_stride", _I), ("xdbl", _P), ("xdbl_row_stride", _I),
        ("wdt", _P), ("dt_bias", _P), ("A", _P), ("D", _P), ("state", _P), ("state_batch_stride", _I),
        ("state_dim_stride", _I), ("y", _P), ("y_row_stride", _I)]


class Mamba2StepParams(ctypes.Structure):
    _fields_ = [(n, _I) for n in "batch nheads headdim dstate ngroups dtype state_dtype".split()] + [
        ("dt_min", ctypes.c_double), ("dt_max", ctypes.c_double)] + [
        f for name in ("x", "B", "C", "dt") for f in ((name, _P), (name + "_row_stride", _I))] + [
        ("A", _P), ("D", _P), ("dt_bias", _P), ("state", _P)] + [
        (n, _I) for n in "state_batch_stride state_head_stride state_dim_stride".split()] + [
        ("y", _P), ("y_row_stride", _I)]


class RowNormParams(ctypes.Structure):
    _fields_ = [(n, _I) for n in "rows hidden group_size gate".split()] + [("eps", ctypes.c_double)] + [
        (n, _I) for n in "dtype residual_dtype".split()] + [
        ("x", _P), ("x_row_stride", _I), ("residual", _P), ("residual_row_stride", _I), ("weight", _P), ("out", _P),
        ("out_row_stride", _I), ("residual_out", _P), ("residual_out_row_stride", _I)]


_ENTRIES = (("md_gemv_fwd", GemvParams), ("md_mamba1_step_fwd", Mamba1StepParams),
            ("md_mamba2_step_fwd", Mamba2StepParams), ("md_row_norm_fwd", RowNormParams))
_fns: dict[str, ctypes._CFuncPtr] = {}


def _fn(name: str):
    """The entry point `name` of the kernel library, with its signature checked once."""
    if not _fns:
        lib = _lib.load()
        try:
            lib.md_gemv_version.restype = ctypes.c_int
            lib.md_gemv_params_size.restype = ctypes.c_int64
            lib.md_gemv_params_size.argtypes = [ctypes.c_int64]
            lib.md_gemv_last_error.restype = ctypes.c_char_p
        except AttributeError:
            raise RuntimeError(f"{_lib.library_path()} has no GEMV kernels (built before plugins/kernels/gemv.cu "
                               f"was added): rebuild it") from None
        if lib.md_gemv_version() != _VERSION:
            raise RuntimeError(f"GEMV ABI version {lib.md_gemv_version()}, expected {_VERSION}")
        for kind, (sym, struct) in enumerate(_ENTRIES):
            if lib.md_gemv_params_size(kind) != ctypes.sizeof(struct):
                raise RuntimeError(f"{sym}: params are {lib.md_gemv_params_size(kind)} bytes in C, "
                                   f"{ctypes.sizeof(struct)} in Python: library and package do not match")
            f = getattr(lib, sym)
            f.restype = ctypes.c_int
            f.argtypes = [ctypes.POINTER(struct), ctypes.c_void_p]
            _fns[sym] = f
        _fns["error"] = lib.md_gemv_last_error
    return _fns[name]


def _call(sym: str, params: ctypes.Structure, device: torch.device) -> None:
    rc = _fn(sym)(ctypes.byref(params), ctypes.c_void_p(_stream(device)))
    if rc != 0:
        raise RuntimeError(f"{sym} failed (cudaError {rc}): {_fn('error')().decode(errors='replace')}")


def _row_stride(t: torch.Tensor, name: str) -> int:
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"{name}: expected a 2-D tensor with unit last stride, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")
    return t.stride(0)


def gemv(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None,
         split_k: int = 0, conv: Optional[dict] = None) -> torch.Tensor:
    """out = x @ w.T (+ bias) for x (batch <= 16, k), w (n, k), all one dtype; returns out (batch, n).

    conv: optional causal-conv epilogue over rows [lo, lo + weight.shape[0]) of the output, a dict with
    `lo`, `weight` (conv_dim, width) contiguous, `bias` (conv_dim,) or None, `state` (batch, conv_dim,
    width - 1) updated in place, `silu` (default True).
    """
    if not (x.is_cuda and w.device == x.device) or x.dtype != w.dtype or x.dtype not in _DTYPES:
        raise ValueError("gemv: x and w must be CUDA tensors of one float dtype")
    batch, k = x.shape
    n = w.shape[0]
    if w.shape != (n, k) or batch > MAX_BATCH:
        raise ValueError(f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} do not match (batch <= {MAX_BATCH})")
    if bias is not None and (bias.shape != (n,) or bias.dtype != w.dtype or not bias.is_contiguous()):
        raise ValueError("gemv: bias must be a contiguous (n,) tensor of w's dtype")
    if out is None:
        out = torch.empty(batch, n, dtype=x.dtype, device=x.device)
    if out.shape != (batch, n) or out.dtype != x.dtype:
        raise ValueError(f"gemv: out must be ({batch}, {n}) {x.dtype}")
    p = GemvParams(batch=batch, n=n, k=k, dtype=_DTYPES[x.dtype], split_k=split_k, x=_ptr(x),
                   x_row_stride=_row_stride(x, "x"), w=_ptr(w), w_row_stride=_row_stride(w, "w"), bias=_ptr(bias),
                   out=_ptr(out), out_row_stride=_row_stride(out, "out"))
    if conv is not None:
        cw, cb, st = conv["weight"], conv.get("bias"), conv["state"]
        if not cw.is_contiguous() or cw.dtype != x.dtype or (cb is not None and cb.dtype != x.dtype):
            raise ValueError("gemv: conv weight must be contiguous, conv weight/bias in x's dtype")
        if st.shape != (batch, cw.shape[0], cw.shape[1] - 1):
            raise ValueError(f"gemv: conv state {tuple(st.shape)} does not match conv weight {tuple(cw.shape)}")
        p.conv_lo, p.conv_dim, p.conv_width = conv["lo"], cw.shape[0], cw.shape[1]
        p.conv_silu, p.conv_state_dtype = int(conv.get("silu", True)), _DTYPES[st.dtype]
        p.conv_w, p.conv_b, p.conv_state = _ptr(cw), _ptr(cb), _ptr(st)
        p.conv_state_batch_stride, p.conv_state_dim_stride, p.conv_state_width_stride = st.stride()
    _call("md_gemv_fwd", p, x.device)
    return out


def pack_dt_proj(weight: torch.Tensor) -> torch.Tensor:
    """dt_proj.weight (dim, dt_rank) -> (dim, 8 * ceil(dt_rank / 8)) zero padded, contiguous: rows of whole
    16-byte vectors for mamba1_step."""
    dim, rank = weight.shape
    padded = torch.zeros(dim, -(-rank // 8) * 8, dtype=weight.dtype, device=weight.device)
    padded[:, :rank] = weight
    return padded


def mamba1_step(x, z, xdbl, wdt_packed, dt_bias, A, D, state, *, out: torch.Tensor) -> torch.Tensor:
    """Fused Mamba1 decode step after x_proj (see gemv.h). x, z, out: (batch, dim) row-strided;
    xdbl (batch, dt_rank + 2 dstate); wdt_packed from pack_dt_proj; dt_bias, D (dim,), A (dim, dstate)
    float32; state (batch, dim, dstate) float32 or x's dtype, updated in place."""
    batch, dim = x.shape
    dstate = A.shape[1]
    rank = xdbl.shape[1] - 2 * dstate
    for name, t in (("dt_bias", dt_bias), ("A", A), ("D", D)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"mamba1_step: {name} must be contiguous float32")
    if state.shape != (batch, dim, dstate) or state.stride(2) != 1:
        raise ValueError(f"mamba1_step: state {tuple(state.shape)}, expected {(batch, dim, dstate)} (unit last stride)")
    if wdt_packed.shape != (dim, -(-rank // 8) * 8) or not wdt_packed.is_contiguous():
        raise ValueError("mamba1_step: wdt_packed must come from pack_dt_proj")
    p = Mamba1StepParams(batch=batch, dim=dim, dstate=dstate, dt_rank=rank, dtype=_DTYPES[x.dtype],
                         state_dtype=_DTYPES[state.dtype], x=_ptr(x), x_row_stride=_row_stride(x, "x"), z=_ptr(z),
                         z_row_stride=_row_stride(z, "z"), xdbl=_ptr(xdbl), xdbl_row_stride=_row_stride(xdbl, "xdbl"),
                         wdt=_ptr(wdt_packed), dt_bias=_ptr(dt_bias), A=_ptr(A), D=_ptr(D), state=_ptr(state),
                         state_batch_stride=state.stride(0), state_dim_stride=state.stride(1), y=_ptr(out),
                         y_row_stride=_row_stride(out, "out"))
    _call("md_mamba1_step_fwd", p, x.device)
    return out


def mamba2_step(state, x, dt, A, B, C, D, dt_bias, dt_limit, *, out: torch.Tensor) -> torch.Tensor:
    """Mamba2 decode state update (selective_state_update_ref, rank-4 state, no gate), state in place.
    x, out (batch, nheads * headdim); dt (batch, nheads); B, C (batch, ngroups * dstate): row-strided views;
    A, D, dt_bias (nheads,) float32; state (batch, nheads, headdim, dstate) float32 or x's dtype."""
    batch, nheads, headdim, dstate = state.shape
    ngroups = B.shape[1] // dstate
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if t.dtype != torch.float32 or t.shape != (nheads,):
            raise ValueError(f"mamba2_step: {name} must be ({nheads},) float32")
    if state.stride(3) != 1 or x.shape != (batch, nheads * headdim) or dt.shape != (batch, nheads):
        raise ValueError("mamba2_step: shapes do not match the state")
    lo, hi = dt_limit
    p = Mamba2StepParams(batch=batch, nheads=nheads, headdim=headdim, dstate=dstate, ngroups=ngroups,
                         dtype=_DTYPES[x.dtype], state_dtype=_DTYPES[state.dtype], dt_min=float(lo), dt_max=float(hi),
                         x=_ptr(x), x_row_stride=_row_stride(x, "x"), B=_ptr(B), B_row_stride=_row_stride(B, "B"),
                         C=_ptr(C), C_row_stride=_row_stride(C, "C"), dt=_ptr(dt), dt_row_stride=_row_stride(dt, "dt"),
                         A=_ptr(A), D=_ptr(D), dt_bias=_ptr(dt_bias), state=_ptr(state),
                         state_batch_stride=state.stride(0), state_head_stride=state.stride(1),
                         state_dim_stride=state.stride(2), y=_ptr(out), y_row_stride=_row_stride(out, "out"))
    _call("md_mamba2_step_fwd", p, x.device)
    return out


def row_norm_ok(hidden: int, group_size: int, *tensors: torch.Tensor) -> bool:
    """Whether row_norm handles this shape (else use the library's add_norm / gated_rms_norm)."""
    return (group_size % 256 == 0 and group_size <= 8192 and hidden % group_size == 0 and
            all(t is None or (t.data_ptr() % 16 == 0 and (t.shape[0] == 1 or (t.stride(0) * t.element_size()) % 16 == 0))
                for t in tensors))


def row_norm(x, other, weight, eps, *, out, gate: bool = False, group_size: int = 0, residual_out=None) -> torch.Tensor:
    """gate=False: residual_out <- x + other (other: residual or None); out <- rmsnorm(residual_out) * weight.
    gate=True: out <- groupwise rmsnorm(x * silu(other)) * weight. x, out (rows, hidden) row-strided."""
    rows, hidden = x.shape
    group_size = group_size or hidden
    res_dtype = (residual_out if residual_out is not None else other if other is not None else x).dtype
    p = RowNormParams(rows=rows, hidden=hidden, group_size=group_size, gate=int(gate), eps=float(eps),
                      dtype=_DTYPES[x.dtype], residual_dtype=_DTYPES[res_dtype], x=_ptr(x),
                      x_row_stride=_row_stride(x, "x"), residual=_ptr(other),
                      residual_row_stride=0 if other is None else _row_stride(other, "other"), weight=_ptr(weight),
                      out=_ptr(out), out_row_stride=_row_stride(out, "out"), residual_out=_ptr(residual_out),
                      residual_out_row_stride=0 if residual_out is None else _row_stride(residual_out, "residual_out"))
    _call("md_row_norm_fwd", p, x.device)
    return out
