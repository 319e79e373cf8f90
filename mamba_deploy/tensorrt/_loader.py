"""Lazy import of TensorRT (Polygraphy style): importing mamba_deploy never needs it; using the
TensorRT path without it raises one MambaDeployError that says how to install it."""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

from ..errors import MambaDeployError

INSTALL_HINT = (
    "TensorRT is not installed. Install it from NVIDIA's package index: "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt` (TensorRT >= 10.3, matching your CUDA), "
    "or unpack the TensorRT tar package and add its python wheel and lib/ folder "
    "(LD_LIBRARY_PATH); see docs/tensorrt.md"
)
MIN_VERSION = (10, 3)  # IPluginV3OneBuildV2, int64 I/O, strongly typed networks


def tensorrt_available() -> bool:
    """True when a `tensorrt` package can be found (it may still fail to load its libraries). A
    namespace package (a bare folder named tensorrt on sys.path, e.g. tests/tensorrt) does not count."""
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or MambaDeployError with install instructions."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:  # missing package, or a wheel whose libnvinfer cannot be loaded
        raise MambaDeployError(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    if getattr(trt, "__file__", None) is None:  # a namespace package: some folder named tensorrt
        raise MambaDeployError(f"{INSTALL_HINT} (`import tensorrt` found only the folder(s) "
                               f"{list(getattr(trt, '__path__', []))})")
    version = parse_version(getattr(trt, "__version__", "0"))
    if version < MIN_VERSION:
        raise MambaDeployError(f"TensorRT {trt.__version__} is too old: mamba-deploy needs TensorRT >= "
                               f"{'.'.join(map(str, MIN_VERSION))}. {INSTALL_HINT}")
    return trt


def parse_version(text: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); non-numeric parts end the tuple."""
    parts = []
    for piece in str(text).split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


PLUGIN_LIB_NAME = "libmamba_deploy_trt_plugins.so"
PLUGIN_ENV_VAR = "MAMBA_DEPLOY_TRT_PLUGINS"


def find_plugin_library(explicit: "str | os.PathLike[str] | None" = None) -> Path:
    """The plugin library: `explicit`, else $MAMBA_DEPLOY_TRT_PLUGINS, else mamba_deploy/_lib/
    (where `pip install .` puts it when CMake found TensorRT's headers)."""
    candidates = [Path(explicit)] if explicit else []
    if not candidates and os.environ.get(PLUGIN_ENV_VAR):
        candidates.append(Path(os.environ[PLUGIN_ENV_VAR]))
    if not candidates:
        candidates.append(Path(__file__).resolve().parent.parent / "_lib" / PLUGIN_LIB_NAME)
    for path in candidates:
        if path.expanduser().is_file():
            return path.expanduser().resolve()
    raise MambaDeployError(
        f"the TensorRT plugin library {PLUGIN_LIB_NAME} was not found (looked at "
        f"{', '.join(str(c) for c in candidates)}). Build it with TensorRT's headers present: "
        f"`TENSORRT_INCLUDE_DIR=/path/to/TensorRT/include pip install .`, or point {PLUGIN_ENV_VAR} at it")


class _LazyTensorRT:
    """`tensorrt`, imported on first attribute access (MambaDeployError when missing). Modules use
    it as `trt` at run time and the real module (tensorrt-stubs) under TYPE_CHECKING, so mypy checks
    every TensorRT call while importing them needs no TensorRT."""

    def __getattr__(self, name: str) -> object:
        return getattr(import_tensorrt(), name)


lazy_tensorrt = _LazyTensorRT()
