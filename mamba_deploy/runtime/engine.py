"""The Engine API: an export folder + a backend + its tokenizer.

    engine = Engine.load("out/mamba-130m", backend="auto")
    text = engine.generate("Hello", max_new_tokens=32, temperature=0)
    for piece in engine.generate("Hello", stream=True): print(piece, end="")
    state = engine.new_state(2); logits = engine.prefill(ids, state); logits = engine.decode(next_ids, state)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from ..errors import MambaDeployError
from ..export.artifact import ExportInfo, load_export
from ..models.state import InferenceState
from .backend import Backend, load_backend
from .generate import TextStream, TokenGenerator
from .sampling import SamplingParams

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], torch.Tensor]


class Engine:
    def __init__(self, backend: Backend, tokenizer=None):
        self.backend, self.tokenizer = backend, tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", **options: Any) -> "Engine":
        """Open an export folder; `options` go to the backend (e.g. threads= for onnxruntime)."""
        info = load_export(path)
        return cls(load_backend(backend, info, **options), load_tokenizer(info))

    @property
    def info(self) -> ExportInfo:
        return self.backend.info

    @property
    def config(self):
        return self.backend.config

    def new_state(self, batch_size: int = 1) -> InferenceState:
        if batch_size < 1:
            raise MambaDeployError(f"batch_size must be >= 1, got {batch_size}")
        return self.backend.new_state(batch_size)

    def _ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(input_ids)
        if ids.dtype not in (torch.int64, torch.int32) or ids.numel() == 0:
            raise MambaDeployError("input_ids must be a non-empty integer tensor")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size_padded:
            raise MambaDeployError(f"token ids must be in [0, {self.config.vocab_size_padded})")
        return ids.long()

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """input_ids (batch, seq) -> logits (batch, 1 or seq, vocab_padded); updates `state` in place."""
        return self.backend.prefill(self._ids(input_ids), state)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """input_ids (batch, 1) -> logits (batch, 1, vocab_padded); updates `state` in place."""
        return self.backend.decode(self._ids(input_ids), state)

    @property
    def vocab_limit(self) -> int:
        """Columns at or beyond this are never sampled (padding, or ids the tokenizer cannot decode)."""
        limit = self.config.vocab_size
        if self.tokenizer is not None:
            limit = min(limit, self.tokenizer.get_vocab_size(with_added_tokens=True))
        return limit

    def eos_id(self) -> Optional[int]:
        return eos_token_id(self.info.folder, self.tokenizer)

    def generate(self, prompt: Prompt, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: Optional[Union[str, int, Sequence[Union[str, int]]]] = None, seed: Optional[int] = None,
                 stream: bool = False) -> Any:
        """Text prompt(s) -> generated text (str or list); token-id prompt(s) -> generated ids.

        stream=True returns an iterator: of text pieces (one prompt) or (row, piece) pairs (several);
        for id prompts of token ids instead of pieces. Generation of a row stops at EOS, at a `stop`
        token id, or when a `stop` string appears (the stop string is not included).
        """
        rows, texts, single = self._prompt_rows(prompt)
        stops = [stop] if isinstance(stop, (str, int)) else list(stop or [])
        stop_ids = [s for s in stops if isinstance(s, int)]
        eos = self.eos_id()
        gen = TokenGenerator(self.backend, rows, max_new_tokens,
                             SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty),
                             self.vocab_limit, stop_ids + ([eos] if eos is not None else []), seed)
        stop_strings = [s for s in stops if isinstance(s, str)]
        if stop_strings and not texts:
            raise MambaDeployError("stop strings need a text prompt and a tokenizer; use token ids")
        events = self._text_events(gen, stop_strings) if texts else self._id_events(gen)
        if stream:
            return (piece if single else (row, piece) for row, piece in events)
        out: list = [("" if texts else []) for _ in rows]
        for row, piece in events:
            out[row] = out[row] + (piece if texts else [piece])
        return out[0] if single else out

    def _prompt_rows(self, prompt: Prompt) -> tuple[list[list[int]], bool, bool]:
        """-> (token ids per row, prompts are text, a single prompt)."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)):
            if self.tokenizer is None:
                raise MambaDeployError("this export has no tokenizer; pass token ids instead of text")
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            return [self.tokenizer.encode(t).ids for t in texts], True, isinstance(prompt, str)
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], int):
            rows, single = [list(prompt)], True
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt):
            rows, single = [list(p) for p in prompt], False
        else:
            raise MambaDeployError("prompt must be a string, a list of strings, or token ids")
        for ids in rows:
            self._ids(torch.tensor(ids, dtype=torch.int64))
        return rows, False, single

    @staticmethod
    def _id_events(gen: TokenGenerator) -> Iterator[tuple[int, int]]:
        for tokens in gen:
            yield from ((row, t) for row, t in enumerate(tokens) if t is not None)

    def _text_events(self, gen: TokenGenerator, stop_strings: list[str]) -> Iterator[tuple[int, str]]:
        streams = [TextStream(self.tokenizer, stop_strings) for _ in gen.prompts]
        for tokens in gen:
            for row, token in enumerate(tokens):
                if token is None:
                    continue
                piece = streams[row].push(token)
                if streams[row].stopped:
                    gen.finish(row)
                if piece:
                    yield row, piece
        for row, s in enumerate(streams):
            tail = s.flush()
            if tail:
                yield row, tail


def load_tokenizer(info: ExportInfo):
    """The export's `tokenizers.Tokenizer`, or None when it has none."""
    if info.tokenizer_file is None:
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(info.tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception on corrupt files
        raise MambaDeployError(f"{info.tokenizer_file}: cannot load tokenizer ({exc})") from None


def eos_token_id(folder: Path, tokenizer) -> Optional[int]:
    """From generation_config.json, else tokenizer_config.json's eos_token, else None."""
    for name, key in (("generation_config.json", "eos_token_id"), ("tokenizer_config.json", "eos_token")):
        try:
            value = json.loads((folder / name).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and tokenizer is not None:
            value = tokenizer.token_to_id(value)
        if isinstance(value, int):
            return value
    return None
