"""What `export --force` may replace (only a previous export, never the source or anything else), the
output lock, and the removal of temp folders that killed exports left behind."""
import json
import os
import subprocess
import sys

import pytest
from test_cli import assert_one_line_error, invoke

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import is_export_folder
from mamba_deploy.export import target as target_module
from mamba_deploy.export.target import ExportTarget, absolute_output, remove_stale_temps
from mamba_deploy.export.testing import tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


def _snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def ckpt(tmp_path):
    (tmp_path / "models").mkdir()
    return tiny_checkpoint("mamba1", tmp_path / "models" / "ckpt")


def _refused(args, folder, reason):
    """`export *args` fails with one error line containing `reason`, and `folder` is unchanged."""
    before = _snapshot(folder)
    result = invoke("export", *args, "-q")
    assert_one_line_error(result)
    assert reason in result.stderr, result.stderr
    assert _snapshot(folder) == before


def test_force_never_replaces_the_source_checkpoint(ckpt):
    _refused([ckpt, "-o", ckpt, "--force"], ckpt.parent, "source checkpoint")  # is the source
    _refused([ckpt, "-o", ckpt.parent, "--force"], ckpt.parent, "source checkpoint")  # holds it
    _refused([ckpt, "-o", ckpt.parent.parent, "--force"], ckpt.parent, "source checkpoint")  # holds it deeper
    assert (ckpt / "pytorch_model.bin").is_file()


def test_force_never_replaces_a_folder_that_is_not_an_export(ckpt, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("years of work")
    (other / "config.json").write_text(json.dumps({"d_model": 8}))  # a config.json without export metadata
    _refused([ckpt, "-o", other, "--force"], other, "not a previous export")
    plain_file = tmp_path / "file.txt"
    plain_file.write_text("keep me")
    _refused([ckpt, "-o", plain_file, "--force"], tmp_path / "notes", "not a previous export")
    assert plain_file.read_text() == "keep me"


def test_force_never_replaces_the_current_or_home_folder(ckpt, tmp_path, monkeypatch):
    previous = tmp_path / "previous"
    assert invoke("export", ckpt, "-o", previous, "-q").exit_code == 0
    monkeypatch.chdir(previous)
    _refused([ckpt, "-o", ".", "--force"], previous, "current directory")
    _refused([ckpt, "-o", tmp_path, "--force"], previous, "current directory")  # holds it
    monkeypatch.chdir(tmp_path / "models")
    monkeypatch.setenv("HOME", str(previous))
    _refused([ckpt, "-o", "~", "--force"], previous, "home folder")
    _refused([ckpt, "-o", "/", "--force"], previous, "filesystem root")
    assert is_export_folder(previous)


def test_dot_without_force_is_one_line(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused([ckpt, "-o", "."], tmp_path / "models", "already exists")


def test_force_refuses_a_symlink_and_replaces_a_previous_export(ckpt, tmp_path):
    previous = tmp_path / "previous"
    assert invoke("export", ckpt, "-o", previous, "-q").exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(previous)
    _refused([ckpt, "-o", link, "--force"], previous, "symbolic link")
    assert invoke("export", ckpt, "-o", previous, "-q", "--force", "--logits", "all").exit_code == 0
    assert json.loads((previous / "config.json").read_text())["export"]["logits"] == "all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "models", "previous"]


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_stale_temp_folders_of_dead_exports_are_removed(tmp_path):
    out = tmp_path / "out"
    dead, alive = _dead_pid(), os.getpid()
    stale = [tmp_path / f".out.tmp-{dead}-abc_123", tmp_path / f".out.old-{dead}"]
    kept = [tmp_path / f".out.tmp-{alive}-abc", tmp_path / f".other.tmp-{dead}-abc", tmp_path / f"out.tmp-{dead}-x",
            tmp_path / ".out.tmp-x1a2b3c4", tmp_path / f".out.tmp-{dead}-a.b"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "weights.data").write_bytes(b"\0" * 10)
    assert sorted(remove_stale_temps(out)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_one_export_per_output_at_a_time(tmp_path):
    out = absolute_output(tmp_path / "out")
    with ExportTarget(out, False, []) as first:
        assert first.tmp.name.startswith(f".out.tmp-{os.getpid()}-")
        with pytest.raises(MambaDeployError, match=rf"another export to {out} is running \(pid {os.getpid()}\)"):
            ExportTarget(out, True, []).__enter__()
        assert (tmp_path / ".out.lock").is_file()
    assert list(tmp_path.iterdir()) == []  # temp folder and lock file gone
    with ExportTarget(out, False, []) as second:  # the lock is free again
        (second.tmp / "config.json").write_text("{}")
        second.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_signal_while_the_temp_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """KeyboardInterrupt after mkdtemp made the folder but before the target holds it (the window a real
    SIGINT hit in CI): the folder and the lock still go."""
    out = absolute_output(tmp_path / "out")
    made_temp = target_module._make_temp

    def interrupted(output):
        made_temp(output)
        raise KeyboardInterrupt

    monkeypatch.setattr(target_module, "_make_temp", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ExportTarget(out, False, []).__enter__()
    assert list(tmp_path.iterdir()) == []
