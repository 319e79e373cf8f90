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
_FLAG = "fp32_precision" if _NEW_API else "allow_tf32"


@contextlib.contextmanager
def float32_matmuls(tf32: bool) -> Iterator[None]:
    """Inside: torch's float32 CUDA matrix products in TF32 when `tf32`, else IEEE float32, named explicitly
    unless the flag already reads so (torch's default "none" is named "ieee"); after: as before."""
    wanted = ("tf32" if tf32 else "ieee") if _NEW_API else tf32
    saved = getattr(_MATMUL, _FLAG)
    if saved == wanted:
        yield
        return
    setattr(_MATMUL, _FLAG, wanted)
    try:
        yield
    finally:
        setattr(_MATMUL, _FLAG, saved)


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
