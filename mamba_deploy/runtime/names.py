"""The built-in backends' names and the modules that register them, without importing any of them.

Kept free of heavy imports so that the CLI can offer the names as choices (and `--help` stays fast);
runtime.backend's registry imports them from here.
"""
from __future__ import annotations

# name -> module that registers it when imported
BACKEND_MODULES: dict[str, str] = {
    "onnxruntime": "mamba_deploy.runtime.backends.onnxruntime",
    "torch": "mamba_deploy.runtime.backends.torch",
    "native": "mamba_deploy.runtime.backends.native",
    "tensorrt": "mamba_deploy.runtime.backends.tensorrt",
}


def backend_names() -> list[str]:
    """"auto" and the built-in backends, whether or not they are available here."""
    return ["auto", *BACKEND_MODULES]
