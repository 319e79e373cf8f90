"""The export's chat template (tokenizer_config.json "chat_template"), rendered with jinja2 as Hugging Face does.

The template comes from a model folder, which we do not trust: it runs in jinja2's immutable sandbox
(no attribute access to Python internals, no mutation of the messages, ranges bounded)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import resolve_inside
from ..errors import MambaDeployError
from .protocol import APIError

CONFIG_FILE = "tokenizer_config.json"


class ChatTemplate:
    """render(messages) -> the prompt text, with add_generation_prompt=True."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", where: str = "chat template"):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise MambaDeployError(f"{where}: not a valid jinja2 template ({exc})") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_export(cls, folder: Path) -> Optional["ChatTemplate"]:
        """The template of the export folder's tokenizer_config.json, or None when it has none."""
        path = resolve_inside(Path(folder), CONFIG_FILE, "tokenizer file")
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MambaDeployError(f"{path}: cannot read ({exc})") from None
        if not isinstance(config, dict):
            raise MambaDeployError(f"{path}: not a JSON object")
        source = _pick_template(config.get("chat_template"), path)
        if source is None:
            return None
        return cls(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")),
                   f"{path}: chat_template")

    def render(self, messages: list[dict]) -> str:
        """APIError 400 when the template refuses the messages (raise_exception) or fails on them."""
        import jinja2

        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                        eos_token=self.eos_token)
        except jinja2.TemplateError as exc:
            raise APIError(400, f"the chat template refused the messages: {exc}", "messages") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
            raise APIError(400, f"the chat template failed on the messages: {exc!r}", "messages") from None


def _pick_template(value: Any, path: Path) -> Optional[str]:
    """A string, or Hugging Face's list of {"name", "template"} (the one named "default")."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise MambaDeployError(f"{path}: chat_template must be a string or a list with a 'default' template")


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.TemplateError(message)
