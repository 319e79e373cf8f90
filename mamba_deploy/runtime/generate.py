"""Detokenisation for generation: `TextStream` turns one sequence's tokens into complete UTF-8 text
pieces and applies stop strings (the Scheduler keeps one per text request)."""
from __future__ import annotations

import collections
from typing import Sequence


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
