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
    """One layer's weights on the device (None: absent in this model family)."""

    norm_w: torch.Tensor
    norm_b: Optional[torch.Tensor]
    in_w: torch.Tensor
    in_b: Optional[torch.Tensor]
    conv_w: torch.Tensor
    conv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: Optional[torch.Tensor]
    A: torch.Tensor
    D: torch.Tensor
    dt_b: torch.Tensor
    x_w: Optional[torch.Tensor] = None  # Mamba1
    dt_w: Optional[torch.Tensor] = None
    dt_packed: Optional[torch.Tensor] = None
    gnorm_w: Optional[torch.Tensor] = None  # Mamba2
    norm2_w: Optional[torch.Tensor] = None  # gated MLP (d_intermediate > 0)
    norm2_b: Optional[torch.Tensor] = None
    fc1_w: Optional[torch.Tensor] = None
    fc2_w: Optional[torch.Tensor] = None


def device_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple, list[Layer]]:
    """The engine's weights on `device` in `dtype` (A, D, dt bias float32): (embedding, LM head (the embedding
    when tied), (norm_f weight, bias or None), one Layer per layer). Raises KeyError naming a missing weight."""
    from ..export.weights import ZERO_CONV_BIAS
    from .gemv import pack_dt_proj

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
    zero_bias = weights.get(ZERO_CONV_BIAS)
    layers = []
    for i in range(c.n_layer):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        conv_b = get(m + "conv1d.bias", optional=True)
        if conv_b is None:
            conv_b = torch.zeros(c.conv_dim, dtype=dtype, device=dev) if zero_bias is None else \
                zero_bias.detach().to(dev, dtype)
        f32 = torch.float32
        L = Layer(norm_w=get(p + "norm.weight"), norm_b=get(p + "norm.bias", optional=True),
                  in_w=get(m + "in_proj.weight"), in_b=get(m + "in_proj.bias", optional=True),
                  conv_w=get(m + "conv1d.weight").reshape(c.conv_dim, c.d_conv).contiguous(), conv_b=conv_b,
                  out_w=get(m + "out_proj.weight"), out_b=get(m + "out_proj.bias", optional=True),
                  A=get(m + "A", f32), D=get(m + "D", f32),
                  dt_b=get(m + ("dt_bias" if c.arch == MAMBA2 else "dt_proj.bias"), f32))
        if c.arch == MAMBA2:
            L.gnorm_w = get(m + "norm.weight")
        else:
            L.x_w, L.dt_w = get(m + "x_proj.weight"), get(m + "dt_proj.weight")
            L.dt_packed = pack_dt_proj(L.dt_w)
        if c.d_intermediate:
            L.norm2_w, L.norm2_b = get(p + "norm2.weight"), get(p + "norm2.bias", optional=True)
            L.fc1_w, L.fc2_w = get(p + "mlp.fc1.weight"), get(p + "mlp.fc2.weight")
        layers.append(L)
    return emb, head, norm_f, layers
