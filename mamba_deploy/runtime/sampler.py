"""Per-slot sampling state: each slot has its own SamplingParams, seed and seen-token set.

    sampler = SamplerState(max_slots, vocab_size_padded, device)
    sampler.assign(slot, params, seed, prompt_ids)        # a request takes the slot
    tokens = sampler.sample(logits, slots, vocab_limit)    # logits (n, V), slots (n,) int64 -> (n,) int64
    sampler.release(slot)

A row's tokens depend only on its own logits, parameters, seed and step, never on the other rows of
the batch, so a request gets the tokens it gets alone. This implementation is plain torch ops with the
semantics of `sampling.processed_logits` per row; rows with equal parameters are processed together.
A row's noise is uniform (vocab_size_padded,) drawn on the CPU from a torch.Generator seeded with the
request's seed, one draw per sampled step (greedy rows draw none).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .sampling import SamplingParams, gumbel_noise, processed_logits


class SamplerState:
    def __init__(self, max_slots: int, vocab_size_padded: int, device: torch.device | str):
        self.vocab, self.device = vocab_size_padded, torch.device(device)
        self.seen = torch.zeros(max_slots, vocab_size_padded, dtype=torch.bool, device=self.device)
        self.params: list[Optional[SamplingParams]] = [None] * max_slots
        self.generators: list[Optional[torch.Generator]] = [None] * max_slots

    def assign(self, slot: int, params: SamplingParams, seed: int, prompt_ids: Sequence[int]) -> None:
        """Give `slot` to a new request: its parameters, seed, and the prompt's tokens as seen."""
        self.params[slot] = params.validate()
        self.generators[slot] = torch.Generator().manual_seed(seed)
        self.seen[slot] = False
        ids = torch.tensor(list(prompt_ids), dtype=torch.int64).clamp(0, self.vocab - 1)
        self.seen[slot, ids.to(self.device)] = True

    def release(self, slot: int) -> None:
        self.params[slot] = self.generators[slot] = None

    def sample(self, logits: torch.Tensor, slots: torch.Tensor, vocab_limit: int) -> torch.Tensor:
        """logits (n, V), slots (n,) int64 of assigned slots -> tokens (n,) int64 on logits' device.

        Advances each row's step (one noise draw for sampled rows) and marks its token as seen."""
        slot_list = slots.tolist()
        tokens = torch.empty(len(slot_list), dtype=torch.int64, device=logits.device)
        groups: dict[SamplingParams, list[int]] = {}
        for row, slot in enumerate(slot_list):
            groups.setdefault(self.params[slot], []).append(row)
        for params, rows in groups.items():
            index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
            picked = [slot_list[r] for r in rows]
            out = processed_logits(logits.index_select(0, index), params, vocab_limit, self.seen[picked])
            if not params.greedy:
                noise = torch.stack([torch.rand(self.vocab, generator=self.generators[s]) for s in picked])
                out = out + gumbel_noise(noise.to(out.device))
            tokens[index] = out.argmax(dim=-1)
        self.seen[slots.to(self.device), tokens.to(self.device)] = True
        return tokens
