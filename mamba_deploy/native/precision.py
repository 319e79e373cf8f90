"""The engine's float32 matrix products (cuBLAS, through torch): IEEE float32 unless NativeEngine(tf32=True),
whatever the process's own setting. An application that calls torch.set_float32_matmul_precision("high") (or sets
torch.backends.cuda.matmul.allow_tf32) would otherwise run a float32 engine's projections in TF32, about three
decimal digits fewer, silently. The setting is process-wide in torch, so it is set for the length of each engine
call and restored after it. Engines of float16 / bfloat16 weights are untouched: the setting names float32
products only, and their calls pay nothing for it."""
import contextlib
import functools
from typing import Callable, Iterator

import torch

_MATMUL = torch.backends.cuda.matmul
_NEW_API = hasattr(_MATMUL, "fp32_precision")  # torch >= 2.9; allow_tf32 before


def _get() -> bool:
    return _MATMUL.fp32_precision == "tf32" if _NEW_API else bool(_MATMUL.allow_tf32)


def _set(tf32: bool) -> None:
    if _NEW_API:
        _MATMUL.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        _MATMUL.allow_tf32 = tf32


@contextlib.contextmanager
def float32_matmuls(tf32: bool) -> Iterator[None]:
    """Inside: torch's float32 CUDA matrix products in TF32 when `tf32`, else IEEE float32; after: as before."""
    saved = _MATMUL.fp32_precision if _NEW_API else _MATMUL.allow_tf32
    if _get() == tf32:
        yield
        return
    _set(tf32)
    try:
        yield
    finally:
        if _NEW_API:
            _MATMUL.fp32_precision = saved
        else:
            _MATMUL.allow_tf32 = saved


def engine_matmuls(method: Callable) -> Callable:
    """Decorator for the NativeEngine methods that run work on the GPU (eager kernels or graph captures): a
    float32 engine's products follow its `tf32` option there."""
    @functools.wraps(method)
    def call(engine, *args, **kwargs):
        if engine.dtype != torch.float32:
            return method(engine, *args, **kwargs)
        with float32_matmuls(engine.tf32):
            return method(engine, *args, **kwargs)
    return call
