"""The relative error every numerical test uses: ||out - ref|| / ||ref||, in float64 on the CPU; and the sum of a
k-split projection's float32 slices as the kernels form it."""
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm())


def slices_sum(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """parts (slices, ...) float32 added in slice order, rounded to dtype (gemv.h: md_row_norm_params.x_parts)."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total.to(dtype)
