"""Options of `mamba-deploy triton` and their checks (ParameterError names the option)."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

from ..errors import ParameterError, is_integer, is_real

BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("cpu", "gpu")
DEFAULT_MAX_BATCH = 8  # onnxruntime; tensorrt defaults to the engines' own limit
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    backend: str = "onnxruntime"  # onnxruntime (the prefill graph) | tensorrt (the prefill plan)
    name: Optional[str] = None  # model name in the repository; None: the export folder's name
    max_batch: Optional[int] = None  # Triton max_batch_size; None: 8, or the TensorRT engines' max batch
    instances: int = 1  # instance_group count
    device: Optional[str] = None  # cpu | gpu (instance kind); None: cpu for onnxruntime, gpu for tensorrt
    idle_timeout: float = 5.0  # seconds a sequence may stay idle before Triton ends it (max_sequence_idle)
    engines: Optional[str] = None  # tensorrt: the engines/<NAME> folder, needed when there are several
    force: bool = False  # replace a repository this command wrote before
    copy: bool = False  # copy weights.data / the plan instead of hard-linking it (see files.py)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ParameterError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.name is not None and not (isinstance(self.name, str) and _MODEL_NAME.fullmatch(self.name)):
            raise ParameterError("name", f"must be letters, digits, '_', '.' or '-' (not starting with '.' or "
                                         f"'-'), got {self.name!r}")
        for field in ("max_batch", "instances"):
            value = getattr(self, field)
            if value is not None and not (is_integer(value) and 1 <= value <= 1 << 20):
                raise ParameterError(field, f"must be a positive integer, got {value!r}")
        if self.device is not None and self.device not in DEVICES:
            raise ParameterError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend == "tensorrt" and self.device == "cpu":
            raise ParameterError("device", "must be gpu with the tensorrt backend (TensorRT plans run on a GPU)")
        if not (is_real(self.idle_timeout) and 0 < self.idle_timeout <= 365 * 86400
                and math.isfinite(self.idle_timeout)):
            raise ParameterError("idle_timeout", f"must be a positive number of seconds, got {self.idle_timeout!r}")
        if self.engines is not None and self.backend != "tensorrt":
            raise ParameterError("engines", "only applies to the tensorrt backend")

    @property
    def instance_kind(self) -> str:
        """KIND_CPU | KIND_GPU."""
        device = self.device or ("gpu" if self.backend == "tensorrt" else "cpu")
        return f"KIND_{device.upper()}"
