"""Tokenizer files in an export: only from inside the checkpoint folder, copied as ordinary files, and a
tokenizer.json that does not load is refused at export (not at `run`)."""
import json
import os

import pytest
from test_cli import assert_one_line_error, invoke
from tokenizers import Tokenizer, models

from mamba_deploy.export.testing import tiny_checkpoint


def _write_tokenizer(path):
    Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(str(path))


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint("mamba1", tmp_path / "ckpt")


def _refused(ckpt, out, name):
    result = invoke("export", ckpt, "-o", out, "-q")
    assert_one_line_error(result)
    assert name in result.stderr, result.stderr
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == ["ckpt", "outside"]


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "merges.txt"])
def test_tokenizer_files_linked_from_outside_are_refused(ckpt, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    _write_tokenizer(outside / "secret.json")  # even a valid tokenizer: it is not the model folder's
    if name != "tokenizer.json":
        _write_tokenizer(ckpt / "tokenizer.json")
    (ckpt / name).symlink_to(outside / "secret.json")
    _refused(ckpt, tmp_path / "out", f"tokenizer file '{name}' resolves outside {ckpt}")


def test_links_inside_the_folder_are_followed_and_copies_are_ordinary_files(ckpt, tmp_path):
    (ckpt / "tok").mkdir()
    _write_tokenizer(ckpt / "tok" / "tokenizer.json")
    (ckpt / "tokenizer.json").symlink_to("tok/tokenizer.json")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": "a"}))
    (ckpt / "tok" / "tokenizer.json").chmod(0o600)
    (ckpt / "tokenizer_config.json").chmod(0o640)
    umask = os.umask(0o002)
    try:
        result = invoke("export", ckpt, "-o", tmp_path / "out", "-q")
    finally:
        os.umask(umask)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    meta = json.loads((out / "config.json").read_text())["export"]
    assert meta["tokenizer"] == ["tokenizer.json", "tokenizer_config.json"]
    for name in meta["tokenizer"]:
        assert not (out / name).is_symlink() and (out / name).stat().st_mode & 0o777 == 0o644, name
    assert (out / "tokenizer.json").read_bytes() == (ckpt / "tok" / "tokenizer.json").read_bytes()
    run = invoke("run", out, "--prompt", "a", "--max-new-tokens", "2", "--temperature", "0")
    assert run.exit_code == 0, run.output


@pytest.mark.parametrize("content", [b"this is not json", b'{"version": "1.0", "model": 42}', b"\xff\xfe\x00garbage"])
def test_a_tokenizer_that_does_not_load_is_refused(ckpt, tmp_path, content):
    (ckpt / "tokenizer.json").write_bytes(content)
    (tmp_path / "outside").mkdir()  # _refused lists the folder
    _refused(ckpt, tmp_path / "out", f"{ckpt / 'tokenizer.json'}: not a valid tokenizer")
