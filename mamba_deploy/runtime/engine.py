"""The Engine API: an export folder + a backend + its tokenizer.

    engine = Engine.load("out/mamba-130m", backend="auto")
    text = engine.generate("Hello", max_new_tokens=32, temperature=0)
    for piece in engine.generate("Hello", stream=True): print(piece, end="")
    state = engine.new_state(2); logits = engine.prefill(ids, state); logits = engine.decode(next_ids, state)
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from ..errors import MambaDeployError, ParameterError, is_integer
from ..export.artifact import ExportInfo, load_export
from ..models.state import InferenceState
from .backend import BACKENDS, Backend, resolve_backend
from .checks import check_count, check_output, check_prompt_ids, check_seed, check_state, split_stops
from .sampling import SamplingParams
from .requests import stream_together
from .scheduler import Scheduler, random_seed, sampling_vocab_limit

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], torch.Tensor]


class Engine:
    def __init__(self, backend: Backend, tokenizer=None, max_batch: Optional[int] = None):
        """max_batch: requests decoded together by `generate` / `scheduler` (default: the backend's slots,
        e.g. the native engine's max_batch, else 16)."""
        self.backend, self.tokenizer = backend, tokenizer
        self.max_batch = max_batch or backend.max_slots or 16
        self._scheduler: Optional[Scheduler] = None
        self._scheduler_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", slots: Optional[int] = None,
             **options: Any) -> "Engine":
        """Open an export folder; `options` go to the backend (e.g. threads= for onnxruntime). slots: the most
        requests decoded together (the Engine's max_batch); a backend with a state pool of fixed size (native) is
        built with that many instead of its default."""
        if slots is not None and not (is_integer(slots) and slots >= 1):
            raise ParameterError("slots", f"must be an integer >= 1, got {slots!r}")
        info = load_export(path)
        loader = BACKENDS[resolve_backend(backend, info)]  # resolved once: load_backend would resolve it again
        pool_option = getattr(loader, "slots_option", None)
        if slots is not None and pool_option is not None:
            options.setdefault(pool_option, slots)
        return cls(loader(info, **options), load_tokenizer(info), max_batch=slots)

    def __repr__(self) -> str:
        c, b = self.config, self.backend
        return (f"Engine({str(self.info.folder)!r}, backend={b.name!r}, {c.arch}, d_model={c.d_model}, "
                f"layers={c.n_layer}, dtype={str(b.dtype).removeprefix('torch.')}, "
                f"state={str(b.state_dtype).removeprefix('torch.')}, max_batch={self.max_batch})")

    @property
    def info(self) -> ExportInfo:
        return self.backend.info

    @property
    def config(self):
        return self.backend.config

    def new_state(self, batch_size: int = 1) -> InferenceState:
        if not (is_integer(batch_size) and batch_size >= 1):
            raise ParameterError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        return self.backend.new_state(batch_size)

    def _ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        try:
            ids = torch.as_tensor(input_ids)
        except (TypeError, ValueError, OverflowError, RuntimeError):  # ragged lists, ids >= 2**63, ...
            ids = None
        if ids is None or ids.dtype not in (torch.int64, torch.int32) or ids.numel() == 0:
            raise ParameterError("input_ids", "must be a non-empty integer tensor (or nested lists of ints)")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size_padded:
            raise ParameterError("input_ids", f"token ids must be in [0, {self.config.vocab_size_padded})")
        return ids.long()

    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """input_ids (batch, seq) -> logits (batch, 1 or seq, vocab_padded); updates `state` in place."""
        ids = self._ids(input_ids)
        check_state(state, self.backend)
        return self.backend.prefill(ids, state)

    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """input_ids (batch, 1) -> logits (batch, 1, vocab_padded); updates `state` in place."""
        ids = self._ids(input_ids)
        check_state(state, self.backend)
        return self.backend.decode(ids, state)

    @property
    def vocab_limit(self) -> int:
        """Columns at or beyond this are never sampled (padding, or ids the tokenizer cannot decode)."""
        return sampling_vocab_limit(self.config, self.tokenizer)

    def eos_id(self) -> Optional[int]:
        return eos_token_id(self.info.folder, self.tokenizer)

    @property
    def scheduler(self) -> Scheduler:
        """The engine's Scheduler (created on first use, `max_batch` slots, fewer if the backend allows
        fewer); generate runs on it, and applications may submit to it directly (docs/architecture.md
        "Runtime: slots and scheduler")."""
        with self._scheduler_lock:
            if self._scheduler is None:
                slots = min(self.max_batch, self.backend.max_slots or self.max_batch)
                self._scheduler = Scheduler(self.backend, self.tokenizer, max_batch=slots)
            return self._scheduler

    def generate(self, prompt: Prompt, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: Optional[Union[str, int, Sequence[Union[str, int]]]] = None, seed: Optional[int] = None,
                 stream: bool = False, output: Optional[str] = None) -> Any:
        """Text prompt(s) -> generated text (str or list); token-id prompt(s) -> generated ids.

        output="text" or "ids" overrides that (text needs the export's tokenizer).
        stream=True returns an iterator: of text pieces (one prompt) or (row, piece) pairs (several);
        of token ids instead of pieces for ids output. Generation of a row stops at EOS, at a `stop`
        token id, or when a `stop` string appears (the stop string is not included; needs text output).
        seed: an integer in [0, 2**64) for reproducible sampling (None: a random one); every row gets
        it, so each row gets exactly the tokens it gets alone. Each row is one request of `scheduler`.
        """
        check_count("max_new_tokens", max_new_tokens)
        check_seed(seed)
        rows, texts, single = self._prompt_rows(prompt)
        as_text = check_output(output, self.tokenizer, default=texts)
        stop_ids, stop_strings = split_stops(stop)
        if stop_strings and not as_text:
            raise ParameterError("stop", "strings need text output (a tokenizer); use token ids")
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty).validate()
        eos = self.eos_id()
        request = dict(params=params, seed=random_seed() if seed is None else int(seed),
                       max_new_tokens=int(max_new_tokens), stop_ids=stop_ids + ([eos] if eos is not None else []),
                       stop_strings=stop_strings, output="text" if as_text else "ids")
        if stream:
            return (piece if single else (row, piece) for row, piece in self._events(rows, request))
        handles = self.scheduler.submit_checked(rows, **request)
        try:  # waiting on each result sleeps without the GIL: the loop thread runs free
            out = [handle.result() for handle in handles]
        finally:
            for handle in handles:
                handle.cancel()
        return out[0] if single else out

    def _events(self, rows: list[list[int]], request: dict) -> Iterator[tuple[int, Any]]:
        """Submits each row when first iterated; (row, piece) as they come; cancels the rest if closed early."""
        handles = self.scheduler.submit_checked(rows, **request)
        try:
            yield from stream_together(handles)
        finally:
            for handle in handles:
                handle.cancel()

    def _prompt_rows(self, prompt: Prompt) -> tuple[list[list[int]], bool, bool]:
        """-> (token ids per row, prompts are text, a single prompt)."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt
                                       and all(isinstance(p, str) for p in prompt)):
            if self.tokenizer is None:
                raise MambaDeployError("this export has no tokenizer; pass token ids instead of text")
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            single = isinstance(prompt, str)
            return [check_prompt_ids(self.tokenizer.encode(t).ids, self.config.vocab_size_padded,
                                     "" if single else f" (prompt {row})") for row, t in enumerate(texts)], True, single
        if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], (list, tuple, str)):
            rows, single = [list(prompt)], True
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt):
            rows, single = [list(p) for p in prompt], False
        else:
            raise ParameterError("prompt", "must be a string, a list of strings, or token ids "
                                           "(a list or lists of ints)")
        limit = self.config.vocab_size_padded
        return [check_prompt_ids(ids, limit, "" if single else f" (prompt {row})") for row, ids in enumerate(rows)], \
            False, single


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
