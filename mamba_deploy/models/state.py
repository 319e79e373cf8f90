"""Explicit recurrent state of a Mamba LM: one conv state and one SSM state per layer."""
from __future__ import annotations

import dataclasses

import torch

from ..config import ModelConfig


@dataclasses.dataclass
class InferenceState:
    """conv[i]: (batch, conv_dim, d_conv - 1) in the model dtype;
    ssm[i]: (batch, d_inner, d_state) for Mamba1, (batch, nheads, headdim, d_state) for Mamba2."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch_size: int, dtype: torch.dtype, state_dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> "InferenceState":
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return cls(
            conv=[torch.zeros(cfg.conv_state_shape(batch_size), dtype=dtype, device=device) for _ in range(cfg.n_layer)],
            ssm=[torch.zeros(cfg.ssm_state_shape(batch_size), dtype=state_dtype, device=device)
                 for _ in range(cfg.n_layer)],
        )

    @property
    def batch_size(self) -> int:
        return self.conv[0].shape[0]

    def zero_(self) -> "InferenceState":
        for t in self.conv + self.ssm:
            t.zero_()
        return self

    def clone(self) -> "InferenceState":
        return InferenceState([t.clone() for t in self.conv], [t.clone() for t in self.ssm])

    def select(self, rows: slice | list[int]) -> "InferenceState":
        """Rows of the batch as a new (copied) state."""
        return InferenceState([t[rows].clone() for t in self.conv], [t[rows].clone() for t in self.ssm])
