"""Options of `mamba-deploy build --backend tensorrt` and their validation (no TensorRT needed)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional, Union

from ..errors import MambaDeployError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Union[int, str, None]) -> Optional[int]:
    """Bytes from 1073741824, "1G", "1GiB", "512M", "64k" (binary units); None stays None."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise MambaDeployError(f"workspace must be positive, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
    if not match:
        raise MambaDeployError(f"cannot read size {value!r} (use e.g. 4G, 512M or a number of bytes)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise MambaDeployError(f"workspace must be positive, got {value!r}")
    return size


@dataclasses.dataclass
class BuildOptions:
    """What the engines are built for. Shapes outside [1, max_*] are rejected at run time."""

    max_batch: int = 8
    max_seq: int = 2048  # longest prefill chunk (longer prompts are fed in chunks)
    opt_seq: int = 512  # the prefill length TensorRT tunes for
    opt_batch: int = 1  # the batch TensorRT tunes for (decode and prefill)
    workspace: Union[int, str, None] = None  # builder workspace limit; None: TensorRT's default (device memory)
    hardware_compatible: bool = False  # Ampere+ portable engines (slower)
    version_compatible: bool = False  # plans loadable by later TensorRT versions (lean runtime)
    timing_cache: Optional[Union[str, Path]] = None  # read if present, written after the build
    plugin_lib: Optional[Union[str, Path]] = None  # default: the library built with the package
    aliased_state_io: bool = False  # PreviewFeature.ALIASED_PLUGIN_IO_10_03 (see docs/tensorrt.md)
    optimization_level: Optional[int] = None  # builder_optimization_level 0..5 (TensorRT default 3)
    force: bool = False  # rebuild even if build.json says the engines are current

    def validate(self) -> "BuildOptions":
        """Check and normalise in place; MambaDeployError names the bad option."""
        for name in ("max_batch", "max_seq", "opt_seq", "opt_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MambaDeployError(f"{name} must be a positive integer, got {value!r}")
        if self.opt_seq > self.max_seq:
            raise MambaDeployError(f"opt_seq ({self.opt_seq}) must not exceed max_seq ({self.max_seq})")
        if self.opt_batch > self.max_batch:
            raise MambaDeployError(f"opt_batch ({self.opt_batch}) must not exceed max_batch ({self.max_batch})")
        if self.max_batch > 65535:
            raise MambaDeployError(f"max_batch {self.max_batch} is above the kernels' limit of 65535")
        self.workspace = parse_size(self.workspace)
        if self.optimization_level is not None and self.optimization_level not in range(6):
            raise MambaDeployError(f"optimization_level must be 0..5, got {self.optimization_level!r}")
        if self.plugin_lib is not None:
            self.plugin_lib = Path(self.plugin_lib).expanduser()
            if not self.plugin_lib.is_file():
                raise MambaDeployError(f"plugin library {self.plugin_lib} does not exist")
        if self.timing_cache is not None:
            self.timing_cache = Path(self.timing_cache).expanduser()
            if self.timing_cache.is_dir():
                raise MambaDeployError(f"timing cache {self.timing_cache} is a folder, expected a file")
        return self

    def limits(self) -> dict[str, int]:
        return {"max_batch": self.max_batch, "max_seq": self.max_seq, "opt_seq": self.opt_seq,
                "opt_batch": self.opt_batch}
