"""Making a NativeEngine: from an export (its ExportInfo, read once by the caller), a checkpoint folder, or
random weights built on the GPU; and whether this machine can run one at all."""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..errors import MambaDeployError
from ..export.artifact import ExportInfo, check_export
from .engine import NativeEngine


def unavailable_reason() -> Optional[str]:
    """None when the native engine can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    from ..ops import _lib

    return _lib.unavailable_reason()  # the one library holds the decode kernels too


def available() -> bool:
    return unavailable_reason() is None


def require_native() -> None:
    """Raise MambaDeployError saying why, when the native engine cannot run here."""
    reason = unavailable_reason()
    if reason:
        raise MambaDeployError(f"native backend unavailable: {reason}")


def engine_from_export(info: ExportInfo, dtype: Optional[torch.dtype] = None,
                       state_dtype: Optional[torch.dtype] = None, **options: Any) -> NativeEngine:
    """An export (weights read from its weights.data) -> NativeEngine. options: device, max_batch, chunk_len,
    gemv_max_batch, tc_max_batch, use_graphs, dt_gemm_min_batch, programmatic_launch, max_seq_len (a hybrid's KV
    cache length; default the export's)."""
    from .weights import export_weights

    require_native()
    if info.max_seq_len:
        options.setdefault("max_seq_len", info.max_seq_len)
    return NativeEngine(info.config, export_weights(check_export(info)), dtype=dtype or info.dtype,
                        state_dtype=state_dtype or info.state_dtype, **options)


def load_engine(path: str | os.PathLike, dtype: Optional[torch.dtype] = None, state_dtype: Optional[torch.dtype] = None,
                **options: Any) -> NativeEngine:
    """An export folder or a checkpoint folder (benchmarks; dtype default float16) -> NativeEngine."""
    from ..export.artifact import is_export_folder, load_export

    if is_export_folder(path):
        return engine_from_export(load_export(path), dtype, state_dtype, **options)
    from ..checkpoint import checkpoint_config, resolve_checkpoint
    from .weights import checkpoint_weights

    folder = resolve_checkpoint(path)
    cfg, dtype = checkpoint_config(folder), dtype or torch.float16
    require_native()
    return NativeEngine(cfg, checkpoint_weights(folder, cfg, dtype), dtype=dtype,
                        state_dtype=state_dtype or torch.float32, **options)


def random_engine(config: str | dict | ModelConfig, dtype: torch.dtype = torch.float16,
                  state_dtype: torch.dtype = torch.float32, seed: int = 0, **options: Any) -> NativeEngine:
    """A preset name (random_init.PRESETS), a mamba-ssm config dict or a ModelConfig -> engine with random
    weights of realistic scale, built in GPU memory (no checkpoint files)."""
    from ..config import parse_config
    from ..random_init import preset_config
    from .weights import random_weights

    cfg = config if isinstance(config, ModelConfig) else parse_config(
        preset_config(config) if isinstance(config, str) else dict(config), origin="random-init config")
    require_native()
    device = torch.device(options.get("device", "cuda"))
    weights = random_weights(cfg, dtype, device, seed)
    return NativeEngine(cfg, weights, dtype=dtype, state_dtype=state_dtype, **options)
