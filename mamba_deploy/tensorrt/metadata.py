"""Where engines live and what build.json records (no TensorRT needed).

    out/NAME/engines/<gpu-slug>-<dtype>/prefill.plan, decode.plan, build.json

build.json says what the plans were built for, so the runtime can refuse (with a message) plans
from another GPU, TensorRT version, plugin library or export, instead of failing inside TensorRT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import MambaDeployError

BUILD_FORMAT = 1
BUILD_FILE = "build.json"
PLAN_FILES = {"prefill": "prefill.plan", "decode": "decode.plan"}


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; 'NVIDIA GeForce RTX 4090' -> 'geforce-rtx-4090'."""
    text = re.sub(r"^(nvidia\s+)", "", name.strip(), flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug or "gpu"


def engine_dir(export_dir: Union[str, Path], gpu_name: str, dtype: str, hardware_compatible: bool = False) -> Path:
    """engines/<gpu-slug>-<dtype>/ (hardware-compatible plans: engines/ampere-plus-<dtype>/)."""
    target = "ampere-plus" if hardware_compatible else gpu_slug(gpu_name)
    return Path(export_dir) / "engines" / f"{target}-{dtype}"


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Union[str, Path], data: Union[bytes, str, memoryview]) -> None:
    """Write `path` through a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class BuildRecord:
    """The content of build.json."""

    gpu: str
    compute_capability: str  # "9.0"
    tensorrt: str
    dtype: str
    state_dtype: str
    limits: dict[str, int]
    plugin_sha256: str
    export_sha256: dict[str, str]  # prefill.onnx / decode.onnx / config.json -> sha256 (weights excluded: size)
    hardware_compatible: bool = False
    version_compatible: bool = False
    aliased_state_io: bool = False
    plans: dict[str, str] = dataclasses.field(default_factory=lambda: dict(PLAN_FILES))
    format: int = BUILD_FORMAT
    tool: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = BUILD_FILE) -> "BuildRecord":
        if not isinstance(data, dict):
            raise MambaDeployError(f"{origin}: not a JSON object")
        if data.get("format") != BUILD_FORMAT:
            raise MambaDeployError(f"{origin}: build format {data.get('format')!r} is not {BUILD_FORMAT}; rebuild "
                                   f"with 'mamba-deploy build --backend tensorrt --force'")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in ("plans", "tool", "format",
                                                                          "hardware_compatible",
                                                                          "version_compatible", "aliased_state_io"))
        if missing:
            raise MambaDeployError(f"{origin}: missing {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def mismatches(self, gpu: str, compute_capability: str, tensorrt: str, plugin_sha256: Optional[str] = None
                   ) -> list[str]:
        """Why these plans cannot run here (empty: they can)."""
        why = []
        if not self.hardware_compatible and compute_capability != self.compute_capability:
            why.append(f"built for compute capability {self.compute_capability} ({self.gpu}), this GPU is "
                       f"{compute_capability} ({gpu})")
        if not self.version_compatible and _major_minor(tensorrt) != _major_minor(self.tensorrt):
            why.append(f"built with TensorRT {self.tensorrt}, this is TensorRT {tensorrt}")
        if plugin_sha256 is not None and plugin_sha256 != self.plugin_sha256:
            why.append("the plugin library changed since the build")
        return why


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def read_build_record(folder: Union[str, Path]) -> BuildRecord:
    path = Path(folder) / BUILD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MambaDeployError(f"{path.parent}: no {BUILD_FILE}; build the engines with "
                               f"'mamba-deploy build {path.parent.parent.parent} --backend tensorrt'") from None
    except (OSError, ValueError) as exc:
        raise MambaDeployError(f"{path}: unreadable ({exc})") from None
    return BuildRecord.from_dict(data, str(path))


def export_fingerprint(export_dir: Union[str, Path]) -> dict[str, str]:
    """sha256 of the export's graphs and config (the weights file is large; its size and mtime are
    covered by the graphs, which name it, and by the config)."""
    folder = Path(export_dir)
    return {name: file_sha256(folder / name) for name in ("config.json", "prefill.onnx", "decode.onnx")
            if (folder / name).is_file()}


def find_engine_dirs(export_dir: Union[str, Path]) -> list[Path]:
    """engines/*/ folders that hold a build.json, newest first."""
    root = Path(export_dir) / "engines"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / BUILD_FILE).is_file()]
    return sorted(found, key=lambda d: (d / BUILD_FILE).stat().st_mtime, reverse=True)
