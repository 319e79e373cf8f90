"""The OpenAI request bodies, checked field by field, and the response bodies (docs/architecture.md "Serving").

A request body becomes a `GenerationRequest` (token-id prompts, SamplingParams, limits); any field of the
wrong type or out of range raises `APIError(400)` naming it. Fields OpenAI has and we do not implement
are refused when set to anything but their neutral value; unknown fields are ignored.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Optional

from ..errors import MambaDeployError, ParameterError, is_integer
from ..runtime.checks import check_seed
from ..runtime.sampling import SamplingParams

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 256
MAX_STOP_STRINGS = 16
# field -> the values that mean "off" (anything else: 400 "not supported")
UNSUPPORTED = {"n": (None, 1), "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
               "logprobs": (None, False), "top_logprobs": (None, 0), "presence_penalty": (None, 0),
               "frequency_penalty": (None, 0), "logit_bias": (None, {}), "tools": (None, [])}


class APIError(Exception):
    """An HTTP error with OpenAI's body {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_error", 499: "client_disconnected",
             503: "server_error"}

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(param: str, problem: str, code: Optional[str] = None) -> APIError:
    return APIError(400, f"{param} {problem}", param, code)


@dataclasses.dataclass
class GenerationRequest:
    """One /v1/completions or /v1/chat/completions call: prompts (token ids per choice) and how to sample."""

    prompts: list[list[int]]
    params: SamplingParams
    seed: Optional[int]
    max_tokens: int
    stop: list[str]
    stream: bool
    include_usage: bool
    model: Optional[str]
    ignore_eos: bool = False  # an extension (as vLLM's): generate max_tokens tokens whatever comes


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server accepts: token ids < vocab_size, prompts up to max_prompt_tokens, max_tokens up to
    max_tokens_limit; `tokenizer` None means token-id prompts only."""

    tokenizer: Any
    vocab_size: int
    max_prompt_tokens: int
    max_tokens_limit: int


def parse_completion(body: dict, limits: Limits) -> GenerationRequest:
    """A /v1/completions body -> GenerationRequest (APIError 400 for any bad field)."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad("prompt", "is required")
    prompts = [check_prompt(ids, limits, row) for row, ids in enumerate(prompt_rows(body["prompt"], limits))]
    return _common(body, prompts, limits, COMPLETION_DEFAULT_MAX_TOKENS, "max_tokens")


def parse_chat(body: dict, limits: Limits, render) -> GenerationRequest:
    """A /v1/chat/completions body -> GenerationRequest; render(messages) -> the prompt text (chat template)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of messages")
    for index, message in enumerate(messages):
        check_message(message, index)
    ids = limits.tokenizer.encode(render(messages), add_special_tokens=False).ids
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _common(body, [check_prompt(ids, limits, 0)], limits, CHAT_DEFAULT_MAX_TOKENS, field)


def prompt_rows(prompt: Any, limits: Limits) -> list[list[Any]]:
    """A string, list of strings, list of token ids or list of token-id lists -> token-id rows (unchecked)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)):
        if limits.tokenizer is None:
            raise bad("prompt", "must be token ids: this model has no tokenizer")
        texts = [prompt] if isinstance(prompt, str) else prompt
        return [limits.tokenizer.encode(text).ids for text in texts]
    if isinstance(prompt, list) and prompt and all(is_integer(t) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return prompt
    raise bad("prompt", "must be a string, a list of strings, a list of token ids or a list of token-id lists")


def check_prompt(ids: list[Any], limits: Limits, row: int) -> list[int]:
    where = f" (prompt {row})" if row else ""
    if not ids:
        raise bad("prompt", f"has no tokens{where}")
    wrong = next((t for t in ids if not (is_integer(t) and 0 <= t < limits.vocab_size)), None)
    if wrong is not None:
        raise bad("prompt", f"token ids must be integers in [0, {limits.vocab_size}), got {wrong!r}{where}")
    if len(ids) > limits.max_prompt_tokens:
        raise bad("prompt", f"has {len(ids)} tokens, more than this server's limit of {limits.max_prompt_tokens}"
                            f"{where}", "context_length_exceeded")
    return [int(t) for t in ids]


def check_message(message: Any, index: int) -> None:
    name = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise bad(name, "must be an object with a string 'role'")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not (isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                              and isinstance(p.get("text"), str) for p in content)):
        raise bad(f"{name}.content", "must be a string or a list of {\"type\": \"text\", \"text\": ...} parts")


def _common(body: dict, prompts: list[list[int]], limits: Limits, default_max: int, max_field: str) -> GenerationRequest:
    for name, neutral in UNSUPPORTED.items():
        if body.get(name, None) not in neutral:
            raise bad(name, f"is not supported by this server (leave it out or set it to {neutral[-1]!r})",
                      "unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "must be a string")
    max_tokens = _field(body, max_field, default_max)
    if not (is_integer(max_tokens) and 0 <= max_tokens <= limits.max_tokens_limit):
        raise bad(max_field, f"must be an integer in [0, {limits.max_tokens_limit}], got {max_tokens!r}")
    params = SamplingParams(*(_field(body, name, getattr(SamplingParams, name)) for name in
                              ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")))
    try:
        params.validate()
        check_seed(body.get("seed"))
    except ParameterError as exc:
        raise bad(exc.param, exc.problem) from None
    stream, options = _field(body, "stream", False), _field(body, "stream_options", {})
    if not isinstance(stream, bool):
        raise bad("stream", f"must be true or false, got {stream!r}")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise bad("stream_options", "must be an object like {\"include_usage\": true}")
    ignore_eos = _field(body, "ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad("ignore_eos", f"must be true or false, got {ignore_eos!r}")
    return GenerationRequest(prompts, params, body.get("seed"), int(max_tokens), _stops(body.get("stop"), limits),
                             stream, options.get("include_usage", False), model, ignore_eos)


def _field(body: dict, name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


def _stops(stop: Any, limits: Limits) -> list[str]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        raise bad("stop", "must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad("stop", f"has {len(stops)} strings, at most {MAX_STOP_STRINGS} are allowed")
    if stops and limits.tokenizer is None:
        raise bad("stop", "strings need a tokenizer and this model has none")
    return stops


class Formatter:
    """Response bodies of one request: OpenAI's text_completion or chat.completion objects, whole or as chunks.

    Without a tokenizer the output is token ids: each choice (and chunk) carries "token_ids" and "text" is ""."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def body(self, choices: list[dict], usage: dict) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}

    def choice(self, index: int, text: str, ids: Optional[list[int]], finish: Optional[str]) -> dict:
        if self.chat:
            out = {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                   "logprobs": None}
        else:
            out = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        if ids is not None:
            out["token_ids"] = ids
        return out

    def chunk(self, index: int, text: str, ids: Optional[list[int]], finish: Optional[str], first: bool) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        if ids is not None:
            choice["token_ids"] = ids
        return {"id": self.id, "object": f"{self.object}.chunk" if self.chat else self.object,
                "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        return {"id": self.id, "object": f"{self.object}.chunk" if self.chat else self.object,
                "created": self.created, "model": self.model, "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def as_api_error(exc: MambaDeployError) -> APIError:
    if isinstance(exc, ParameterError):
        return bad(exc.param, exc.problem)
    return APIError(400, str(exc))
