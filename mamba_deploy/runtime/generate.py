"""Generation on any Backend: ragged prompts prefilled row by row, then decoded together.

`TokenGenerator` yields one token per active row per step; `TextStream` turns a row's tokens into
complete UTF-8 text pieces and applies stop strings. Each row draws its sampling noise from its own
generator seeded with the same seed, so a prompt in a batch gets exactly the tokens it gets alone.
"""
from __future__ import annotations

import collections
from typing import Iterator, Optional, Sequence

import torch

from ..errors import MambaDeployError
from .backend import Backend
from .sampling import SamplingParams, mark_seen, sample


class TokenGenerator:
    """Iterate to get, per step, a list with one new token id (or None once finished) per row."""

    def __init__(self, backend: Backend, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 params: SamplingParams, vocab_limit: int, stop_ids: Sequence[int] = (), seed: Optional[int] = None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise MambaDeployError("every prompt needs at least one token")
        if max_new_tokens < 0:
            raise MambaDeployError("max_new_tokens must be >= 0")
        self.backend, self.params, self.vocab_limit = backend, params.validate(), vocab_limit
        self.prompts = [list(p) for p in prompts]
        self.max_new_tokens, self.stop_ids = max_new_tokens, set(stop_ids)
        seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self.generators = [torch.Generator().manual_seed(seed) for _ in prompts]
        self.active = [True] * len(prompts)

    def finish(self, row: int) -> None:
        self.active[row] = False

    def _prefill(self) -> tuple[torch.Tensor, object]:
        """Each prompt into its own state row; returns last logits (batch, vocab) and the batch state."""
        state = self.backend.new_state(len(self.prompts))
        last = []
        for row, ids in enumerate(self.prompts):
            row_state = self.backend.new_state(1)
            logits = self.backend.prefill(torch.tensor([ids], dtype=torch.int64), row_state)
            last.append(logits[0, -1].float().clone())
            for dst, src in zip(state.conv + state.ssm, row_state.conv + row_state.ssm):
                dst[row].copy_(src[0])
        return torch.stack(last), state

    def _noise(self, vocab: int, device: torch.device) -> torch.Tensor:
        return torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(device)

    def __iter__(self) -> Iterator[list[Optional[int]]]:
        if self.max_new_tokens == 0:
            return
        logits, state = self._prefill()
        vocab = logits.shape[-1]
        seen = torch.zeros(len(self.prompts), vocab, dtype=torch.bool, device=logits.device)
        for row, ids in enumerate(self.prompts):
            seen[row, torch.tensor(ids, device=logits.device).clamp(0, vocab - 1)] = True
        for step in range(self.max_new_tokens):
            noise = None if self.params.greedy else self._noise(vocab, logits.device)
            tokens = sample(logits, self.params, self.vocab_limit, seen, noise)
            mark_seen(seen, tokens)
            out: list[Optional[int]] = []
            for row, token in enumerate(tokens.tolist()):
                if self.active[row] and token in self.stop_ids:
                    self.active[row] = False
                out.append(token if self.active[row] else None)
            if not any(self.active):
                if any(t is not None for t in out):
                    yield out
                return
            yield out
            if step + 1 < self.max_new_tokens:
                logits = self.backend.decode(tokens.view(-1, 1), state)[:, -1].float()


class TextStream:
    """Incremental detokenisation of one row: `push(token)` -> new complete text; stop strings end it.

    The output is as if the row's whole token list were decoded after every token (pieces end on
    complete characters, before any possible stop-string prefix), but each push decodes a bounded
    window: the tokens since the text last ended on a complete character ("settled"), after the
    tokens of the last CONTEXT settles, whose text is subtracted again (decoders such as Metaspace
    render a token differently at the start of a text; a context starting on a character boundary
    keeps byte-fallback tokens whole). Of the text, only the part not yet emitted plus the longest stop
    string before it is kept.
    """

    CONTEXT = 4

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer, self.stop_strings = tokenizer, [s for s in stop_strings if s]
        self.keep = max((len(s) for s in self.stop_strings), default=0)  # characters kept before `emitted`
        self.ids: list[int] = []
        self.settles = collections.deque([0], maxlen=self.CONTEXT + 1)  # token counts where the text settled
        self.context_text = ""  # the text of ids[settles[0]:settles[-1]]
        self.text, self.base = "", 0  # the settled text from character `base` of the row's whole text
        self.emitted = 0  # characters of the row's whole text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is held back (an incomplete character or a possible stop-string prefix)."""
        return "" if self.stopped else self._advance(final=True)

    def _unsettled_text(self) -> str:
        """The text of the tokens after the last settle: at most len(ids) - settles[0] tokens decoded."""
        window = self.tokenizer.decode(self.ids[self.settles[0]:])
        if window.startswith(self.context_text):
            return window[len(self.context_text):]
        return self.tokenizer.decode(self.ids[self.settles[-1]:])  # e.g. byte-fallback bytes of a partial character

    def _advance(self, final: bool) -> str:
        text = self.text + self._unsettled_text()  # the whole text from character `base`
        if not text.endswith("\ufffd"):  # ends on a complete character: nothing before it can change
            self._settle(text)
        piece = self._piece(text, final)
        drop = max(0, min(self.emitted, self.base + len(self.text)) - self.keep - self.base)
        self.text, self.base = self.text[drop:], self.base + drop
        return piece

    def _settle(self, text: str) -> None:
        self.text = text
        if self.settles[-1] != len(self.ids):
            self.settles.append(len(self.ids))
            self.context_text = self.tokenizer.decode(self.ids[self.settles[0]:])

    def _piece(self, text: str, final: bool) -> str:
        """The next piece of `text` (the whole text from character `base`); advances `emitted`."""
        emitted = self.emitted - self.base
        cut = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in self.stop_strings) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            piece, self.emitted = text[emitted:cut], self.base + cut
            return piece
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # an incomplete multi-byte character
                return ""
            end -= _stop_prefix_len(text, self.stop_strings)
        piece = text[emitted:end]
        self.emitted = max(self.emitted, self.base + end)
        return piece


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
