"""mamba-deploy: export Mamba / Mamba-2 language models and run them as fast inference engines.

The public names below are imported on first use (PEP 562 module `__getattr__`), not when the
package is imported: `import mamba_deploy.cli` must not pull in torch, onnx or transformers, so that
`mamba-deploy --help` and `--version` answer at once. `from mamba_deploy import Engine` works as usual.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError, MambaDeployError, ParameterError
from .version import __version__

# public name -> the submodule that defines it (imported on first access)
_LAZY_NAMES = {
    "Engine": ".runtime",
    "ModelConfig": ".config",
    "load_config": ".config",
    "load_reference": ".checkpoint",
}

__all__ = ["CheckpointError", "ConfigError", "Engine", "MambaDeployError", "ModelConfig", "ParameterError",
           "__version__", "load_config", "load_reference"]

if TYPE_CHECKING:  # what static tools and IDEs see
    from .checkpoint import load_reference
    from .config import ModelConfig, load_config
    from .runtime import Engine


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
