"""Where the native engine's weights come from, all as {initializer name: tensor} in the export's naming
(`backbone.layers.3.mixer.in_proj.weight`, `mixer.A` = -exp(A_log) float32, conv1d.weight (dim, width)):

  * an export folder: the initializers of decode.onnx, read from weights.data at their external-data
    offsets (no second format; only graph metadata is parsed, the weights are memory-mapped);
  * a checkpoint folder: the exporter's own conversion, tensor by tensor;
  * a config: random weights of realistic scale made directly in GPU memory (benchmarks).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
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
