"""The chat template runs sandboxed: rendering as Hugging Face does, refusals as HTTP 400, bad templates refused
at load naming the file."""
import json

import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.serve.chat import ChatTemplate
from mamba_deploy.serve.protocol import APIError

MESSAGES = [{"role": "user", "content": "hi <b>"}]


def test_renders_messages_tokens_and_generation_prompt():
    template = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content | tojson }}\n"
                            "{% endfor %}{% if add_generation_prompt %}>{% endif %}", bos_token="<s>")
    assert template.render(MESSAGES) == '<s>user="hi <b>"\n>'


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # reaching Python internals
    "{% set x = messages.append(1) %}",  # mutating the request (immutable sandbox)
    "{{ raise_exception('no system role') }}",
    "{{ messages[5].content }}{{ 1 / 0 }}",
])
def test_unsafe_or_failing_templates_are_a_400(source):
    with pytest.raises(APIError) as info:
        ChatTemplate(source).render(MESSAGES)
    assert info.value.status == 400 and info.value.param == "messages"


def _export_with(tmp_path, config):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_from_export(tmp_path):
    assert ChatTemplate.from_export(tmp_path) is None  # no tokenizer_config.json
    assert ChatTemplate.from_export(_export_with(tmp_path, {"eos_token": "x"})) is None
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}]
    folder = _export_with(tmp_path, {"chat_template": named, "eos_token": {"content": "</s>"}})
    assert ChatTemplate.from_export(folder).render(MESSAGES) == "D</s>"


@pytest.mark.parametrize("config,message", [
    ({"chat_template": "{% for %}"}, "not a valid jinja2 template"),
    ({"chat_template": 5}, "chat_template must be a string"),
    ([1], "not a JSON object"),
])
def test_bad_templates_are_refused_at_load(tmp_path, config, message):
    with pytest.raises(MambaDeployError, match=message):
        ChatTemplate.from_export(_export_with(tmp_path, config))


def test_a_config_linking_outside_the_export_is_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"chat_template": "x"}))
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "tokenizer_config.json").symlink_to(outside)
    with pytest.raises(MambaDeployError, match="resolves outside"):
        ChatTemplate.from_export(folder)
