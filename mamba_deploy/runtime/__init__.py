"""Runtime: the Engine API, the Backend interface and registry, sampling and generation."""
from .backend import BACKENDS, Backend, backend_names, load_backend, register_backend
from .engine import Engine
from .sampling import SamplingParams, sample

__all__ = ["BACKENDS", "Backend", "Engine", "SamplingParams", "backend_names", "load_backend", "register_backend",
           "sample"]
