"""The native engine's layers over a chunk of tokens (prefill, eager): cuBLAS projections, the library's causal
conv and its prefill scans (Mamba1 selective scan; Mamba2 chunk scan, on tensor cores where it applies), all
writing the layer's conv and SSM state in place; `layer` is one whole layer (norm, mixer, MLP), `head_logits` the
final norm and LM head. Falcon-Mamba's dt / B / C norms (dt_bc_norm) and the d_ssm models' gated MLP part
(d_ssm_mlp) serve decode too.

A `handoff` (prefill_split.PartOrder) orders a layer's state updates after another stream's: its wait(kind) runs
just before the conv ("conv") or the scan ("scan") and its done(kind) just after, on the current stream.

With NativeEngine(fold_gated_norm=True), a Mamba2 layer with one norm group (fold_applies) folds its gated RMSNorm
into the chunk scan: the scan writes g * w (g = y * silu(z)) and each head's sum of g^2 (ops.cuda.chunk_scan's
norm_weight / norm_sumsq), out_proj runs on that, and the norm after the layer scales its input by the per-token
factor rsqrt(mean(g^2) + eps) it still owes (a NormFactor; row_norm's x_sumsq): out_proj is linear and has no
bias, so W (f g w) = f (W (g w)). One pass over y, z and the norm's output less a layer."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import MAMBA2, ModelConfig
from ..errors import ParameterError
from ..models.lm import check_prompt_lengths
from ..models.state import InferenceState
from ..ops import cuda as K
from ..ops._tensors import to_device_async
from . import gemv as G, hybrid as Hy
from .weights import Layer


class _NoHandoff:
    """No other stream to follow or to lead: a chunk's layers in its own stream's order."""
    def wait(self, kind: str) -> None:
        pass

    def done(self, kind: str) -> None:
        pass


NO_HANDOFF = _NoHandoff()


class NormFactor(NamedTuple):
    """The folded gated norm's factor a mixer's output still owes (module docstring): rsqrt(sumsq.sum(-1) / dim +
    eps) a token; sumsq (b, n, nheads) float32."""
    sumsq: torch.Tensor
    dim: int
    eps: float

    def last(self) -> NormFactor:
        """The factor of each row's last token alone."""
        return self._replace(sumsq=self.sumsq[:, -1:].contiguous())

    def row_norm_args(self, rows: int) -> dict:
        """gemv.row_norm's arguments that apply the factor to `rows` rows (x_sumsq (rows, count))."""
        return dict(x_sumsq=self.sumsq.view(rows, -1), sumsq_dim=self.dim, sumsq_eps=self.eps)

    def applied(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (b, n, d) times the factor, in hidden's dtype (where no row norm takes it)."""
        rstd = torch.rsqrt(self.sumsq.sum(-1, keepdim=True) / self.dim + self.eps)
        return (hidden.float() * rstd).to(hidden.dtype)


def fold_applies(cfg: ModelConfig, L: Layer, dtype: torch.dtype) -> bool:
    """Whether layer L's gated norm folds into its scan (module docstring): a Mamba2 layer with one norm group, no
    MLP part beside the SSM, no out_proj bias, its norm weight in the model dtype."""
    return (cfg.arch == MAMBA2 and L.kind == "mamba" and cfg.ngroups == 1 and cfg.mamba2_mlp_dim == 0 and
            L.out_b is None and L.gnorm_w is not None and L.gnorm_w.dtype == dtype)


def layer(eng, L: Layer, hidden: torch.Tensor, residual: Optional[torch.Tensor], state: InferenceState,
          rows: Optional[torch.Tensor] = None, pad: Optional[torch.Tensor] = None, attention: tuple = (),
          handoff=None, factor: Optional[NormFactor] = None
          ) -> tuple[torch.Tensor, torch.Tensor, Optional[NormFactor]]:
    """Layer L of NativeEngine `eng` over a chunk: (hidden, residual, factor) (b, n, d_model) (residual None before
    the first layer; factor: what the layer before still owes its output, or None) -> the next layer's; its state in
    `state` (rows, pad as in mamba_mixer; attention: the chunk's positions, hybrid.chunk_positions, for an
    attention layer)."""
    c = eng.config
    normed, residual = prefill_norm(c, eng.dtype, hidden, residual, L.norm_w, L.norm_b, factor)
    factor = None
    if L.kind == "attention":
        hidden = Hy.attention_prefill(c, L, normed, state, *attention)
    elif L.kind == "mlp":
        hidden = Hy.mlp_prefill(L, normed)
    else:
        fold = eng.fold_gated_norm and fold_applies(c, L, eng.dtype)
        hidden, factor = mamba_mixer(c, L, normed, state, eng.unit, rows, pad, handoff, fold)
    if c.d_intermediate:
        normed, residual = prefill_norm(c, eng.dtype, hidden, residual, L.norm2_w, L.norm2_b, factor)
        y, gate = F.linear(normed, L.fc1_w).chunk(2, dim=-1)
        hidden, factor = F.linear(y * F.silu(gate), L.fc2_w), None
    return hidden, residual, factor


def head_logits(eng, hidden: torch.Tensor, residual: torch.Tensor, all_logits: bool,
                factor: Optional[NormFactor] = None) -> torch.Tensor:
    """The last layer's (hidden, residual, factor) (b, n, d_model) -> logits (b, n or, without all_logits, 1,
    vocab_padded): the final norm and the LM head."""
    if not all_logits:
        hidden, residual = hidden[:, -1:].contiguous(), residual[:, -1:].contiguous()
        factor = None if factor is None else factor.last()
    normed, _ = prefill_norm(eng.config, eng.dtype, hidden, residual, *eng.norm_f, factor)
    return F.linear(normed, eng.head)


def dt_bc_norm(cfg: ModelConfig, unit: Optional[torch.Tensor], xdbl: torch.Tensor) -> None:
    """Falcon-Mamba (mixer_rms_eps set): x_proj's output xdbl (..., dt_rank + 2 d_state) <- weightless RMS norms
    of dt and of B and C, each over its own slice (ops.rms_norm_ref), in place: no allocation, no sync, so it is
    captured in the decode graph. unit: ones (>= dt_rank + 2 d_state,) in xdbl's dtype. Nothing for other models."""
    c = cfg
    if c.mixer_rms_eps is None:
        return
    for part, group in ((xdbl[..., :c.dt_rank], c.dt_rank), (xdbl[..., c.dt_rank:], c.d_state)):
        K.gated_rms_norm(part, None, unit[:part.shape[-1]], c.mixer_rms_eps, group, out=part)


def d_ssm_mlp(cfg: ModelConfig, xz: torch.Tensor, out: torch.Tensor) -> None:
    """mamba-ssm's Mamba2 with d_ssm < d_inner: out (..., mamba2_mlp_dim) <- silu(z0) * x0 from in_proj's output
    xz (..., in_proj_dim), silu rounded to the model dtype as the reference does; decode and prefill. Nothing
    for other models."""
    m = cfg.mamba2_mlp_dim
    if m:
        torch.mul(F.silu(xz[..., :m]), xz[..., m:2 * m], out=out)


def mamba_mixer(cfg: ModelConfig, L: Layer, normed: torch.Tensor, state: InferenceState,
                unit: Optional[torch.Tensor], rows: Optional[torch.Tensor] = None,
                pad: Optional[torch.Tensor] = None, handoff=None, fold: bool = False
                ) -> tuple[torch.Tensor, Optional[NormFactor]]:
    """A Mamba layer over a chunk: normed (b, n, d_model) -> ((b, n, d_model), None), or with fold its output before
    the gated norm's factor and that NormFactor; its conv and ssm state in place.
    rows: None (batch row r is row r of `state`) or (b,) int64 on the device: batch row r is row rows[r] of
    `state`, a pool (what a captured prefill graph replays on, whatever the slots).
    pad: None or (b, n) bool on the device, True at a row's left padding (its prompt is right-aligned); a row
    with padding must enter from a zero state, which its pad positions then leave as it was (outputs there are
    not meaningful). See mask_padding. handoff: None or a PartOrder (the module's docstring). fold: only where
    fold_applies."""
    c = cfg
    handoff = handoff or NO_HANDOFF
    b, n, _ = normed.shape
    conv_state, ssm_state = state.conv[L.index], state.ssm[L.index]
    xz = F.linear(normed, L.in_w, L.in_b)  # (b, n, in_proj_dim)
    lo = c.conv_lo
    if pad is not None:
        mask_padding(c, xz, pad)
    xc = torch.empty(b, n, c.conv_dim, dtype=normed.dtype, device=normed.device)
    handoff.wait("conv")
    K.causal_conv1d(xz[..., lo:lo + c.conv_dim].transpose(1, 2), L.conv_w, L.conv_b, conv_state, "silu",
                    out=xc.transpose(1, 2), state_out=conv_state, state_rows=rows)
    handoff.done("conv")
    if c.arch == MAMBA2:
        y, factor = _mamba2_scan(c, L, xz, xc, ssm_state, rows, handoff, fold)
    else:
        y, factor = _mamba1_scan(c, L, xz, xc, ssm_state, unit, rows, pad, handoff), None
    return F.linear(y, L.out_w, L.out_b), factor


def mask_padding(cfg: ModelConfig, xz: torch.Tensor, pad: torch.Tensor) -> None:
    """Left padding that leaves a zero state as it was, on in_proj's output xz (b, n, in_proj_dim), in place:
    the conv's input channels are zeroed at pad positions (so the conv of a row's first tokens sees zeros, as
    from a zero conv state, and its final state holds only real inputs), and dt there is set to its dtype's
    lowest value, so the scans' softplus(dt + bias) is 0: a decay of 1 and no input, the SSM state unchanged
    (Mamba1's dt comes out of dt_proj: _mamba1_scan masks it there). Mamba2's dt_limit must start at 0."""
    c = cfg
    at_pad = pad.unsqueeze(-1)
    xz[..., c.conv_lo:c.conv_lo + c.conv_dim].masked_fill_(at_pad, 0)
    if c.arch == MAMBA2:
        xz[..., c.conv_lo + c.conv_dim:].masked_fill_(at_pad, torch.finfo(xz.dtype).min)


def _mamba1_scan(c: ModelConfig, L: Layer, xz: torch.Tensor, xc: torch.Tensor, ssm_state: torch.Tensor,
                 unit: Optional[torch.Tensor], rows: Optional[torch.Tensor],
                 pad: Optional[torch.Tensor], handoff) -> torch.Tensor:
    """xz (b, n, 2 d_inner), xc = conv output (b, n, d_inner) -> y (b, n, d_inner); pad as in mamba_mixer."""
    R, N = c.dt_rank, c.d_state
    xdbl = F.linear(xc, L.x_w)  # (b, n, R + 2N)
    dt_bc_norm(c, unit, xdbl)
    dt = F.linear(xdbl[..., :R], L.dt_w)  # (b, n, d_inner), bias in the scan
    if pad is not None:
        dt.masked_fill_(pad.unsqueeze(-1), torch.finfo(dt.dtype).min)  # see mask_padding
    y = torch.empty_like(xc)
    handoff.wait("scan")
    K.selective_scan(xc.transpose(1, 2), dt.transpose(1, 2), L.A, xdbl[..., R:R + N].transpose(1, 2),
                     xdbl[..., R + N:].transpose(1, 2), L.D, xz[..., c.d_inner:].transpose(1, 2), L.dt_b,
                     ssm_state, True, out=y.transpose(1, 2), state_out=ssm_state, state_rows=rows)
    handoff.done("scan")
    return y


def _mamba2_scan(c: ModelConfig, L: Layer, xz: torch.Tensor, xc: torch.Tensor, ssm_state: torch.Tensor,
                 rows: Optional[torch.Tensor], handoff, fold: bool) -> tuple[torch.Tensor, Optional[NormFactor]]:
    """xz (b, n, in_proj_dim), xc = conv output (b, n, conv_dim) -> (out_proj's input (b, n, mixer_out_dim), None):
    the gated-normed y, after silu(z0) * x0 where mamba-ssm's d_ssm < d_inner leaves a gated MLP beside the SSM.
    With fold: (y gated times the norm weight (b, n, d_inner), the NormFactor it still owes)."""
    d, gn, m, lo = c.d_inner, c.ngroups * c.d_state, c.mamba2_mlp_dim, c.conv_lo
    b, n = xz.shape[:2]
    x = xc[..., :d].unflatten(-1, (c.nheads, c.headdim))
    B = xc[..., d:d + gn].unflatten(-1, (c.ngroups, c.d_state))
    C = xc[..., d + gn:].unflatten(-1, (c.ngroups, c.d_state))
    dt = xz[..., lo + c.conv_dim:]
    y = torch.empty(b, n, c.nheads, c.headdim, dtype=xc.dtype, device=xc.device)
    z = xz[..., lo - d:lo].unflatten(-1, (c.nheads, c.headdim)) if fold else None  # gated in the scan
    sumsq = torch.empty(b, n, c.nheads, dtype=torch.float32, device=xc.device) if fold else None
    handoff.wait("scan")
    K.chunk_scan(x, dt, L.A, B, C, c.chunk_size, L.D, z, L.dt_b, ssm_state, True, c.dt_limit, out=y,
                 state_out=ssm_state, state_rows=rows, norm_weight=L.gnorm_w if fold else None, norm_sumsq=sumsq)
    handoff.done("scan")
    if fold:
        return y.view(b, n, d), NormFactor(sumsq, d, c.norm_eps)
    out = torch.empty(b, n, m + d, dtype=xc.dtype, device=xc.device)
    y2, z2, out2 = y.view(b * n, d), xz.view(b * n, -1)[:, lo - d:lo], out.view(b * n, -1)[:, m:]
    if L.gnorm_w.dtype == y.dtype and G.row_norm_ok(d, d // c.ngroups, y2, z2, out2):  # 16-byte rows
        G.row_norm(y2, z2, L.gnorm_w, c.norm_eps, out=out2, gate=True, group_size=d // c.ngroups)
    else:
        K.gated_rms_norm(y2, z2, L.gnorm_w, c.norm_eps, d // c.ngroups, out=out2)
    d_ssm_mlp(c, xz, out[..., :m])
    return out, None


def prefill_norm(cfg: ModelConfig, dtype: torch.dtype, hidden: torch.Tensor, residual: Optional[torch.Tensor],
                 weight: torch.Tensor, bias: Optional[torch.Tensor], factor: Optional[NormFactor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden, residual (b, n, d_model) -> (normed, residual + hidden) for a model in `dtype`: row_norm's 16-byte
    rows where it applies (RMSNorm without bias; it is also the decode step's norm), else the library's add_norm.
    factor: what hidden still owes (a folded gated norm's NormFactor), applied first."""
    c = cfg
    res_dtype = torch.float32 if c.residual_in_fp32 else dtype
    if c.rms_norm and bias is None and hidden.dtype == weight.dtype == dtype and hidden.is_contiguous():
        normed = torch.empty_like(hidden)
        res_out = residual if residual is not None else torch.empty(hidden.shape, dtype=res_dtype, device=hidden.device)
        x2, r2, n2 = (t.view(-1, c.d_model) for t in (hidden, res_out, normed))
        if res_out.dtype == res_dtype and res_out.is_contiguous() and G.row_norm_ok(c.d_model, c.d_model, x2, r2, n2):
            owed = {} if factor is None else factor.row_norm_args(x2.shape[0])
            G.row_norm(x2, None if residual is None else r2, weight, c.norm_eps, out=n2, residual_out=r2, **owed)
            return normed, res_out
    if factor is not None:
        hidden = factor.applied(hidden)
    return K.add_norm(hidden, residual, weight, bias, c.norm_eps, c.rms_norm, c.residual_in_fp32, out_dtype=dtype,
                      residual_out=residual)


def check_lengths(cfg: ModelConfig, shape: tuple[int, int], lengths: Sequence[int]) -> None:
    """Raises ParameterError for NativeEngine.prefill's `lengths` (each row's prompt length, right-aligned in a
    (b, L) batch) that cannot be left-padded."""
    check_prompt_lengths(lengths, *shape)
    why = padding_unsupported(cfg)
    if why:
        raise ParameterError("lengths", why)


def padding_unsupported(cfg: ModelConfig) -> str:
    """Why this model's prompts cannot be left-padded in one batch, or "" when they can."""
    if cfg.attn_layer_idx:
        return "needs a model without attention layers (left padding)"
    if cfg.arch == MAMBA2 and cfg.dt_limit[0] > 0:
        return "needs dt_limit to start at 0 (left padding sets dt to 0)"
    return ""


def pad_mask(lengths: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    """(len(lengths), width) bool on `device`: True left of each row's last lengths[r] positions."""
    starts = torch.tensor([width - k for k in lengths], dtype=torch.int64)
    return to_device_async(torch.arange(width).unsqueeze(0) < starts.unsqueeze(1), device)


def left_padding(cfg: ModelConfig, shape: tuple[int, int], lengths: Optional[Sequence[int]],
                 device: torch.device) -> tuple[Optional[torch.Tensor], int]:
    """(pad (b, L) bool on `device`, True at left padding; the first position no row pads) for checked
    `lengths` (check_lengths), or (None, 0) without lengths."""
    if lengths is None:
        return None, 0
    check_lengths(cfg, shape, lengths)
    return pad_mask(lengths, shape[1], device), shape[1] - min(lengths)
