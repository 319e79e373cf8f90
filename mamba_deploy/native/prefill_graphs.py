"""Short prefill chunks as CUDA-graph replays.

The eager prefill launches about ten kernels a layer through Python wrappers, so a short prompt costs far
more host time than GPU time (a 100-token prompt on mamba-1.4b: ~500 launches). Here a chunk of n <=
max_tokens tokens is cut into pieces that are powers of two, largest first (100 -> 64, 32, 4), and each
piece replays the graph captured once for (batch, piece length). The graphs run on the engine's state pool
through a rows index (batch row r on slot rows[r]), so one graph serves every set of slots. The pieces of
a chunk depend only on its length, never on the batch it runs in.

Fresh prompts (zero state, NativeEngine.prefill's `lengths`) need no pieces: a chunk of n tokens is
right-aligned in the graph of the smallest power of two >= n, the rest left padding (prefill.mask_padding),
so one replay serves any length up to it. (Measured on the H200, mamba-1.4b, batch 1: one piece 3.6-4.6 ms
against 12-15 ms eager, while three pieces were even with eager: a chunk of more pieces stays eager.)

Pure Mamba models only (no attention or MLP layers) and last-position logits only; anything else stays eager.
"""
from __future__ import annotations

import torch

from .prefill import pad_mask


MAX_PIECES = 3  # more pieces are slower than the eager prefill (three were even with it on the H200)
# The most tokens (rows x the graph's power-of-two length) one graph holds. Beyond it the GPU's work outlasts the
# host's launches anyway, and the graphs' shared memory pool would hold that many tokens' activations. Measured on
# the H200 (mamba-1.4b, batch 1, 2,048 tokens): eager 26.0 ms wall for 17.9 ms of kernels, the host the bound.
MAX_GRAPH_TOKENS = 4096


def pieces(n: int) -> list[int]:
    """n >= 1 tokens as distinct powers of two, largest first: 100 -> [64, 32, 4]."""
    if n < 1:
        raise ValueError(f"a prefill chunk has at least one token, got {n}")
    return [1 << k for k in range(n.bit_length() - 1, -1, -1) if n >> k & 1]


class PrefillGraphs:
    """The prefill graphs of one NativeEngine (`engine`): chunks of at most `max_tokens` tokens (0: none) and
    at most `max_batch` rows, rows x the chunk's next power of two at most MAX_GRAPH_TOKENS. Static inputs: ids
    (max_batch, largest piece), rows (max_batch,); output: logits (max_batch, vocab_padded), copied out by
    `run`."""

    def __init__(self, engine, max_tokens: int, max_batch: int):
        c = engine.config
        graphable = engine.use_graphs and not c.other_layers and max_tokens > 0
        self.engine = engine
        self.max_tokens = max_tokens if graphable else 0
        self.max_batch = min(max_batch, engine.max_batch) if graphable else 0
        largest = pieces(self.max_tokens)[0] if self.max_tokens else 1
        rows = max(self.max_batch, 1)
        f = dict(device=engine.device)
        self.ids = torch.zeros(rows, largest, dtype=torch.int64, **f)
        self.pad = torch.zeros(rows, largest, dtype=torch.bool, **f)  # padded graphs: True at left padding
        self.rows = torch.zeros(rows, dtype=torch.int64, **f)
        self.logits = torch.zeros(rows, c.vocab_size_padded, dtype=engine.dtype, **f)
        self.graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}  # (batch, length, padded)

    def _fits(self, batch: int, n: int, all_logits: bool) -> bool:
        return not all_logits and 1 <= batch <= self.max_batch and 1 <= n <= self.max_tokens and \
            batch * (1 << (n - 1).bit_length()) <= MAX_GRAPH_TOKENS

    def applies(self, batch: int, n: int, all_logits: bool) -> bool:
        """Whether a chunk of (batch, n) tokens goes through the graphs (in at most MAX_PIECES pieces)."""
        return self._fits(batch, n, all_logits) and len(pieces(n)) <= MAX_PIECES

    def applies_padded(self, batch: int, n: int, all_logits: bool) -> bool:
        """Whether fresh prompts of up to n tokens in `batch` rows go through one padded graph."""
        return self._fits(batch, n, all_logits) and n <= self.ids.shape[1]

    def run_padded(self, ids: torch.Tensor, lengths: list[int], first: int) -> torch.Tensor:
        """ids (b, n) on the engine's device, row r's prompt its last lengths[r] ids, each prefilled into slot
        first + r from a zero state -> logits (b, 1, vocab_padded) of the last position (a new tensor): one
        replay of the graph of the smallest power of two >= n, the prompts right-aligned in it."""
        b, n = ids.shape
        length = 1 << (n - 1).bit_length()
        self.rows[:b].copy_(self.engine._slot_iota[first:first + b])
        self.pad[:b, :length].copy_(pad_mask(lengths, length, self.pad.device))
        self.ids[:b, :length - n].zero_()
        self.ids[:b, length - n:length].copy_(ids)
        self._graph(b, length, padded=True).replay()
        return self.logits[:b].unsqueeze(1).clone()

    def run(self, ids: torch.Tensor, first: int) -> torch.Tensor:
        """ids (b, n) on the engine's device, prefilled into slots first .. first + b - 1 (their state updated
        in place) -> logits (b, 1, vocab_padded) of the last position (a new tensor: the next run reuses the
        static one)."""
        b, n = ids.shape
        self.rows[:b].copy_(self.engine._slot_iota[first:first + b])
        start = 0
        for length in pieces(n):
            self.ids[:b, :length].copy_(ids[:, start:start + length])
            self._graph(b, length).replay()
            start += length
        return self.logits[:b].unsqueeze(1).clone()

    def _graph(self, b: int, length: int, padded: bool = False) -> torch.cuda.CUDAGraph:
        key = (b, length, padded)
        if key not in self.graphs:
            eng = self.engine
            pad = self.pad[:b, :length] if padded else None

            def piece() -> None:
                out = eng._prefill_chunk(self.ids[:b, :length], eng.static, False, rows=self.rows[:b], pad=pad,
                                         graphed=True)
                self.logits[:b].copy_(out[:, -1])

            self.graphs[key] = eng._capture(piece, [self.logits])
        return self.graphs[key]
