"""A prefill chunk cut along time into parts that run as a wavefront, each part on its own CUDA stream
(NativeEngine(prefill_split=k)).

Part j of a chunk needs part j-1 only through the state each layer leaves: a layer's conv of part j starts from
the conv state that part j-1's conv of the layer wrote, its scan from the SSM state part j-1's scan wrote. So each
part runs all its layers on its own stream, and only its conv and its scan of a layer wait (an event) for part
j-1's of the same layer; its norms, projections and MLP may run beside the other parts' work. Why: at batch 1 a
layer's scan gives the GPU few threads (mamba-1.4b's Mamba1 scan at 2,048 tokens: about two warps a scheduler,
bound by latency, 158 us a layer, 43% of the prefill; Mamba2's carry walk likewise), and the layers run one
after another, so what one kernel leaves idle nothing else can use. The engine's default (prefill_split None):
two parts at batch 1 in a prefill graph for Mamba1 layers of at most AUTO_MAX_D_INNER channels and Mamba2 layers of
more, where it was measured to gain, in an engine that never decodes more than AUTO_MAX_DECODE_BATCH rows; one
(off) otherwise (AUTO_PARTS; an eager split chunk is bound by the host's launches).

Each part runs the kernels of a sequential prefill in chunks of the parts' lengths, on the same data, and each layer's
state passes from part to part in the same order, so the results are the same bits
(tests/native/test_prefill_split.py); they may differ in the last bits from one chunk of the whole length. Inner
boundaries fall on multiples of the Mamba2 chunk size (Mamba1: the scan's 16-step tile), every part at least
MIN_PART_TOKENS long. Pure Mamba (and MLP) models only: an attention layer's positions are per chunk.
The last part runs on the caller's stream, the others on side streams the engine keeps (Wavefront); they start
after the work already on the caller's stream, which waits for them at the end: a CUDA-graph capture takes the
whole wavefront in (fork and join).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import MAMBA2, ModelConfig
from ..errors import ParameterError, is_integer
from . import prefill as P

MIN_PART_TOKENS = 256
# NativeEngine(prefill_split=None): parts for a batch-1 chunk of Mamba1 layers run as a prefill graph. Measured on
# the H100 (fp16, sessions 32-33, docs/performance.md): 2,048 tokens mamba-1.4b 17.9 -> 16.4 and 18.1 -> 16.5 ms,
# mamba-2.8b 32.5 -> 31.0 and 32.3 -> 30.6, 32,768 tokens (16 replays) 273-274 -> 251; 4 parts no better than 1;
# Mamba2 unchanged (mamba2-1.3b) and no larger batch measured, so those stay whole; an eager
# chunk stays whole too: split, its launches from the host took longer than the kernels (32,768 tokens eager:
# 279-379 ms whole, 462-893 split).
AUTO_PARTS = 2
# ... but only in an engine of max_batch <= this. Once a side stream has run kernels in a process, decode graphs
# captured after it lose part of programmatic launch's overlap at large batches for the rest of the process (H100,
# session 35: mamba-1.4b batch-64 step 2.695 -> 2.855 ms, Engine.generate 21,500 -> 20,400 tokens/s; batch 1 and
# 16 unchanged; docs/performance.md), which outweighs a 9-12% faster batch-1 prefill where decode runs 64 rows.
AUTO_MAX_DECODE_BATCH = 16
# ... and only for Mamba1 layers of at most this many channels (d_inner), Mamba2 layers of more. Measured on the H100
# (session 53, fp16, 2,048 tokens, docs/performance.md): two parts gain 10-13% on mamba-790m (3,072 channels) and
# 2-4% on mamba-1.4b (4,096), but on mamba-2.8b (5,120) they lose 0.65 ms on average over 20 runs in 5 processes (31.5
# against 30.9 ms) and swing with the capture (30.3-33.2 ms against 30.1-31.2 whole): the side part's GEMMs ran
# 25-50% slower beside the other part's scan. Mamba2 the other way round: mamba2-2.7b (5,120) 1.8-2.3% faster in five
# processes of six (0.2% in the sixth; 3.9% in session 43), mamba2-1.3b (4,096) level.
AUTO_MAX_D_INNER = 4096
KINDS = ("conv", "scan")  # the state updates a part hands to the next (prefill.py's handoff points)


def align(cfg: ModelConfig) -> int:
    """Where part boundaries may fall: multiples of the Mamba2 chunk (its scan's chunks stay whole), else of the
    Mamba1 scan's 16-step tile."""
    return cfg.chunk_size if cfg.arch == MAMBA2 else 16


def part_bounds(n: int, parts: int, step: int, min_tokens: Optional[int] = None) -> list[tuple[int, int]]:
    """[start, end) of the parts of an n-token chunk: at most `parts`, as even as inner boundaries on multiples of
    `step` allow, each at least `min_tokens` (default MIN_PART_TOKENS) long; [(0, n)] where two do not fit."""
    min_tokens = max(1, MIN_PART_TOKENS if min_tokens is None else min_tokens)
    count = max(1, min(parts, n // min_tokens))
    edges = [0]
    for j in range(1, count):
        cut = round(j * n / count / step) * step
        if cut - edges[-1] >= min_tokens and n - cut >= min_tokens:
            edges.append(cut)
    edges.append(n)
    return list(zip(edges[:-1], edges[1:]))


def parts(eng, batch: int, graphed: bool = False) -> int:
    """How many parts NativeEngine `eng` cuts a chunk of `batch` rows into at most (`graphed`: the chunk is a prefill
    graph's piece): its prefill_split, or where that is None (the default) AUTO_PARTS for a graphed batch-1 chunk of
    Mamba1 layers of d_inner <= AUTO_MAX_D_INNER or Mamba2 layers of more, in an engine of max_batch <=
    AUTO_MAX_DECODE_BATCH, and 1 otherwise."""
    if eng.prefill_split is not None:
        return eng.prefill_split
    c = eng.config
    wide = c.d_inner > AUTO_MAX_D_INNER
    auto = (wide if c.arch == MAMBA2 else not wide) and batch == 1 and graphed and \
        eng.max_batch <= AUTO_MAX_DECODE_BATCH
    return AUTO_PARTS if auto else 1


def bounds(eng, n: int, batch: int = 1, graphed: bool = False) -> list[tuple[int, int]]:
    """[start, end) of the parts NativeEngine `eng` prefills an n-token chunk of `batch` rows as (`graphed`: as
    parts() takes it); [(0, n)] where it is not split."""
    c, k = eng.config, parts(eng, batch, graphed)
    return [(0, n)] if k == 1 or c.attn_layer_idx else part_bounds(n, k, align(c))


def prompt_plan(eng, n: int, batch: int = 1, pooled: bool = True) -> tuple[bool, int]:
    """How NativeEngine `eng` prefills the first chunk of an n-token prompt of `batch` rows from a fresh state:
    (as a prefill graph's replay, in how many parts). pooled: the state is the engine's pool (new_state's first),
    whose chunks may replay graphs; another state's run eagerly."""
    chunk = min(n, eng.chunk_len)
    graphed = pooled and eng.prefill_graphs.applies(batch, chunk, False)
    return graphed, len(bounds(eng, chunk, batch, graphed))


def applies(eng, n: int, batch: int = 1, graphed: bool = False) -> bool:
    """Whether NativeEngine `eng` prefills an n-token chunk of `batch` rows as a wavefront of parts."""
    return len(bounds(eng, n, batch, graphed)) > 1


class Wavefront:
    """An engine's side streams and events for split prefills, made on first use and kept: a stream for each part
    but the last, two events (conv, scan) for each boundary between parts, reused layer after layer (a wait takes
    the event's latest record, which the host made for the layer the waiting part is at)."""

    MAX_DRAWS = 64  # torch hands out streams round-robin from a pool of 32 a priority

    def __init__(self, device: torch.device):
        self.device = device
        self.streams: list[torch.cuda.Stream] = []
        self.events: list[dict[str, torch.cuda.Event]] = []

    def current(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def side(self, count: int, caller: torch.cuda.Stream
             ) -> tuple[list[torch.cuda.Stream], list[dict[str, torch.cuda.Event]]]:
        """`count` side streams, each a CUDA stream apart from `caller` and from the others, and `count` boundaries'
        events. torch's streams come from a pool shared by the process: one that is the caller's stream (the
        engine's capture stream, say) would run its part in series, correct but no wavefront, so it is redrawn."""
        while len(self.events) < count:
            self.events.append({kind: torch.cuda.Event() for kind in KINDS})
        for j in range(count):
            taken = {caller.cuda_stream, *(s.cuda_stream for s in self.streams[:j])}
            for _ in range(self.MAX_DRAWS):
                if j < len(self.streams) and self.streams[j].cuda_stream not in taken:
                    break
                drawn = torch.cuda.Stream(self.device)
                self.streams[j:j + 1] = [drawn]
            else:
                raise RuntimeError(f"split prefill: no CUDA stream apart from {len(taken)} others in "
                                   f"{self.MAX_DRAWS} draws")
        return self.streams[:count], self.events[:count]

    def use(self, stream: torch.cuda.Stream):
        return torch.cuda.stream(stream)

    def keep(self, tensor: torch.Tensor, stream: torch.cuda.Stream) -> None:
        """`tensor`, made on another stream, is used on `stream`: its memory is not handed out again on its own
        stream before that use is done (the next run's fork orders the side stream after it too; this does not
        depend on that)."""
        tensor.record_stream(stream)


class PartOrder:
    """Part j's place in the wavefront (prefill.py's handoff): before its conv or scan of a layer, the current stream
    waits for part j-1's (`after`: the events part j-1 signals; None for the first part); after them it records its
    own (`signals`: None for the last part)."""

    def __init__(self, wavefront, after: Optional[dict], signals: Optional[dict]):
        self.wavefront, self.after, self.signals = wavefront, after, signals

    def wait(self, kind: str) -> None:
        if self.after is not None:
            self.wavefront.current().wait_event(self.after[kind])

    def done(self, kind: str) -> None:
        if self.signals is not None:
            self.signals[kind].record(self.wavefront.current())


@dataclass
class _Part:
    stream: torch.cuda.Stream
    order: PartOrder
    ids: torch.Tensor                   # (b, part length)
    pad: Optional[torch.Tensor]         # (b, part length) bool, or None
    hidden: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None
    factor: Optional[P.NormFactor] = None  # what hidden still owes a folded gated norm


def run(eng, wavefront, ids: torch.Tensor, state, all_logits: bool, rows: Optional[torch.Tensor] = None,
        pad: Optional[torch.Tensor] = None, graphed: bool = False) -> torch.Tensor:
    """NativeEngine._prefill_chunk of ids (b, n) as a wavefront of parts (applies(eng, n, b, graphed)): logits (b, 1
    or n, vocab_padded); `state` (or, given rows, its rows rows[r]) in place; pad as there."""
    edges = bounds(eng, ids.shape[1], ids.shape[0], graphed)
    caller = wavefront.current()
    side, events = wavefront.side(len(edges) - 1, caller)
    for stream in side:
        stream.wait_stream(caller)
    try:
        logits = _run_parts(eng, wavefront, caller, side, events, edges, ids, state, all_logits, rows, pad)
    finally:  # joined even when a launch raised: later work on the caller's stream is ordered after the parts'
        for stream in side:
            caller.wait_stream(stream)
    return torch.cat(logits, dim=1) if all_logits else logits[0]


def _run_parts(eng, wavefront, caller, side, events, bounds, ids, state, all_logits, rows, pad
               ) -> list[torch.Tensor]:
    """run's parts, forked and not yet joined: the logits of each part (all_logits) or of the last."""
    parts = [_Part(stream, PartOrder(wavefront, events[j - 1] if j else None, events[j] if j < len(side) else None),
                   ids[:, lo:hi], None if pad is None else pad[:, lo:hi])
             for j, (stream, (lo, hi)) in enumerate(zip([*side, caller], bounds))]
    for part in parts:
        with wavefront.use(part.stream):
            part.hidden = eng.emb[part.ids]
    for L in eng.layers:  # layer by layer, part by part: each wait is enqueued after the record it waits for
        for part in parts:
            with wavefront.use(part.stream):
                part.hidden, part.residual, part.factor = P.layer(
                    eng, L, part.hidden, part.residual, state, rows, part.pad, handoff=part.order, factor=part.factor)
    logits = []
    for part in parts if all_logits else parts[-1:]:
        with wavefront.use(part.stream):
            logits.append(P.head_logits(eng, part.hidden, part.residual, all_logits, part.factor))
        if part.stream is not caller:
            wavefront.keep(logits[-1], caller)
    return logits


def check_parts(parts) -> None:
    """NativeEngine(prefill_split=parts): an integer >= 1 or None, else ParameterError."""
    if parts is not None and (not is_integer(parts) or parts < 1):
        raise ParameterError("prefill_split", f"must be an integer >= 1 or None, got {parts!r}")
