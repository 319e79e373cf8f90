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
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch

from ..errors import MambaDeployError, ParameterError, is_integer
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
        limit = self.config.vocab_size
        if self.tokenizer is not None:
            limit = min(limit, self.tokenizer.get_vocab_size(with_added_tokens=True))
        return limit

    def eos_id(self) -> Optional[int]:
        return eos_token_id(self.info.folder, self.tokenizer)

    def generate(self, prompt: Prompt, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: Optional[Union[str, int, Sequence[Union[str, int]]]] = None, seed: Optional[int] = None,
                 stream: bool = False, output: Optional[str] = None) -> Any:
        """Text prompt(s) -> generated text (str or list); token-id prompt(s) -> generated ids.

        output="text" or "ids" overrides that (text needs the export's tokenizer).
        stream=True returns an iterator: of text pieces (one prompt) or (row, piece) pairs (several);
        of token ids instead of pieces for ids output. Generation of a row stops at EOS, at a `stop`
        token id, or when a `stop` string appears (the stop string is not included; needs text output).
        seed: an integer in [0, 2**64) for reproducible sampling (None: a random one).
        """
        check_count("max_new_tokens", max_new_tokens)
        if seed is not None and not (is_integer(seed) and 0 <= seed < 2**64):
            raise ParameterError("seed", f"must be an integer in [0, 2**64) or None, got {seed!r}")
        rows, texts, single = self._prompt_rows(prompt)
        as_text = self._text_output(texts, output)
        stop_ids, stop_strings = split_stops(stop)
        if stop_strings and not as_text:
            raise ParameterError("stop", "strings need text output (a tokenizer); use token ids")
        eos = self.eos_id()
        gen = TokenGenerator(self.backend, rows, int(max_new_tokens),
                             SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty),
                             self.vocab_limit, stop_ids + ([eos] if eos is not None else []),
                             None if seed is None else int(seed))
        events = self._text_events(gen, stop_strings) if as_text else self._id_events(gen)
        if stream:
            return (piece if single else (row, piece) for row, piece in events)
        out: list = [("" if as_text else []) for _ in rows]
        for row, piece in events:
            out[row] = out[row] + (piece if as_text else [piece])
        return out[0] if single else out

    def _text_output(self, text_prompt: bool, output: Optional[str]) -> bool:
        """Whether generate returns text: as the prompt when output is None."""
        if output not in (None, "text", "ids"):
            raise ParameterError("output", f"must be 'text', 'ids' or None, got {output!r}")
        if output == "text" and self.tokenizer is None:
            raise ParameterError("output", "'text' needs a tokenizer and this export has none")
        return text_prompt if output is None else output == "text"

    def _prompt_rows(self, prompt: Prompt) -> tuple[list[list[int]], bool, bool]:
        """-> (token ids per row, prompts are text, a single prompt)."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt
                                       and all(isinstance(p, str) for p in prompt)):
            if self.tokenizer is None:
                raise MambaDeployError("this export has no tokenizer; pass token ids instead of text")
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            return [self.tokenizer.encode(t).ids for t in texts], True, isinstance(prompt, str)
        if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], (list, tuple, str)):
            rows, single = [list(prompt)], True
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt):
            rows, single = [list(p) for p in prompt], False
        else:
            raise ParameterError("prompt", "must be a string, a list of strings, or token ids "
                                           "(a list or lists of ints)")
        limit = self.config.vocab_size_padded
        for row, ids in enumerate(rows):
            bad = next((t for t in ids if not (is_integer(t) and 0 <= t < limit)), None)
            if bad is not None:
                where = f" (prompt {row})" if not single else ""
                raise ParameterError("prompt", f"token ids must be integers in [0, {limit}), got {bad!r}{where}")
        return [[int(t) for t in ids] for ids in rows], False, single

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


def check_count(name: str, value: Any) -> None:
    """ParameterError unless `value` is an integer >= 0."""
    if not (is_integer(value) and value >= 0):
        raise ParameterError(name, f"must be an integer >= 0, got {value!r}")


def split_stops(stop: Any) -> tuple[list[int], list[str]]:
    """`stop` (a string, a token id, or a list of them) -> (token ids, strings)."""
    if stop is None:
        stops = []
    else:
        stops = [stop] if isinstance(stop, str) or not isinstance(stop, Iterable) else list(stop)
    wrong = next((s for s in stops if not (isinstance(s, str) or is_integer(s))), None)
    if wrong is not None:
        raise ParameterError("stop", f"must be strings or token ids, got {wrong!r}")
    return [int(s) for s in stops if not isinstance(s, str)], [s for s in stops if isinstance(s, str)]


def check_state(state: Any, backend: Backend) -> None:
    """ParameterError unless `state` has this backend's layers, shapes, dtypes and device.

    A state from another engine (other model, batch, dtype or device) would otherwise fail deep in a
    backend with a raw error, or be silently converted."""
    if not isinstance(state, InferenceState):
        raise ParameterError("state", f"must be an InferenceState from engine.new_state(), got {type(state).__name__}")
    cfg = backend.config
    if len(state.conv) != cfg.n_layer or len(state.ssm) != cfg.n_layer:
        raise ParameterError("state", f"has {len(state.conv)} layers, this engine's model has {cfg.n_layer} "
                                      "(a state from another engine? use engine.new_state())")
    first = state.conv[0]
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 0
    for kind, tensors, shape, dtype in (("conv", state.conv, cfg.conv_state_shape(batch), backend.dtype),
                                        ("ssm", state.ssm, cfg.ssm_state_shape(batch), backend.state_dtype)):
        shape, device = torch.Size(shape), backend.device
        if not all(isinstance(t, torch.Tensor) and t.shape == shape and t.dtype == dtype and t.device == device
                   for t in tensors):  # the fast path: this runs before every prefill and decode
            for layer, tensor in enumerate(tensors):
                _check_state_tensor(f"state.{kind}[{layer}]", tensor, shape, dtype, device)


def _check_state_tensor(name: str, tensor: Any, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ParameterError(name, f"has shape {got}, this engine needs {tuple(shape)} "
                                   "(a state from another engine? use engine.new_state(batch))")
    if tensor.dtype != dtype:
        raise ParameterError(name, f"is {tensor.dtype}, this engine needs {dtype}")
    if not _same_device(tensor.device, device):
        raise ParameterError(name, f"is on {tensor.device}, this engine runs on {device}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


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
