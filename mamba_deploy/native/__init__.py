"""The native GPU backend: our CUDA kernels + cuBLAS, CUDA-graph decode with in-place state.

    eng = load_engine("out/mamba-1.4b")                        # an export folder (weights.data)
    eng = load_engine("ckpt/mamba-1.4b", dtype=torch.float16)  # a checkpoint folder (benchmarks)
    eng = random_engine("mamba-1.4b")                          # random weights made on the GPU
    build_native("out/mamba-1.4b", max_batch=64)               # engines/<gpu>-<dtype>/build.json
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..errors import MambaDeployError
from .engine import NativeEngine

__all__ = ["NativeEngine", "available", "build_native", "load_engine", "random_engine", "unavailable_reason"]


def unavailable_reason() -> Optional[str]:
    """None when the native engine can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    from ..ops import _lib

    return _lib.unavailable_reason()  # the one library holds the decode kernels too


def available() -> bool:
    return unavailable_reason() is None


def _require() -> None:
    reason = unavailable_reason()
    if reason:
        raise MambaDeployError(f"native backend unavailable: {reason}")


def load_engine(path: str | os.PathLike, dtype: Optional[torch.dtype] = None, state_dtype: Optional[torch.dtype] = None,
                **options: Any) -> NativeEngine:
    """An export folder (weights read from weights.data) or a checkpoint folder -> NativeEngine.
    options: device, max_batch, chunk_len, gemv_max_batch, use_graphs."""
    from ..export.artifact import is_export_folder, load_export
    from .weights import checkpoint_weights, export_weights

    _require()
    if is_export_folder(path):
        info = load_export(path)
        cfg, weights = info.config, export_weights(path)
        dtype, state_dtype = dtype or info.dtype, state_dtype or info.state_dtype
    else:
        from ..checkpoint import resolve_checkpoint
        from ..config import load_config

        folder = resolve_checkpoint(path)
        cfg, dtype = load_config(folder), dtype or torch.float16
        weights = checkpoint_weights(folder, cfg, dtype)
    return NativeEngine(cfg, weights, dtype=dtype, state_dtype=state_dtype or torch.float32, **options)


def random_engine(config: str | dict | ModelConfig, dtype: torch.dtype = torch.float16,
                  state_dtype: torch.dtype = torch.float32, seed: int = 0, **options: Any) -> NativeEngine:
    """A preset name (random_init.PRESETS), a mamba-ssm config dict or a ModelConfig -> engine with random
    weights of realistic scale, built in GPU memory (no checkpoint files)."""
    from ..config import parse_config
    from ..random_init import preset_config
    from .weights import random_weights

    _require()
    cfg = config if isinstance(config, ModelConfig) else parse_config(
        preset_config(config) if isinstance(config, str) else dict(config), origin="random-init config")
    device = torch.device(options.get("device", "cuda"))
    weights = random_weights(cfg, dtype, device, seed)
    return NativeEngine(cfg, weights, dtype=dtype, state_dtype=state_dtype, **options)


def gpu_slug(device: Optional[torch.device] = None) -> str:
    """'nvidia-h100-80gb-hbm3' from the device name."""
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_native(export_dir: str | os.PathLike, max_batch: int = 64, device: Optional[str] = None,
                 smoke_test: bool = True) -> Path:
    """Check that this GPU runs the export natively and record it: writes (atomically)
    export_dir/engines/<gpu-slug>-<dtype>/build.json with device, compute capability, dtype, max batch
    and versions. With smoke_test, loads the engine and runs a prefill + a graph-captured decode."""
    from .. import __version__
    from ..export.artifact import load_export
    from ..ops import _lib

    _require()
    info = load_export(export_dir)
    dev = torch.device(device or "cuda")
    props = torch.cuda.get_device_properties(dev)
    dtype_name = info.meta["dtype"]
    record = {
        "backend": "native", "device": props.name, "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory,
        "dtype": dtype_name, "state_dtype": info.meta["state_dtype"], "max_batch": int(max_batch),
        "versions": {"mamba_deploy": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "kernel_abi": _lib.EXPECTED_VERSION},
        "kernel_library": str(_lib.library_path()),
    }
    if smoke_test:
        eng = load_engine(export_dir, device=str(dev), max_batch=max_batch)
        state = eng.new_state(1)
        logits = eng.prefill(torch.zeros(1, 4, dtype=torch.int64), state)
        logits = eng.decode(logits[:, -1].argmax(-1, keepdim=True), state)
        if not torch.isfinite(logits.float()).all():
            raise MambaDeployError("native engine smoke test produced non-finite logits")
        record["smoke_test"] = "prefill 4 tokens + 1 graph decode: finite logits"
        del eng
    out = Path(export_dir) / "engines" / f"{gpu_slug(dev)}-{dtype_name}"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="build.", suffix=".json", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, out / "build.json")
    return out / "build.json"
