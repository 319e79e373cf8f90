"""Runtime: the Engine API, the Backend interface and registry, state slots, the Scheduler, sampling.

Public names are imported on first use (module `__getattr__`), so that `runtime.names` (the backend
names the CLI lists) can be imported without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it (imported on first access)
_LAZY_NAMES = {
    "BACKENDS": ".backend", "Backend": ".backend", "load_backend": ".backend", "register_backend": ".backend",
    "backend_names": ".names", "Engine": ".engine", "SamplingParams": ".sampling", "sample": ".sampling",
    "RequestHandle": ".requests", "Scheduler": ".scheduler", "SlotSnapshot": ".slots", "StatePool": ".slots",
}

__all__ = ["BACKENDS", "Backend", "Engine", "RequestHandle", "SamplingParams", "Scheduler", "SlotSnapshot",
           "StatePool", "backend_names", "load_backend", "register_backend", "sample"]

if TYPE_CHECKING:
    from .backend import BACKENDS, Backend, load_backend, register_backend
    from .engine import Engine
    from .names import backend_names
    from .sampling import SamplingParams, sample
    from .requests import RequestHandle
    from .scheduler import Scheduler
    from .slots import SlotSnapshot, StatePool


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
