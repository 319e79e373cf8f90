"""The PyTorch reference language model for Mamba1 and Mamba2 (prefill + recurrent decode), with mamba-ssm's
optional gated MLP after each mixer (`d_intermediate > 0`)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MAMBA2, ModelConfig
from ..errors import ParameterError, is_integer
from ..ops import add_norm_ref
from .attention import AttentionMixer
from .mixers import Mamba1Mixer, Mamba2Mixer
from .state import InferenceState


DEFAULT_MAX_SEQ_LEN = 2048  # KV cache length of a hybrid's state when none is asked for (also the export default)


def check_room(state: InferenceState, new_tokens: int) -> None:
    """ParameterError when `new_tokens` more tokens would overflow a hybrid's KV cache (before anything is written)."""
    if state.length is not None and new_tokens > 0:
        longest = int(state.length.max()) + new_tokens
        if longest > state.max_seq_len:
            raise ParameterError("max_seq_len", f"exceeded: a sequence would reach {longest} tokens, the KV cache "
                                                f"holds {state.max_seq_len} (export with a larger --max-seq-len)")


def check_prompt_lengths(lengths, batch: int, width: int) -> None:
    """ParameterError unless `lengths` are `batch` prompt lengths in 1..width (prompts right-aligned in a
    (batch, width) batch of ids: left padding)."""
    if len(lengths) != batch or not all(is_integer(k) and 1 <= k <= width for k in lengths):
        raise ParameterError("lengths", f"must be {batch} prompt lengths in 1..{width}, got {list(lengths)}")


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


class ReluSquaredMLP(nn.Module):
    """NemotronH's MLP layer mixer: down_proj(relu(up_proj(x))^2), in the model dtype."""

    def __init__(self, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.mlp_bias, dtype=dtype, device=device)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=cfg.mlp_bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        return self.down_proj(torch.square(F.relu(self.up_proj(x))))


class Block(nn.Module):
    """norm -> mixer, then (d_intermediate > 0) residual add -> norm2 -> mlp, as mamba-ssm's Block; the mixer of
    layer i is attention (attn_layer_idx), NemotronH's MLP (mlp_layer_idx) or Mamba."""

    def __init__(self, cfg: ModelConfig, dtype, device=None, layer: int = 0):
        super().__init__()
        self.norm = Norm(cfg.d_model, cfg, dtype, device)
        mixer = AttentionMixer if layer in cfg.attn_layer_idx else ReluSquaredMLP if layer in cfg.mlp_layer_idx \
            else Mamba2Mixer if cfg.arch == MAMBA2 else Mamba1Mixer
        self.mixer = mixer(cfg, dtype, device)
        if cfg.d_intermediate:
            self.norm2 = Norm(cfg.d_model, cfg, dtype, device)
            self.mlp = GatedMLP(cfg, dtype, device)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype, device=None):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size_padded, cfg.d_model, dtype=dtype, device=device)
        self.layers = nn.ModuleList(Block(cfg, dtype, device, i) for i in range(cfg.n_layer))
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

    def new_state(self, batch_size: int, state_dtype: torch.dtype = torch.float32,
                  max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> InferenceState:
        """Zeros; max_seq_len: the KV cache length of a hybrid's attention layers (unused otherwise)."""
        return InferenceState.zeros(self.config, batch_size, self.dtype, state_dtype, self.device, max_seq_len)

    def _run(self, input_ids: torch.Tensor, state: InferenceState, step: bool, all_logits: bool) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] != state.batch_size:
            raise ValueError(f"input_ids batch {input_ids.shape[0]} != state batch {state.batch_size}")
        check_room(state, input_ids.shape[1])
        hidden, residual = self.backbone.embedding(input_ids.to(self.device)), None
        mamba = attn = 0
        for layer in self.backbone.layers:
            normed, residual = layer.norm.add_forward(hidden, residual, self.config.residual_in_fp32)
            if isinstance(layer.mixer, AttentionMixer):
                hidden = layer.mixer(normed, state.key[attn], state.value[attn], state.length,
                                     state.attn_conv[attn] if state.attn_conv else None)
                attn += 1
            elif isinstance(layer.mixer, ReluSquaredMLP):
                hidden = layer.mixer(normed)
            else:
                run = layer.mixer.step if step else layer.mixer.forward
                hidden, conv, ssm = run(normed, state.conv[mamba], state.ssm[mamba])
                state.conv[mamba].copy_(conv)
                state.ssm[mamba].copy_(ssm)
                mamba += 1
            if self.config.d_intermediate:
                normed, residual = layer.norm2.add_forward(hidden, residual, self.config.residual_in_fp32)
                hidden = layer.mlp(normed)
        if state.length is not None:
            state.length += input_ids.shape[1]
        if not all_logits:
            hidden, residual = hidden[:, -1:], residual[:, -1:]
        normed, _ = self.backbone.norm_f.add_forward(hidden, residual, self.config.residual_in_fp32)
        return self.lm_head(normed)

    def forward(self, input_ids: torch.Tensor, state: Optional[InferenceState] = None) -> torch.Tensor:
        """Logits at every position: (batch, seqlen, vocab_size_padded). Differentiable (used for training)."""
        if state is None:
            state = self.new_state(input_ids.shape[0], max_seq_len=max(DEFAULT_MAX_SEQ_LEN, input_ids.shape[1]))
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
