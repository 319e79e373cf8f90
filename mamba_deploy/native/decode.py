"""One decode step of the native engine (engine.py) on its static buffers, rows [:b]: what its CUDA graphs capture.

embedding -> per layer [add+norm, in_proj (+ causal conv update epilogue), mixer, out_proj] -> final add+norm ->
LM head -> greedy argmax written back into the id buffer (so a greedy loop is just replays). Per layer, kernels:
  Mamba1: row_norm (add) | gemv in_proj + conv epilogue | gemv x_proj | mamba1_step (dt_proj + softplus +
          state update + D + gate, fused) | gemv out_proj                              (5 launches)
          (from batch dt_gemm_min_batch on, dt_proj is one projection (proj) before a streaming mamba1_step, or
          with the engine's step_dt_tc a product on tensor cores inside mamba1_step: one launch less)
          Falcon-Mamba adds, after x_proj, its weightless RMS norms on dt and on B, C in place
          (the gated-norm kernel, no gate, unit weight)                                (+2 launches)
  MLP (d_intermediate > 0, after either mixer): row_norm (add, norm2) | gemv fc1 | silu * mul | gemv fc2
                                                                                       (+5 launches)
  Mamba2: row_norm (add) | gemv in_proj + conv epilogue on xBC | mamba2_step (warp per (head, p)) |
          row_norm (gated) | gemv out_proj                                             (5 launches)
          (with fold_gated_norm, one norm group: mamba2_step writes y * silu(z) * w and partial sums of its
          squares, out_proj runs on it, the next row_norm scales by the factor owed)   (4 launches)
  Hybrids (hybrid.py): attention layers (mamba-ssm's MHA, NemotronH's attention) run row_norm (add) |
          gemv q k v (+ MHA's conv epilogue) | attention_decode (rotary, the new k and v into the slot's KV
          cache, attention over its positions) | [MHA's gated MLP part] | gemv out_proj; NemotronH's MLP
          blocks row_norm (add) | gemv up | relu^2 | gemv down; each slot's length advances once per step.
(add_norm is row_norm: 16-byte accesses, one block per row; the kernels are plugins/kernels/gemv.cu.) At batch 1
the projections named in the engine's norm_in_gemv do their row norm inside the GEMV (its prologue): one launch
less each. Up to its staged_max_batch (8 for Mamba1, 4 for Mamba2) those named in its staged_gemv (out_proj by
default) take gemv's staged form where it applies (batch 3-16: on tensor cores, 16-bit): their weights are copied
into shared memory while the kernels before them run.
From batch 3 to tc_max_batch (16: at 64 cuBLAS is faster, measured on the H200) in fp16 / bf16 on compute
capability 9.0+ the projections are the same gemv launches in their tensor-core form (gemm_tc.cu: the weights
read once for all rows, the conv epilogue up to CONV_EPILOGUE_MAX_BATCH rows; Mamba1's small x_proj up to batch
64 on a 9.0 GPU, where the skinny form, gemv_skinny.cu, beats cuBLAS's split-K GEMM and its reduce kernel);
otherwise, for batch > gemv_max_batch (2: measured crossover against cuBLAS on H100) they are cuBLAS GEMMs
(torch.mm into the same buffers) and the conv update is the library's kernel; a mixer's out_proj there is one
batched product into OUT_PROJ_SLICES k slices' float32 partial sums, which the next row_norm adds (out_proj).

At batch 1 an engine built with persistent_decode runs the whole layer loop as one cooperative launch
(persistent.py) instead; the embedding, the final norm, the LM head and the argmax stay as here.

Every function takes the engine (`eng`: its buffers, weights and placement settings) and launches into its
buffers; none allocates but the gated MLP's temporaries (from the graph's pool).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional, Union

import torch

from ..config import MAMBA2
from ..ops import cuda as K
from . import gemv as G, hybrid as Hy, prefill as P
from .weights import Layer

NORMED_PROJECTIONS = frozenset({"in_proj", "out_proj", "head"})  # the names NativeEngine(norm_in_gemv=) takes
STAGED_PROJECTIONS = frozenset({"in_proj", "x_proj", "out_proj"})  # and NativeEngine(staged_gemv=)
# The conv update runs in the projection's epilogue up to this batch, above it as a kernel of its own: at 64 rows the
# epilogue's few threads a tile, each output's 3 state values read and written one by one, cost a mamba-1.4b step
# 2.69 -> 3.53 ms (H200, session 9)
CONV_EPILOGUE_MAX_BATCH = 16
STEP_DSTATES = (32, 64, 128, 256)  # the state sizes mamba2_step takes (else the library's selective_state_update)
# Where cuBLAS runs a mixer's out_proj (16-bit, batch above the tensor-core GEMV's) up to OUT_PROJ_SLICES_MAX_BATCH
# rows, it runs as this many k slices into float32 partial sums that the next row norm adds (out_proj, SplitSums):
# no split-K reduce kernel. H100, session 42 (docs/performance.md): 2 slices made steps at batch 24-64 0.5-1.7%
# faster on the four published shapes, 4 slices at most 0.7% (and mixed at 64); not measured above 64
OUT_PROJ_SLICES, OUT_PROJ_SLICES_MAX_BATCH = 2, 64


class SplitSums(NamedTuple):
    """A mixer's output still as float32 partial sums over out_proj's k slices (out_proj), which the next norm adds
    up, rounds to the model dtype and then scales by `factor` (a folded gated norm's, or None)."""
    parts: torch.Tensor  # (slices, b, d_model) float32
    factor: Optional[P.NormFactor]

    def row_norm_args(self, rows: int) -> dict:
        """gemv.row_norm's arguments: x the slices, and the factor's."""
        return dict({} if self.factor is None else self.factor.row_norm_args(rows), x=self.parts)

    def applied(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output in hidden's dtype, times the factor (where no row norm takes the slices)."""
        summed = self.parts.sum(0).to(hidden.dtype)
        return summed if self.factor is None else self.factor.applied(summed)


Owed = Union[P.NormFactor, SplitSums]  # what a layer's output still owes the next norm


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """out = x @ w.T + b through cuBLAS, into `out` (no allocation)."""
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


def step(eng, b: int, greedy: bool = True) -> None:
    """One token for rows [:b] of the static buffers: ids -> logits, the state of slots slot_ids[:b] in place, and
    with `greedy` argmax -> ids."""
    c = eng.config
    rows = eng.slot_ids[:b]  # the state rows (slots) of the b batch rows
    torch.index_select(eng.emb, 0, eng.ids[:b], out=eng.hidden[:b])
    owed = None
    if b == 1 and eng.persistent is not None:
        eng.persistent.layers(eng)  # every layer in one launch (native/persistent.py)
    else:
        owed = layers(eng, b, rows)
    if c.attn_layer_idx:
        Hy.advance_length(eng.static, eng.hybrid, rows)
    normed_proj(eng, b, "head", *eng.norm_f, False, eng.head, None, eng.logits[:b], factor=owed)
    if greedy:
        torch.argmax(eng.logits[:b, :c.vocab_size], dim=-1, out=eng.ids[:b])


def layers(eng, b: int, rows: torch.Tensor) -> Optional[Owed]:
    """hidden[:b] (the embeddings) through every layer, a few launches a layer; rows: the batch rows' state slots.
    Returns what the last layer's output still owes the final norm (out_proj), or None."""
    c = eng.config
    proj_of_eng = partial(proj, eng)  # hybrid.Proj
    owed = None
    for i, L in enumerate(eng.layers):
        if L.kind == "attention":
            add_norm(eng, b, L.norm_w, L.norm_b, first=i == 0, factor=owed)
            Hy.attention_step(c, eng.hybrid, proj_of_eng, b, L, eng.normed[:b], eng.static, rows, eng.hidden[:b])
            owed = None
        elif L.kind == "mlp":
            add_norm(eng, b, L.norm_w, L.norm_b, first=i == 0, factor=owed)
            Hy.mlp_step(eng.hybrid, proj_of_eng, b, L, eng.normed[:b], eng.hidden[:b])
            owed = None
        else:
            conv = dict(lo=c.conv_lo, weight=L.conv_w, bias=L.conv_b, state=eng.static.conv[L.index],
                        state_rows=rows)
            normed_proj(eng, b, "in_proj", L.norm_w, L.norm_b, i == 0, L.in_w, L.in_b, eng.xz[:b], conv, factor=owed)
            owed = (mamba2_mixer if c.arch == MAMBA2 else mamba1_mixer)(eng, b, L, eng.static.ssm[L.index], rows)
        if c.d_intermediate:
            mlp_step(eng, b, L, owed)
            owed = None
    return owed


def add_norm(eng, b: int, weight, bias, first: bool, factor: Optional[Owed] = None) -> None:
    """residual <- hidden * f + residual (hidden * f alone for the first layer); normed <- norm(residual).
    f = 1, or the factor a folded gated norm left owing (mamba2_mixer); with SplitSums, hidden is their sum."""
    c = eng.config
    x, res, out = eng.hidden[:b], eng.residual[:b], eng.normed[:b]
    if c.rms_norm and bias is None and G.row_norm_ok(c.d_model, c.d_model, x, res, out):
        owed = {} if factor is None else factor.row_norm_args(b)  # SplitSums' names the x, their slices
        G.row_norm(owed.pop("x", x), None if first else res, weight, c.norm_eps, out=out, residual_out=res, **owed)
    else:
        x = x if factor is None else factor.applied(x)
        K.add_norm(x, None if first else res, weight, bias, c.norm_eps, c.rms_norm, c.residual_in_fp32, out=out,
                   residual_out=res)


def normed_proj(eng, b: int, name: str, weight, bias, first: bool, w, w_bias, out, conv=None,
                factor: Optional[Owed] = None) -> None:
    """out <- proj(norm(residual <- hidden * f + residual)) (add_norm, then proj), the norm inside the GEMV at
    batch 1 where norm_in_gemv names the projection and gemv's prologue applies (f = 1 only); it then writes the
    other residual buffer (eng.residuals) and points eng.residual at it. factor: as add_norm's."""
    c, x = eng.config, eng.hidden[:b]
    if factor is None and _norm_in_gemv(eng, name, b) and c.rms_norm and bias is None:
        spare = eng.residuals[1] if eng.residual is eng.residuals[0] else eng.residuals[0]
        norm = dict(weight=weight, eps=c.norm_eps, residual=None if first else eng.residual[:b],
                    residual_out=spare[:b])
        if G.norm_ok(x, norm):
            G.gemv(x, w, w_bias, out=out, conv=conv, norm=norm)
            eng.residual = spare
            return
    add_norm(eng, b, weight, bias, first, factor)
    proj(eng, eng.normed[:b], w, w_bias, out, conv, name=name)


def _norm_in_gemv(eng, name: str, b: int) -> bool:
    """Whether the norm before projection `name` may run inside its GEMV at batch b: norm_in_gemv names it, and
    batch 1 takes the CUDA-core GEMV."""
    return name in eng.norm_in_gemv and b == 1 <= eng.gemv_max_batch


def proj(eng, x, w, bias, out, conv: Optional[dict] = None, tc_max_batch: Optional[int] = None,
         name: Optional[str] = None) -> None:
    """out = x @ w.T (+ bias), then the conv epilogue on conv rows: the library's gemv (CUDA cores for small batch,
    its staged form where the engine's staged_gemv names the projection `name`, tensor cores up to tc_max_batch:
    the engine's unless given; their wgmma form from the engine's wgmma_min_batch on), else cuBLAS."""
    b, form = x.shape[0], proj_form(eng, x, w, tc_max_batch, name)
    if form == "staged":
        G.gemv(x, w, bias, out=out, conv=conv, algo="staged")
        return
    if form == "gemv":
        epilogue = conv if b <= CONV_EPILOGUE_MAX_BATCH else None
        wgmma = eng.gemv_max_batch < b and b >= eng.wgmma_min_batch  # else the library's choice (auto)
        G.gemv(x, w, bias, out=out, conv=epilogue, algo="wgmma" if wgmma else "auto")
        if epilogue is not None or conv is None:
            return
    else:
        linear(x, w, bias, out)
    if conv is not None:
        xc = out[:, conv["lo"]:conv["lo"] + conv["weight"].shape[0]]
        K.causal_conv1d_update(xc, conv["weight"], conv["bias"], conv["state"],
                               "silu" if conv.get("silu", True) else None, out=xc,
                               state_out=conv["state"], state_rows=conv.get("state_rows"))


def proj_form(eng, x, w, tc_max_batch: Optional[int] = None, name: Optional[str] = None) -> str:
    """Which form proj gives x (b, k) @ w.T: "staged", "gemv" (the library's CUDA-core or tensor-core GEMV) or
    "cublas" (proj's docstring)."""
    b = x.shape[0]
    if name is not None and name in eng.staged_gemv and b <= eng.staged_max_batch and G.staged_ok(x, w):
        return "staged"
    tc_max = eng.tc_max_batch if tc_max_batch is None else tc_max_batch
    return "gemv" if b <= eng.gemv_max_batch or (b <= tc_max and G.tc_ok(x, w)) else "cublas"


def out_proj(eng, y: torch.Tensor, L: Layer, factor: Optional[P.NormFactor] = None) -> Optional[Owed]:
    """hidden[:b] <- y @ out_w.T (+ bias), y (b, mixer_out_dim): a mixer's last projection. Where proj would take
    cuBLAS, b <= OUT_PROJ_SLICES_MAX_BATCH and the engine's out_proj_slices k slices apply (split_sums_ok), one
    batched product writes their float32 partial sums instead and the next norm adds them: returns SplitSums, else
    `factor` (what the output owes)."""
    b, w, tc_max = y.shape[0], L.out_w, eng.out_proj_tc_max_batch
    slices = 0 if eng.out_parts is None else min(eng.out_proj_slices, len(eng.out_parts))
    if (not slices or b > OUT_PROJ_SLICES_MAX_BATCH or L.out_b is not None or y.shape[1] % (8 * slices) or
            y.stride(0) % 8 or proj_form(eng, y, w, tc_max, "out_proj") != "cublas"):
        proj(eng, y, w, L.out_b, eng.hidden[:b], tc_max_batch=tc_max, name="out_proj")
        return factor
    parts = eng.out_parts[:slices, :b]
    slice_products(y, w, parts)
    return SplitSums(parts, factor)


def slice_products(x: torch.Tensor, w: torch.Tensor, parts: torch.Tensor) -> None:
    """parts[s] <- x[:, ks] @ w[:, ks].T in float32, ks the s-th of parts.shape[0] equal k slices: one batched cuBLAS
    product on views, no copy. x (b, k), w (n, k), parts (slices, b, n) float32."""
    slices = parts.shape[0]
    torch.bmm(x.unflatten(1, (slices, -1)).transpose(0, 1), w.unflatten(1, (slices, -1)).permute(1, 2, 0),
              out_dtype=torch.float32, out=parts)


def split_sums_ok(eng) -> bool:
    """Whether the engine's out_proj may leave SplitSums: a 16-bit model whose norms all take them (RMS norms
    without bias through row_norm: add_norm)."""
    c = eng.config
    biases = [L.norm_b for L in eng.layers] + [L.norm2_b for L in eng.layers] + [eng.norm_f[1]]
    return (eng.dtype in (torch.float16, torch.bfloat16) and c.rms_norm and all(b is None for b in biases) and
            G.row_norm_ok(c.d_model, c.d_model))


def mamba1_mixer(eng, b: int, L: Layer, ssm_pool: torch.Tensor, rows: torch.Tensor) -> Optional[Owed]:
    """xz[:b] (in_proj's output, x after the conv) -> hidden[:b]; the SSM state of slots `rows` in place. Returns
    what the output still owes the next norm (out_proj)."""
    d = eng.config.d_inner
    x, z, xdbl, y = eng.xz[:b, :d], eng.xz[:b, d:], eng.xdbl[:b], eng.y[:b]
    proj(eng, x, L.x_w, None, xdbl, tc_max_batch=eng.x_proj_tc_max_batch, name="x_proj")
    P.dt_bc_norm(eng.config, eng.unit, xdbl)
    if b < eng.dt_gemm_min_batch:  # the step kernel reads dt_proj once per 8 rows
        G.mamba1_step(x, z, xdbl, L.dt_packed, L.dt_b, L.A, L.D, ssm_pool, out=y, state_rows=rows)
    elif eng.step_dt_tc and G.mamba1_step_tc_ok(xdbl, ssm_pool, eng.config.d_state):  # the same on tensor cores
        G.mamba1_step(x, z, xdbl, L.dt_packed, L.dt_b, L.A, L.D, ssm_pool, out=y, state_rows=rows, tc=True)
    else:
        proj(eng, xdbl[:, :eng.config.dt_rank], L.dt_w, None, eng.dt[:b])
        G.mamba1_step(x, z, xdbl, None, L.dt_b, L.A, L.D, ssm_pool, out=y, state_rows=rows, dt=eng.dt[:b])
    return out_proj(eng, y, L)


def mamba2_mixer(eng, b: int, L: Layer, ssm_pool: torch.Tensor, rows: torch.Tensor) -> Optional[Owed]:
    """xz[:b] (in_proj's output, xBC after the conv) -> hidden[:b]; the SSM state of slots `rows` in place.
    Where the gated norm folds into the step (fold_decode): hidden[:b] before the norm's factor, returned as the
    NormFactor the next norm applies; else None (either one inside SplitSums where out_proj splits k)."""
    c = eng.config
    d, gn, H, gs, m = c.d_inner, c.ngroups * c.d_state, c.nheads, c.d_inner // c.ngroups, c.mamba2_mlp_dim
    lo, y, ynorm = c.conv_lo, eng.y[:b], eng.ynorm[:b, m:]
    xbc, dt, z = eng.xz[:b, lo:lo + c.conv_dim], eng.xz[:b, lo + c.conv_dim:], eng.xz[:b, lo - d:lo]
    fold = fold_decode(eng, b, L)
    if c.d_state in STEP_DSTATES:
        G.mamba2_step(ssm_pool, xbc[:, :d], dt, L.A, xbc[:, d:d + gn], xbc[:, d + gn:], L.D, L.dt_b, c.dt_limit,
                      out=ynorm if fold else y, state_rows=rows,
                      fold=dict(z=z, weight=L.gnorm_w, sumsq=eng.fold_sumsq) if fold else None)
        if fold:  # ynorm is the gated y times the norm weight; the next norm applies the rest
            return out_proj(eng, ynorm, L, P.NormFactor(eng.fold_sumsq[:b], d, c.norm_eps))
    else:
        K.selective_state_update(ssm_pool, xbc[:, :d].unflatten(1, (H, c.headdim)), dt, L.A,
                                 xbc[:, d:d + gn].unflatten(1, (c.ngroups, c.d_state)),
                                 xbc[:, d + gn:].unflatten(1, (c.ngroups, c.d_state)), L.D, None, L.dt_b, True,
                                 c.dt_limit, out=y.unflatten(1, (H, c.headdim)), state_out=ssm_pool,
                                 state_rows=rows)
    norm = dict(weight=L.gnorm_w, eps=c.norm_eps, gate=z)
    if _norm_in_gemv(eng, "out_proj", b) and m == 0 and gs == d and G.norm_ok(y, norm):
        G.gemv(y, L.out_w, L.out_b, out=eng.hidden[:b], norm=norm)  # the gated norm inside out_proj
        return
    if G.row_norm_ok(d, gs, y, z, ynorm):
        G.row_norm(y, z, L.gnorm_w, c.norm_eps, out=ynorm, gate=True, group_size=gs)
    else:
        K.gated_rms_norm(y, z, L.gnorm_w, c.norm_eps, gs, out=ynorm)
    P.d_ssm_mlp(c, eng.xz[:b], eng.ynorm[:b, :m])
    return out_proj(eng, eng.ynorm[:b], L)


def fold_decode(eng, b: int, L: Layer) -> bool:
    """Whether layer L's gated norm folds into mamba2_step at batch b: the engine's fold_gated_norm, a layer the
    prefill fold takes (prefill.fold_applies), a state size and head layout the step kernel folds, and not the
    batch-1 norm inside out_proj (norm_in_gemv), which saves the launch already."""
    c = eng.config
    return (eng.fold_gated_norm and P.fold_applies(c, L, eng.dtype) and c.d_state in STEP_DSTATES and
            G.fold_ok(c.nheads, c.headdim) and not _norm_in_gemv(eng, "out_proj", b))


def mlp_step(eng, b: int, L: Layer, factor: Optional[Owed] = None) -> None:
    """The gated MLP after a mixer, rows [:b]: residual += hidden * f; hidden <- fc2(y * silu(gate)), y, gate =
    halves of fc1(norm2(residual)) (models.lm.GatedMLP); f as add_norm's. The temporaries come from the graph's
    pool."""
    add_norm(eng, b, L.norm2_w, L.norm2_b, first=False, factor=factor)
    h, width = eng.mlp_h[:b], eng.config.d_intermediate
    proj(eng, eng.normed[:b], L.fc1_w, None, h)
    torch.mul(h[:, :width], torch.nn.functional.silu(h[:, width:]), out=eng.mlp_y[:b])
    proj(eng, eng.mlp_y[:b], L.fc2_w, None, eng.hidden[:b])
