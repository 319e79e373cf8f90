"""The native GPU backend: our CUDA kernels + cuBLAS, CUDA-graph decode with in-place state.

    eng = engine_from_export(load_export("out/mamba-1.4b"))    # an export (weights.data)
    eng = load_engine("ckpt/mamba-1.4b", dtype=torch.float16)  # an export or checkpoint folder (benchmarks)
    eng = random_engine("mamba-1.4b")                          # random weights made on the GPU
    build_native("out/mamba-1.4b", max_batch=64)               # engines/<gpu>-<dtype>/build.json
"""
from .build import build_native, gpu_slug
from .engine import NativeEngine
from .loading import available, engine_from_export, load_engine, random_engine, unavailable_reason

__all__ = ["NativeEngine", "available", "build_native", "engine_from_export", "gpu_slug", "load_engine",
           "random_engine", "unavailable_reason"]
