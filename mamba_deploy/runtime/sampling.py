"""Token sampling as torch ops: no host syncs, no data-dependent shapes (CUDA-graph safe).

`sample(logits, params, vocab_limit, seen, noise)` picks one token per row:
  padded columns (>= vocab_limit) -> -inf; repetition penalty on `seen` tokens; temperature == 0:
  argmax; else logits / temperature, top-k, top-p (sort + cumsum + mask), min-p, then Gumbel-max
  with the caller's uniform `noise` (batch, vocab) — the same noise gives the same tokens.
logits: (batch, vocab) of any float dtype; seen: (batch, vocab) bool or None.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch

from ..errors import ParameterError, is_integer, is_real


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (CTRL-style: divide positive logits, multiply negative)

    def validate(self) -> "SamplingParams":
        """Raise ParameterError naming the first field that is not a number in its range."""
        checks = [("temperature", is_real, lambda v: 0 <= v < math.inf, "a number >= 0"),
                  ("top_k", is_integer, lambda v: v >= 0, "an integer >= 0"),
                  ("top_p", is_real, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                  ("min_p", is_real, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                  ("repetition_penalty", is_real, lambda v: v > 0, "a number > 0")]
        for name, right_type, in_range, wanted in checks:
            value = getattr(self, name)
            if not (right_type(value) and in_range(value)):
                raise ParameterError(name, f"must be {wanted}, got {value!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def mask_padding(logits: torch.Tensor, vocab_limit: int) -> torch.Tensor:
    """Columns >= vocab_limit can never be sampled."""
    column = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(column >= vocab_limit, -math.inf)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: Union[float, torch.Tensor]) -> torch.Tensor:
    """CTRL-style on the seen tokens; penalty: a number, or a tensor broadcasting with logits ((batch, 1))."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def mask_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def mask_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def mask_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -math.inf)


def gumbel_noise(uniform: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(uniform.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))


def processed_logits(logits: torch.Tensor, params: SamplingParams, vocab_limit: int,
                     seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 logits after padding mask, repetition penalty, temperature and the top-k/p, min-p masks."""
    out = mask_padding(logits.float(), vocab_limit)
    if seen is not None and params.repetition_penalty != 1.0:
        out = apply_repetition_penalty(out, seen, params.repetition_penalty)
    if params.greedy:
        return out
    out = out / params.temperature
    return mask_min_p(mask_top_p(mask_top_k(out, params.top_k), params.top_p), params.min_p)


def sample(logits: torch.Tensor, params: SamplingParams, vocab_limit: int, seen: Optional[torch.Tensor] = None,
           noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row: (batch, vocab) -> (batch,) int64. `noise`: uniform (batch, vocab), or drawn here."""
    out = processed_logits(logits, params, vocab_limit, seen)
    if params.greedy:
        return out.argmax(dim=-1)
    if noise is None:
        noise = torch.rand(out.shape, generator=generator, device=out.device)
    return (out + gumbel_noise(noise)).argmax(dim=-1)
