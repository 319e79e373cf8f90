"""Reading an export folder (docs/architecture.md "Export artifact"): its config.json with export metadata, and its files."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..errors import ConfigError, MambaDeployError

FORMAT_VERSION = 1
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """An export folder: model config + export metadata (`meta`, the "export" object of config.json)."""

    folder: Path
    config: ModelConfig
    meta: dict[str, Any]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]

    @property
    def state_dtype(self) -> torch.dtype:
        return DTYPES[self.meta["state_dtype"]]

    @property
    def all_logits(self) -> bool:
        return self.meta.get("logits") == "all"

    @property
    def tokenizer_file(self) -> Optional[Path]:
        path = self.folder / "tokenizer.json"
        return path if path.is_file() else None

    def graph(self, name: str) -> Path:
        path = self.folder / {"prefill": PREFILL_FILE, "decode": DECODE_FILE}[name]
        if not path.is_file():
            raise MambaDeployError(f"{self.folder}: {path.name} is missing (not a complete export folder)")
        return path


def is_export_folder(path: str | Path) -> bool:
    file = Path(path) / "config.json"
    try:
        return file.is_file() and "export" in json.loads(file.read_text())
    except (OSError, ValueError):
        return False


def load_export(path: str | Path) -> ExportInfo:
    """Parse and check an export folder; MambaDeployError on anything a user could get wrong."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise MambaDeployError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise MambaDeployError(f"{folder} is not a folder (expected an export folder from 'mamba-deploy export')")
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(f"{folder}: no config.json (not an export folder from 'mamba-deploy export')")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("export"), dict):
        raise ConfigError(f"{file}: no export metadata (is this a checkpoint? export it first with "
                          f"'mamba-deploy export')")
    meta = data.pop("export")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{file}: bad export format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{file}: export format version {version} is newer than this mamba-deploy supports "
                          f"({FORMAT_VERSION}); upgrade mamba-deploy")
    for key in ("dtype", "state_dtype"):
        if meta.get(key) not in DTYPES:
            raise ConfigError(f"{file}: export field '{key}' must be one of {', '.join(DTYPES)}, got {meta.get(key)!r}")
    try:
        config = ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    return ExportInfo(folder, config, meta)
