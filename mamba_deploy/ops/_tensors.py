"""What the ctypes bindings (ops/cuda.py, native/gemv.py) pass for a torch tensor: its md_dtype code,
its device address and the stream to launch on; and small host -> device copies that do not wait."""
from __future__ import annotations

from typing import Optional

import torch

# md_dtype (plugins/kernels/mamba_kernels.h)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def data_ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    """Device address of t's first element; None (a NULL pointer) for None."""
    return None if t is None else t.data_ptr()


def current_stream(device: torch.device) -> int:
    """The current torch stream of `device`, as a cudaStream_t (int)."""
    return torch.cuda.current_stream(device).cuda_stream


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device` without waiting for the work queued there: a copy to a GPU goes through pinned memory
    (torch's caching host allocator keeps it until the copy is done), as a pageable one would wait."""
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
