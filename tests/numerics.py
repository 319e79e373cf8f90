"""The relative error every numerical test uses: ||out - ref|| / ||ref||, in float64 on the CPU."""
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm())
