"""Where the native engine's weights come from, all as {initializer name: tensor} in the export's naming
(`backbone.layers.3.mixer.in_proj.weight`, `mixer.A` = -exp(A_log) float32, conv1d.weight (dim, width)):

  * an export folder: the initializers of decode.onnx, read from weights.data at their external-data
    offsets (no second format; only graph metadata is parsed, the weights are memory-mapped);
  * a checkpoint folder: the exporter's own conversion, tensor by tensor;
  * a config: random weights of realistic scale made directly in GPU memory (benchmarks).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from ..config import MAMBA2, ModelConfig
from ..export.artifact import ExportInfo


def export_weights(info: ExportInfo) -> dict[str, torch.Tensor]:
    """Initializers of the export's decode.onnx read from weights.data at their external-data offsets (CPU)."""
    from ..export.weights import read_export_tensors

    return dict(read_export_tensors(info))


def checkpoint_weights(folder: str | Path, cfg: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A checkpoint folder converted exactly as the exporter converts it."""
    from ..checkpoint import iter_checked, weight_files
    from ..export.weights import ZERO_CONV_BIAS, export_name_and_tensor

    out = dict(export_name_and_tensor(k, t, dtype) for k, t in iter_checked(cfg, weight_files(Path(folder))))
    if not cfg.conv_bias:
        out[ZERO_CONV_BIAS] = torch.zeros(cfg.conv_dim, dtype=dtype)
    return out


@torch.no_grad()
def random_weights(cfg: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of realistic scale (random_init.init_weights_), built straight into `device` memory
    (no checkpoint files: a 2.75 GB model costs no disk)."""
    from ..export.weights import ZERO_CONV_BIAS, export_name_and_tensor
    from ..models import MambaLM
    from ..random_init import init_weights_

    with torch.device("meta"):
        model = MambaLM(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    init_weights_(model, seed)
    out = dict(export_name_and_tensor(k, p, dtype) for k, p in model.named_parameters())  # tied head once
    if not cfg.conv_bias:
        out[ZERO_CONV_BIAS] = torch.zeros(cfg.conv_dim, dtype=dtype, device=device)
    return out


@dataclasses.dataclass
class Layer:
    """One layer's weights on the device (None: absent in this layer's kind or model family).

    kind "mamba": in_proj, conv, A, D, dt bias, out_proj (+ Mamba1 x_proj / dt_proj, Mamba2 gated norm);
    kind "attention": in_w = in_proj (or q, k, v stacked), conv on its q k v rows with attn_d_conv, inv_freq
    with rotary, out_w = out_proj / o_proj; kind "mlp" (NemotronH): in_w = up_proj, out_w = down_proj.
    `index`: the layer's position in the state's lists of its kind (conv / ssm, or key / value / attn_conv)."""

    kind: str
    index: int
    norm_w: torch.Tensor
    norm_b: Optional[torch.Tensor]
    in_w: torch.Tensor
    in_b: Optional[torch.Tensor]
    out_w: torch.Tensor
    out_b: Optional[torch.Tensor]
    conv_w: Optional[torch.Tensor] = None
    conv_b: Optional[torch.Tensor] = None
    A: Optional[torch.Tensor] = None
    D: Optional[torch.Tensor] = None
    dt_b: Optional[torch.Tensor] = None
    x_w: Optional[torch.Tensor] = None  # Mamba1
    dt_w: Optional[torch.Tensor] = None
    dt_packed: Optional[torch.Tensor] = None
    gnorm_w: Optional[torch.Tensor] = None  # Mamba2
    inv_freq: Optional[torch.Tensor] = None  # attention with rotary: (attn_rotary_dim / 2,) float32
    norm2_w: Optional[torch.Tensor] = None  # gated MLP (d_intermediate > 0)
    norm2_b: Optional[torch.Tensor] = None
    fc1_w: Optional[torch.Tensor] = None
    fc2_w: Optional[torch.Tensor] = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in vars(self).values() if isinstance(t, torch.Tensor)]


def device_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple, list[Layer]]:
    """The engine's weights on `device` in `dtype` (A, D, dt bias float32): (embedding, LM head (the embedding
    when tied), (norm_f weight, bias or None), one Layer per layer). Raises KeyError naming a missing weight."""
    c, dev = cfg, device

    def get(name, as_dtype=None, optional=False):
        t = weights.get(name)
        if t is None:
            if optional:
                return None
            raise KeyError(f"native engine: weight {name!r} missing")
        return t.detach().to(device=dev, dtype=as_dtype or dtype).contiguous()

    emb = get("backbone.embedding.weight")
    head = emb if c.tie_embeddings else get("lm_head.weight")
    norm_f = (get("backbone.norm_f.weight"), get("backbone.norm_f.bias", optional=True))
    layers, counts = [], {"mamba": 0, "attention": 0, "mlp": 0}
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}."
        kind = "attention" if i in c.attn_layer_idx else "mlp" if i in c.mlp_layer_idx else "mamba"
        build = {"mamba": _mamba_layer, "attention": _attention_layer, "mlp": _mlp_layer}[kind]
        L = build(cfg, get, p + "mixer.", Layer(kind, counts[kind], get(p + "norm.weight"),
                                                get(p + "norm.bias", optional=True), *([None] * 4)))
        counts[kind] += 1
        if c.d_intermediate:
            L.norm2_w, L.norm2_b = get(p + "norm2.weight"), get(p + "norm2.bias", optional=True)
            L.fc1_w, L.fc2_w = get(p + "mlp.fc1.weight"), get(p + "mlp.fc2.weight")
        layers.append(L)
    return emb, head, norm_f, layers


def _mamba_layer(c: ModelConfig, get, m: str, L: Layer) -> Layer:
    from ..export.weights import ZERO_CONV_BIAS
    from .gemv import pack_dt_proj

    L.in_w, L.in_b = get(m + "in_proj.weight"), get(m + "in_proj.bias", optional=True)
    L.out_w, L.out_b = get(m + "out_proj.weight"), get(m + "out_proj.bias", optional=True)
    L.conv_w = get(m + "conv1d.weight").reshape(c.conv_dim, c.d_conv).contiguous()
    L.conv_b = get(m + "conv1d.bias", optional=True)
    if L.conv_b is None:  # a conv_bias: false model: the export's zeros, or zeros here
        L.conv_b = get(ZERO_CONV_BIAS, optional=True)
        L.conv_b = torch.zeros_like(L.conv_w[:, 0]) if L.conv_b is None else L.conv_b
    f32 = torch.float32
    L.A, L.D = get(m + "A", f32), get(m + "D", f32)
    L.dt_b = get(m + ("dt_bias" if c.arch == MAMBA2 else "dt_proj.bias"), f32)
    if c.arch == MAMBA2:
        L.gnorm_w = get(m + "norm.weight")
    else:
        L.x_w, L.dt_w = get(m + "x_proj.weight"), get(m + "dt_proj.weight")
        L.dt_packed = pack_dt_proj(L.dt_w)
    return L


def _attention_layer(c: ModelConfig, get, m: str, L: Layer) -> Layer:
    """mamba-ssm's MHA (in_proj rows: q, k, v, then the MLP part) or NemotronH's q/k/v/o projections, whose
    q, k and v rows are stacked into one in_w (one GEMV for all three)."""
    from ..ops import rotary_inv_freq

    if c.attn_separate_proj:
        names = [m + f"{x}_proj" for x in "qkv"]
        L.in_w = torch.cat([get(n + ".weight") for n in names])
        biases = [get(n + ".bias", optional=True) for n in names]
        L.in_b = None if biases[0] is None else torch.cat(biases)
        L.out_w, L.out_b = get(m + "o_proj.weight"), get(m + "o_proj.bias", optional=True)
    else:
        L.in_w, L.in_b = get(m + "in_proj.weight"), get(m + "in_proj.bias", optional=True)
        L.out_w, L.out_b = get(m + "out_proj.weight"), get(m + "out_proj.bias", optional=True)
    if c.attn_d_conv:
        L.conv_w = get(m + "conv1d.weight").reshape(c.attn_qkv_dim, c.attn_d_conv).contiguous()
        L.conv_b = get(m + "conv1d.bias", optional=True)
    if c.attn_rotary_dim:
        L.inv_freq = rotary_inv_freq(c.attn_rotary_dim, c.attn_rotary_base).to(L.in_w.device)
    return L


def _mlp_layer(c: ModelConfig, get, m: str, L: Layer) -> Layer:
    """NemotronH's MLP block: down_proj(relu(up_proj(x))^2)."""
    L.in_w, L.in_b = get(m + "up_proj.weight"), get(m + "up_proj.bias", optional=True)
    L.out_w, L.out_b = get(m + "down_proj.weight"), get(m + "down_proj.bias", optional=True)
    return L
