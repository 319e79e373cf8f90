"""Torch bindings of the native engine's decode kernels (plugins/kernels/): small-batch GEMV (+ causal-conv
epilogue; gemv.cu), the fused Mamba1 step (mamba1_step.cu), the Mamba2 state update (mamba2_step.cu), row norms
and a hybrid's decode attention (attention.cu). Same library
(loaded by mamba_deploy.ops._lib) and conventions as mamba_deploy.ops.cuda: torch tensors in,
launched on the current stream, no host sync, `out=` written in place.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import _lib
from ..ops._tensors import DTYPE_CODES, current_stream, data_ptr
from ..ops.cuda import state_rows_arg

MAX_BATCH = 16  # MD_GEMV_MAX_BATCH: the CUDA-core form, any dtype
TC_MAX_BATCH = 64  # MD_GEMV_TC_MAX_BATCH: the tensor-core form (fp16 / bf16, compute capability 9.0+)
SKINNY_MAX_N = 256  # kSkinnyMaxN: the tensor-core form's skinny kernel (16-column blocks) up to this n
NORM_MAX_BATCH, NORM_MAX_K = 2, 8192  # MD_GEMV_NORM_MAX_BATCH, MD_GEMV_NORM_MAX_K: gemv's norm prologue
STAGED_MAX_BATCH = 16  # kStagedMaxBatch: batch 1-2 on CUDA cores (any dtype), 3-16 on tensor cores (fp16 / bf16)
STAGED_CUDA_CORE_BATCH, STAGED_MAX_ROW_BYTES = 2, 16 * 1024  # kCudaCoreBatch; its x held in registers (kMaxVecs)
# The engine stages a projection where a block's rows take at most this much shared memory: at 128 KB a block
# (2048 x 4096, fp16) the staged out_proj gained, at 205 KB (2560 x 5120) it did not (H200, session 20).
STAGED_MAX_BLOCK_BYTES = 128 * 1024
ALGOS = {"auto": 0, "cuda_cores": 1, "tensor_cores": 2, "mma_sync": 3,  # mma_sync: tensor cores without wgmma
         "staged": 4,  # MD_GEMV_ALGO_STAGED: weights copied into shared memory before the wait (batch 1-16)
         "wgmma": 5}  # MD_GEMV_ALGO_WGMMA: tensor_cores with batch 1-16 through wgmma too
_TC_CAPABLE: dict[int, bool] = {}  # device index -> compute capability >= 9.0
_SM_COUNT: dict[int, int] = {}  # device index -> multiprocessors


def _row_stride(t: torch.Tensor, name: str) -> int:
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"{name}: expected a 2-D tensor with unit last stride, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")
    return t.stride(0)


def _aligned_rows(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and (t.shape[0] == 1 or (t.stride(0) * t.element_size()) % 16 == 0)


def _device_index(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


def _capable(index: int) -> bool:
    if index not in _TC_CAPABLE:
        _TC_CAPABLE[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return _TC_CAPABLE[index]


def tc_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether gemv's tensor-core form takes x (batch, k) and w (n, k) (gemm_tc.cuh: gemv_tc_ok)."""
    if x.dtype not in (torch.float16, torch.bfloat16) or not x.is_cuda or not 1 <= x.shape[0] <= TC_MAX_BATCH:
        return False
    return (_capable(_device_index(x)) and x.shape[1] % 8 == 0 and x.stride(1) == 1 and w.stride(1) == 1 and
            _aligned_rows(x) and _aligned_rows(w))


def staged_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the engine stages x (batch, k) @ w (n, k).T (gemv's staged form, gemm_tc.cuh: gemv_staged_ok): 16-byte
    vectors of x and w rows, compute capability 9.0+, a block's rows (n over the multiprocessors; tiles of 16 on
    tensor cores) within STAGED_MAX_BLOCK_BYTES, and batch 1-2 with k <= 16 KB of x a row or batch 3-16 in fp16 /
    bf16."""
    batch = x.shape[0]
    if not (x.is_cuda and 1 <= batch <= STAGED_MAX_BATCH and x.dtype == w.dtype and x.dtype in DTYPE_CODES):
        return False
    index = _device_index(x)
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    n, k = w.shape
    row_bytes = k * w.element_size()
    rows = -(-n // _SM_COUNT[index])
    if batch > STAGED_CUDA_CORE_BATCH:
        if x.dtype == torch.float32:
            return False
        rows = -(-rows // 16) * 16  # gemv_staged.cu: staged_mma_plan, at most 2 tiles of 16 rows a block
        if rows > 32:
            return False
    elif row_bytes > STAGED_MAX_ROW_BYTES:
        return False
    return (_capable(index) and row_bytes % 16 == 0 and x.stride(1) == 1 and w.stride(1) == 1 and
            _aligned_rows(x) and _aligned_rows(w) and rows * row_bytes <= STAGED_MAX_BLOCK_BYTES)


def gemv(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None,
         split_k: int = 0, conv: Optional[dict] = None, algo: str = "auto",
         norm: Optional[dict] = None) -> torch.Tensor:
    """out = x @ w.T (+ bias) for x (batch, k), w (n, k), all one dtype; returns out (batch, n).

    algo: "cuda_cores" (batch <= 16, any dtype), "tensor_cores" (batch <= 64 where tc_ok: the weights read
    once for all rows; batch 17..64 through wgmma on an sm_90a build), "mma_sync" (the tensor-core form without
    wgmma), "wgmma" (as "tensor_cores", batch 1-16 through wgmma too), "staged" (batch 1-2, or 3-16 in fp16 / bf16
    on tensor cores; compute capability 9.0+, no norm: each block copies its rows of w into shared memory before it
    waits for the kernel before it, so the weights stream in while that kernel runs), "auto" (tensor cores from
    batch 3 on where they apply). split_k: the CUDA-core form's warps per output (1, 2, 4, 8), or the skinny
    tensor-core form's blocks per k cluster (1..16, n <= 256 without conv); 0 = chosen by the library.

    conv: optional causal-conv epilogue over rows [lo, lo + weight.shape[0]) of the output, a dict with
    `lo`, `weight` (conv_dim, width) contiguous, `bias` (conv_dim,) or None, `state` (batch, conv_dim,
    width - 1) updated in place, `silu` (default True), `state_rows` (optional (batch,) int64 CUDA tensor:
    batch row b updates state[state_rows[b]], state then a pool of any number of rows).

    norm: optional row norm done inside the GEMV (batch <= NORM_MAX_BATCH, the CUDA-core form; norm_ok says
    where), x then being its input: a dict with `weight` (k,), `eps`, and either `residual_out` (batch, k) and
    optional `residual` (row_norm's add form: residual_out <- x + residual, apart from residual) or `gate`
    (batch, k) (the gated form, one group). The products use the norm's output rounded to x's dtype.
    """
    if not (x.is_cuda and w.device == x.device) or x.dtype != w.dtype or x.dtype not in DTYPE_CODES:
        raise ValueError("gemv: x and w must be CUDA tensors of one float dtype")
    batch, k = x.shape
    n = w.shape[0]
    if algo not in ALGOS:
        raise ValueError(f"gemv: algo must be one of {sorted(ALGOS)}")
    limit = TC_MAX_BATCH if algo != "cuda_cores" and tc_ok(x, w) else MAX_BATCH
    if w.shape != (n, k) or batch > limit:
        raise ValueError(f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} do not match (batch <= {limit})")
    if bias is not None and (bias.shape != (n,) or bias.dtype != w.dtype or not bias.is_contiguous()):
        raise ValueError("gemv: bias must be a contiguous (n,) tensor of w's dtype")
    if out is None:
        out = torch.empty(batch, n, dtype=x.dtype, device=x.device)
    if out.shape != (batch, n) or out.dtype != x.dtype:
        raise ValueError(f"gemv: out must be ({batch}, {n}) {x.dtype}")
    p = _lib.GemvParams(batch=batch, n=n, k=k, dtype=DTYPE_CODES[x.dtype], split_k=split_k,
                        x=data_ptr(x), x_row_stride=_row_stride(x, "x"), w=data_ptr(w),
                        w_row_stride=_row_stride(w, "w"), bias=data_ptr(bias), out=data_ptr(out),
                        out_row_stride=_row_stride(out, "out"), algo=ALGOS[algo])
    if conv is not None:
        cw, cb, st = conv["weight"], conv.get("bias"), conv["state"]
        rows = state_rows_arg(conv.get("state_rows"), batch, x.device, "gemv")
        if not cw.is_contiguous() or cw.dtype != x.dtype or (cb is not None and cb.dtype != x.dtype):
            raise ValueError("gemv: conv weight must be contiguous, conv weight/bias in x's dtype")
        pool = st.shape[0] if rows is not None and st.dim() == 3 else batch
        if st.device != x.device or st.shape != (pool, cw.shape[0], cw.shape[1] - 1):
            raise ValueError(f"gemv: conv state {tuple(st.shape)} does not match conv weight {tuple(cw.shape)}")
        p.conv_lo, p.conv_dim, p.conv_width = conv["lo"], cw.shape[0], cw.shape[1]
        p.conv_silu, p.conv_state_dtype = int(conv.get("silu", True)), DTYPE_CODES[st.dtype]
        p.conv_w, p.conv_b, p.conv_state, p.state_rows = data_ptr(cw), data_ptr(cb), data_ptr(st), rows
        p.conv_state_batch_stride, p.conv_state_dim_stride, p.conv_state_width_stride = st.stride()
    if norm is not None:
        _set_norm(p, x, norm)
    _lib.launch(_lib.GEMV, p, current_stream(x.device))
    return out


def norm_ok(x: torch.Tensor, norm: dict) -> bool:
    """Whether gemv's norm prologue takes x (batch, k) with these norm operands (else row_norm, then gemv)."""
    batch, k = x.shape
    rows = [norm.get(name) for name in ("residual", "residual_out", "gate")]
    return (1 <= batch <= NORM_MAX_BATCH and k % 8 == 0 and k <= NORM_MAX_K and norm["weight"].data_ptr() % 16 == 0
            and batch * k * x.element_size() <= 32 * 1024 and row_norm_ok(k, k, x, *rows))


def _set_norm(p, x: torch.Tensor, norm: dict) -> None:
    weight, residual, residual_out, gate = (norm["weight"], norm.get("residual"), norm.get("residual_out"),
                                            norm.get("gate"))
    batch, k = x.shape
    if not norm_ok(x, norm) or weight.shape != (k,) or weight.dtype != x.dtype:
        raise ValueError(f"gemv: no norm prologue for x {tuple(x.shape)} (batch <= {NORM_MAX_BATCH}, k a multiple "
                         f"of 256 up to {NORM_MAX_K}, 16-byte aligned rows, batch * k * element size <= 32 KB; "
                         f"weight ({k},) in x's dtype)")
    if (gate is None) == (residual_out is None):
        raise ValueError("gemv: norm takes either residual_out (the add form) or gate")
    for name, t in (("residual", residual), ("residual_out", residual_out), ("gate", gate)):
        if t is not None and (t.shape != (batch, k) or t.device != x.device):
            raise ValueError(f"gemv: norm {name} must be ({batch}, {k}) on x's device")
    if gate is not None and gate.dtype != x.dtype:
        raise ValueError("gemv: norm gate must be in x's dtype")
    res = residual_out if residual_out is not None else x
    if residual is not None:
        if residual.dtype != res.dtype:
            raise ValueError("gemv: norm residual and residual_out must share a dtype")
        span = lambda t: (t.data_ptr(), t.data_ptr() + t.stride(0) * t.element_size() * batch)  # noqa: E731
        (a0, a1), (b0, b1) = span(residual), span(residual_out)
        if a0 < b1 and b0 < a1:
            raise ValueError("gemv: norm residual_out must not overlap residual (other blocks read it meanwhile)")
    p.norm_w, p.norm_eps = data_ptr(weight), float(norm["eps"])
    p.norm_residual, p.norm_residual_out, p.norm_gate = data_ptr(residual), data_ptr(residual_out), data_ptr(gate)
    p.norm_residual_dtype = DTYPE_CODES[res.dtype]
    p.norm_residual_row_stride = 0 if residual is None else _row_stride(residual, "residual")
    p.norm_residual_out_row_stride = 0 if residual_out is None else _row_stride(residual_out, "residual_out")
    p.norm_gate_row_stride = 0 if gate is None else _row_stride(gate, "gate")


def pack_dt_proj(weight: torch.Tensor) -> torch.Tensor:
    """dt_proj.weight (dim, dt_rank) -> (dim, 8 * ceil(dt_rank / 8)) zero padded, contiguous: rows of whole
    16-byte vectors for mamba1_step."""
    dim, rank = weight.shape
    padded = torch.zeros(dim, -(-rank // 8) * 8, dtype=weight.dtype, device=weight.device)
    padded[:, :rank] = weight
    return padded


def mamba1_step_tc_ok(xdbl: torch.Tensor, state: torch.Tensor, dstate: int) -> bool:
    """Whether mamba1_step(tc=True) takes these buffers (the C side's tc_form_ok, less the parts every caller
    meets: wdt_packed and A contiguous): 16-bit xdbl with 16-byte rows, dt_rank % 8 == 0, dstate 16, state rows
    of 16-byte units."""
    rank = xdbl.shape[1] - 2 * dstate
    return (xdbl.dtype in (torch.float16, torch.bfloat16) and dstate == 16 and rank % 8 == 0 and
            xdbl.stride(1) == 1 and xdbl.stride(0) % 8 == 0 and xdbl.data_ptr() % 16 == 0 and
            state.stride(-2) % 8 == 0 and state.stride(0) % 8 == 0 and state.data_ptr() % 16 == 0)


def mamba1_step(x, z, xdbl, wdt_packed, dt_bias, A, D, state, *, out: torch.Tensor,
                state_rows: Optional[torch.Tensor] = None, dt: Optional[torch.Tensor] = None,
                tc: bool = False) -> torch.Tensor:
    """Fused Mamba1 decode step after x_proj (see gemv.h). x, z, out: (batch, dim) row-strided;
    xdbl (batch, dt_rank + 2 dstate); wdt_packed from pack_dt_proj; dt_bias, D (dim,), A (dim, dstate)
    float32; state (batch, dim, dstate) float32 or x's dtype, updated in place. state_rows: optional
    (batch,) int64 CUDA tensor: batch row b updates state[state_rows[b]] (state then a pool of any rows).
    dt: optional (batch, dim) = xdbl[:, :dt_rank] @ dt_proj.T (before the bias), row-strided, x's dtype:
    then wdt_packed is not read (may be None) and the step streams the state, a thread per (row, channel).
    tc: dt_proj on tensor cores inside the step, 8 rows a block, dt in float32 (no dt given; where
    mamba1_step_tc_ok)."""
    batch, dim = x.shape
    dstate = A.shape[1]
    rank = xdbl.shape[1] - 2 * dstate
    rows = state_rows_arg(state_rows, batch, x.device, "mamba1_step")
    for name, t in (("dt_bias", dt_bias), ("A", A), ("D", D)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"mamba1_step: {name} must be contiguous float32")
    pool = state.shape[0] if rows is not None and state.dim() == 3 else batch
    if state.shape != (pool, dim, dstate) or state.stride(2) != 1 or state.device != x.device:
        raise ValueError(f"mamba1_step: state {tuple(state.shape)}, expected {(pool, dim, dstate)} (unit last stride)")
    if dt is not None:
        if dt.shape != (batch, dim) or dt.dtype != x.dtype or dt.device != x.device:
            raise ValueError(f"mamba1_step: dt must be ({batch}, {dim}) {x.dtype} on {x.device}")
    elif wdt_packed is None or wdt_packed.shape != (dim, -(-rank // 8) * 8) or not wdt_packed.is_contiguous():
        raise ValueError("mamba1_step: wdt_packed must come from pack_dt_proj")
    if tc and (dt is not None or not mamba1_step_tc_ok(xdbl, state, dstate)):
        raise ValueError("mamba1_step: tc needs no dt, a 16-bit dtype, dstate 16, dt_rank % 8 == 0 and 16-byte rows")
    p = _lib.Mamba1StepParams(batch=batch, dim=dim, dstate=dstate, dt_rank=rank, dtype=DTYPE_CODES[x.dtype],
                              state_dtype=DTYPE_CODES[state.dtype], x=data_ptr(x), x_row_stride=_row_stride(x, "x"),
                              z=data_ptr(z), z_row_stride=_row_stride(z, "z"), xdbl=data_ptr(xdbl),
                              xdbl_row_stride=_row_stride(xdbl, "xdbl"), wdt=data_ptr(wdt_packed),
                              dt_bias=data_ptr(dt_bias), A=data_ptr(A), D=data_ptr(D), state=data_ptr(state),
                              state_batch_stride=state.stride(0), state_dim_stride=state.stride(1),
                              y=data_ptr(out), y_row_stride=_row_stride(out, "out"), state_rows=rows,
                              dt=data_ptr(dt), dt_row_stride=0 if dt is None else _row_stride(dt, "dt"),
                              dt_tc=int(tc))
    _lib.launch(_lib.MAMBA1_STEP, p, current_stream(x.device))
    return out


def mamba2_step(state, x, dt, A, B, C, D, dt_bias, dt_limit, *, out: torch.Tensor,
                state_rows: Optional[torch.Tensor] = None, fold: Optional[dict] = None) -> torch.Tensor:
    """Mamba2 decode state update (selective_state_update_ref, rank-4 state, no gate), state in place.
    x, out (batch, nheads * headdim); dt (batch, nheads); B, C (batch, ngroups * dstate): row-strided views;
    A, D, dt_bias (nheads,) float32; state (batch, nheads, headdim, dstate) float32 or x's dtype.
    state_rows: optional (batch,) int64 CUDA tensor: batch row b updates state[state_rows[b]] (a pool).
    fold: the gated norm folded (gemv.h): dict(z=(batch, nheads * headdim) row-strided, weight=(nheads * headdim,)
    x's dtype, sumsq=(batch, fold_sumsq_count) float32, unit last stride); out <- y * silu(z) * weight, sumsq <-
    partial sums of (y * silu(z))^2 for row_norm's x_sumsq."""
    pool, nheads, headdim, dstate = state.shape
    batch = x.shape[0] if state_rows is not None else pool
    rows = state_rows_arg(state_rows, batch, x.device, "mamba2_step")
    ngroups = B.shape[1] // dstate
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if t.dtype != torch.float32 or t.shape != (nheads,):
            raise ValueError(f"mamba2_step: {name} must be ({nheads},) float32")
    if state.stride(3) != 1 or state.device != x.device or x.shape != (batch, nheads * headdim) or \
            dt.shape != (batch, nheads):
        raise ValueError("mamba2_step: shapes do not match the state")
    lo, hi = dt_limit
    p = _lib.Mamba2StepParams(batch=batch, nheads=nheads, headdim=headdim, dstate=dstate, ngroups=ngroups,
                              dtype=DTYPE_CODES[x.dtype], state_dtype=DTYPE_CODES[state.dtype],
                              dt_min=float(lo), dt_max=float(hi), x=data_ptr(x), x_row_stride=_row_stride(x, "x"),
                              B=data_ptr(B), B_row_stride=_row_stride(B, "B"), C=data_ptr(C),
                              C_row_stride=_row_stride(C, "C"), dt=data_ptr(dt), dt_row_stride=_row_stride(dt, "dt"),
                              A=data_ptr(A), D=data_ptr(D), dt_bias=data_ptr(dt_bias), state=data_ptr(state),
                              state_batch_stride=state.stride(0), state_head_stride=state.stride(1),
                              state_dim_stride=state.stride(2), y=data_ptr(out), y_row_stride=_row_stride(out, "out"),
                              state_rows=rows)
    if fold is not None:
        _fold_args(p, fold, batch, nheads * headdim, x.dtype)
    _lib.launch(_lib.MAMBA2_STEP, p, current_stream(x.device))
    return out


def fold_sumsq_count(channels: int) -> int:
    """Partial sums a row of mamba2_step's folded norm writes: one per 16 channels (gemv.h)."""
    return channels // 16


def fold_ok(nheads: int, headdim: int) -> bool:
    """Whether mamba2_step folds the gated norm of this head layout (one norm group)."""
    return headdim % 4 == 0 and (nheads * headdim) % 16 == 0


def _fold_args(p, fold: dict, batch: int, channels: int, dtype: torch.dtype) -> None:
    z, weight, sumsq = fold["z"], fold["weight"], fold["sumsq"]
    if z.shape != (batch, channels) or z.dtype != dtype or weight.shape != (channels,) or weight.dtype != dtype or \
            not weight.is_contiguous() or sumsq.dtype != torch.float32 or sumsq.dim() != 2 or \
            sumsq.shape[0] < batch or sumsq.shape[1] != fold_sumsq_count(channels) or sumsq.stride(1) != 1:
        raise ValueError("mamba2_step: fold needs z (batch, channels) and weight (channels,) in x's dtype, sumsq "
                         "(batch, channels / 16) float32")
    p.z, p.z_row_stride = data_ptr(z), _row_stride(z, "z")
    p.norm_weight, p.norm_sumsq, p.norm_sumsq_row_stride = data_ptr(weight), data_ptr(sumsq), sumsq.stride(0)


def row_norm_ok(hidden: int, group_size: int, *tensors: torch.Tensor) -> bool:
    """Whether row_norm handles this shape (else use the library's add_norm / gated_rms_norm)."""
    return (group_size % 256 == 0 and group_size <= 8192 and hidden % group_size == 0 and
            all(t is None or (t.data_ptr() % 16 == 0 and
                              (t.shape[0] == 1 or (t.stride(0) * t.element_size()) % 16 == 0))
                for t in tensors))


def row_norm(x, other, weight, eps, *, out, gate: bool = False, group_size: int = 0, residual_out=None,
             x_sumsq=None, sumsq_dim: int = 0, sumsq_eps: float = 0.0) -> torch.Tensor:
    """gate=False: residual_out <- x * f + other (other: residual or None); out <- rmsnorm(residual_out) * weight,
    f = 1, or with x_sumsq (rows, count) float32 (row-strided, unit last stride: the folded gated norm's sums,
    ops.cuda.chunk_scan's norm_sumsq) rsqrt(x_sumsq.sum(-1) / sumsq_dim + sumsq_eps) a row.
    gate=True: out <- groupwise rmsnorm(x * silu(other)) * weight. x, out (rows, hidden) row-strided.
    x may also be (slices, rows, hidden) float32 (gate off, unit last stride, strides of whole 16-byte vectors): a
    k-split projection's partial sums, whose sum in slice order rounded to out's dtype is the x."""
    parts = part_stride = 0
    if x.dim() == 3:
        if gate or x.dtype != torch.float32 or x.stride(2) != 1 or x.stride(0) % 4 or x.stride(1) % 4:
            raise ValueError("row_norm: x slices must be (slices, rows, hidden) float32, gate off, unit last stride "
                             "and strides of whole 16-byte vectors")
        parts, part_stride, x = x.shape[0], x.stride(0), x[0]
    rows, hidden = x.shape
    if x_sumsq is not None and (gate or x_sumsq.dtype != torch.float32 or x_sumsq.dim() != 2 or
                                x_sumsq.shape[0] != rows or x_sumsq.stride(1) != 1 or sumsq_dim < 1):
        raise ValueError("row_norm: x_sumsq must be (rows, count) float32 with a unit last stride, gate off, "
                         "sumsq_dim >= 1")
    group_size = group_size or hidden
    res_dtype = (residual_out if residual_out is not None else other if other is not None else x).dtype
    res_out_stride = 0 if residual_out is None else _row_stride(residual_out, "residual_out")
    p = _lib.RowNormParams(rows=rows, hidden=hidden, group_size=group_size, gate=int(gate), eps=float(eps),
                           dtype=DTYPE_CODES[out.dtype if parts else x.dtype], residual_dtype=DTYPE_CODES[res_dtype],
                           x=data_ptr(x), x_parts=parts, x_part_stride=part_stride,
                           x_row_stride=_row_stride(x, "x"), residual=data_ptr(other),
                           residual_row_stride=0 if other is None else _row_stride(other, "other"),
                           weight=data_ptr(weight), out=data_ptr(out), out_row_stride=_row_stride(out, "out"),
                           residual_out=data_ptr(residual_out), residual_out_row_stride=res_out_stride)
    if x_sumsq is not None:
        p.x_sumsq, p.x_sumsq_row_stride, p.x_sumsq_count = data_ptr(x_sumsq), x_sumsq.stride(0), x_sumsq.shape[1]
        p.x_sumsq_dim, p.x_sumsq_eps = sumsq_dim, float(sumsq_eps)
    _lib.launch(_lib.ROW_NORM, p, current_stream(x.device))
    return out


def attention_decode(q, k, v, key, value, length, inv_freq, rotary_dim: int, scale: float, *, out: torch.Tensor,
                     state_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A hybrid's decode attention (see gemv.h): rotary on q and k at each row's position length[slot], k and v
    written into the cache there, then attention over positions 0..length[slot]; `length` is not advanced.
    q, out (batch, heads * head_dim); k, v (batch, heads_kv * head_dim): row-strided views, one dtype;
    key, value (slots, heads_kv, max_seq_len, head_dim) caches of that dtype, written in place; length (slots,)
    int64; inv_freq (rotary_dim / 2,) float32 (ops.rotary_inv_freq) or None when rotary_dim is 0.
    state_rows: optional (batch,) int64 CUDA tensor: row b uses slot state_rows[b] (else slot b)."""
    slots, heads_kv, max_len, head_dim = key.shape
    batch = q.shape[0]
    rows = state_rows_arg(state_rows, batch, q.device, "attention_decode")
    if value.shape != key.shape or value.stride() != key.stride() or key.stride(3) != 1:
        raise ValueError("attention_decode: key and value must be caches of one shape and layout, unit last stride")
    if any(t.dtype != q.dtype or t.device != q.device for t in (k, v, key, value, out)):
        raise ValueError("attention_decode: q, k, v, the caches and out must share one dtype and device")
    if length.dtype != torch.int64 or length.shape != (slots,) or (rows is None and batch > slots):
        raise ValueError(f"attention_decode: length must be ({slots},) int64, one per cache slot")
    if k.shape != (batch, heads_kv * head_dim) or v.shape != k.shape or out.shape != q.shape or \
            q.shape[1] % (heads_kv * head_dim):
        raise ValueError("attention_decode: q, k, v, out do not match the caches' heads and head_dim")
    if rotary_dim and (inv_freq is None or inv_freq.dtype != torch.float32 or not inv_freq.is_contiguous() or
                       inv_freq.shape != (rotary_dim // 2,)):
        raise ValueError("attention_decode: inv_freq must be a contiguous (rotary_dim / 2,) float32 tensor")
    p = _lib.AttentionDecodeParams(
        batch=batch, heads=q.shape[1] // head_dim, heads_kv=heads_kv, head_dim=head_dim, max_seq_len=max_len,
        rotary_dim=rotary_dim, dtype=DTYPE_CODES[q.dtype], scale=float(scale), q=data_ptr(q),
        q_row_stride=_row_stride(q, "q"), k=data_ptr(k), k_row_stride=_row_stride(k, "k"), v=data_ptr(v),
        v_row_stride=_row_stride(v, "v"), inv_freq=data_ptr(inv_freq if rotary_dim else None), key=data_ptr(key),
        value=data_ptr(value), cache_slot_stride=key.stride(0), cache_head_stride=key.stride(1),
        cache_pos_stride=key.stride(2), length=data_ptr(length), out=data_ptr(out),
        out_row_stride=_row_stride(out, "out"), state_rows=rows)
    _lib.launch(_lib.ATTENTION_DECODE, p, current_stream(q.device))
    return out
