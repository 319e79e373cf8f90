"""The PyTorch reference language model for Mamba1 and Mamba2 (prefill + recurrent decode), with mamba-ssm's
optional gated MLP after each mixer (`d_intermediate > 0`)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MAMBA2, ModelConfig
from ..ops import add_norm_ref
from .mixers import Mamba1Mixer, Mamba2Mixer
from .state import InferenceState


class Norm(nn.Module):
    """RMSNorm (mamba-ssm default) or LayerNorm with bias (`rms_norm: false`)."""

    def __init__(self, dim: int, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.is_rms, self.eps = cfg.rms_norm, cfg.norm_eps
        self.weight = nn.Parameter(torch.empty(dim, dtype=dtype, device=device))
        self.bias = None if cfg.rms_norm else nn.Parameter(torch.empty(dim, dtype=dtype, device=device))

    def add_forward(self, x, residual, residual_in_fp32: bool):
        """residual <- x + residual; returns (norm(residual) in the weight dtype, residual)."""
        return add_norm_ref(x, residual, self.weight, self.bias, self.eps, self.is_rms, residual_in_fp32,
                            out_dtype=self.weight.dtype)


class GatedMLP(nn.Module):
    """mamba-ssm's GatedMLP: fc2(y * silu(gate)) with y, gate = fc1(x) halves, in the model dtype, no biases."""

    def __init__(self, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, 2 * cfg.d_intermediate, bias=False, dtype=dtype, device=device)
        self.fc2 = nn.Linear(cfg.d_intermediate, cfg.d_model, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class Block(nn.Module):
    """norm -> mixer, then (d_intermediate > 0) residual add -> norm2 -> mlp, as mamba-ssm's Block."""

    def __init__(self, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.norm = Norm(cfg.d_model, cfg, dtype, device)
        self.mixer = (Mamba2Mixer if cfg.arch == MAMBA2 else Mamba1Mixer)(cfg, dtype, device)
        if cfg.d_intermediate:
            self.norm2 = Norm(cfg.d_model, cfg, dtype, device)
            self.mlp = GatedMLP(cfg, dtype, device)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size_padded, cfg.d_model, dtype=dtype, device=device)
        self.layers = nn.ModuleList(Block(cfg, dtype, device) for _ in range(cfg.n_layer))
        self.norm_f = Norm(cfg.d_model, cfg, dtype, device)


class MambaLM(nn.Module):
    """Mamba1/Mamba2 LM. Parameter names follow mamba-ssm (`backbone.layers.{i}.mixer.in_proj.weight` ...).

    `model(input_ids)` -> logits (batch, seqlen, vocab_size_padded) from a zero state;
    `prefill(input_ids, state)` / `decode(input_ids, state)` -> last-position logits (batch, 1, vocab_size_padded),
    updating `state` in place.
    """

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg, dtype, device)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size_padded, bias=False, dtype=dtype, device=device)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def new_state(self, batch_size: int, state_dtype: torch.dtype = torch.float32) -> InferenceState:
        return InferenceState.zeros(self.config, batch_size, self.dtype, state_dtype, self.device)

    def _run(self, input_ids: torch.Tensor, state: InferenceState, step: bool, all_logits: bool) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] != state.batch_size:
            raise ValueError(f"input_ids batch {input_ids.shape[0]} != state batch {state.batch_size}")
        hidden, residual = self.backbone.embedding(input_ids.to(self.device)), None
        for i, layer in enumerate(self.backbone.layers):
            normed, residual = layer.norm.add_forward(hidden, residual, self.config.residual_in_fp32)
            run = layer.mixer.step if step else layer.mixer.forward
            hidden, conv, ssm = run(normed, state.conv[i], state.ssm[i])
            state.conv[i].copy_(conv)
            state.ssm[i].copy_(ssm)
            if self.config.d_intermediate:
                normed, residual = layer.norm2.add_forward(hidden, residual, self.config.residual_in_fp32)
                hidden = layer.mlp(normed)
        if not all_logits:
            hidden, residual = hidden[:, -1:], residual[:, -1:]
        normed, _ = self.backbone.norm_f.add_forward(hidden, residual, self.config.residual_in_fp32)
        return self.lm_head(normed)

    def forward(self, input_ids: torch.Tensor, state: Optional[InferenceState] = None) -> torch.Tensor:
        """Logits at every position: (batch, seqlen, vocab_size_padded). Differentiable (used for training)."""
        state = state if state is not None else self.new_state(input_ids.shape[0])
        return self._run(input_ids, state, step=False, all_logits=True)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: InferenceState, chunk_len: Optional[int] = None) -> torch.Tensor:
        """Feed a prompt (batch, seqlen), optionally in chunks of `chunk_len` tokens; last logits (batch, 1, V)."""
        if input_ids.shape[-1] < 1:
            raise ValueError("prefill needs at least one token")
        chunk_len = chunk_len or input_ids.shape[-1]
        for start in range(0, input_ids.shape[-1], chunk_len):
            logits = self._run(input_ids[:, start:start + chunk_len], state, step=False, all_logits=False)
        return logits

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """One token per row, input_ids (batch, 1) -> logits (batch, 1, V)."""
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"decode takes input_ids of shape (batch, 1), got {tuple(input_ids.shape)}")
        return self._run(input_ids, state, step=True, all_logits=False)
