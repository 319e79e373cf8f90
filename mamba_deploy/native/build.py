"""`mamba-deploy build --backend native`: check that this GPU runs an export natively, and record it."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ..errors import MambaDeployError
from .loading import engine_from_export, require_native


def gpu_slug(device: Optional[torch.device] = None) -> str:
    """'nvidia-h100-80gb-hbm3' from the device name."""
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_native(export_dir: str | os.PathLike, max_batch: int = 64, device: Optional[str] = None,
                 smoke_test: bool = True) -> Path:
    """Check that this GPU runs the export natively and record it: writes (atomically)
    export_dir/engines/<gpu-slug>-<dtype>/build.json with device, compute capability, dtype, max batch
    and versions. With smoke_test, loads the engine and runs a prefill + a graph-captured decode."""
    from ..version import __version__
    from ..export.artifact import load_export
    from ..ops import _lib

    info = load_export(export_dir)
    require_native()
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
        eng = engine_from_export(info, device=str(dev), max_batch=max_batch)
        state = eng.new_state(1)
        logits = eng.prefill(torch.arange(1, 5, dtype=torch.int64).unsqueeze(0) % info.config.vocab_size, state)
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
