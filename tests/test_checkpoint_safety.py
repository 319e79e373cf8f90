"""Files read from a model folder stay inside it (`resolve_inside`), and an unreachable Hugging Face Hub is one
error line in bounded time (only loopback addresses are used: a closed port, and a server that never answers)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mamba_deploy
from mamba_deploy.checkpoint import resolve_inside
from mamba_deploy.errors import CheckpointError

ROOT = Path(mamba_deploy.__file__).resolve().parents[1]
HUB_ID = "state-spaces/mamba-130m"


def test_resolve_inside(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.json").write_text("{}")
    (folder / "link.json").symlink_to("sub/a.json")
    (tmp_path / "secret").write_text("x")
    (folder / "out.json").symlink_to(tmp_path / "secret")
    (folder / "dangling.json").symlink_to("/nonexistent/file")
    assert resolve_inside(folder, "link.json", "file") == (folder / "sub" / "a.json").resolve()
    assert resolve_inside(folder, "missing.json", "file") == (folder / "missing.json").resolve()
    for bad in ["out.json", "dangling.json", "../secret", "sub/../../secret", str(tmp_path / "secret"), "/etc/passwd"]:
        with pytest.raises(CheckpointError, match=f"shard {bad!r} resolves outside {folder}"):
            resolve_inside(folder, bad, "shard")


def test_resolve_inside_a_hub_cache_snapshot(tmp_path):
    """Snapshot files are links into the repo's blobs/ folder; that is inside, another repo is not."""
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text("{}")
    (snapshot / "config.json").symlink_to("../../blobs/f00d")
    (tmp_path / "hub" / "models--other--repo").mkdir()
    (snapshot / "tokenizer.json").symlink_to(tmp_path / "hub" / "models--other--repo")
    assert resolve_inside(snapshot, "config.json", "file") == repo / "blobs" / "f00d"
    with pytest.raises(CheckpointError, match="resolves outside"):
        resolve_inside(snapshot, "tokenizer.json", "file")


def _export_subprocess(model, tmp_path, endpoint, **env_extra):
    """`mamba-deploy export model` with the Hub at `endpoint` (loopback), HF_HUB_OFFLINE unset, no proxies."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN") and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1", PYTHONPATH=str(ROOT),
               **env_extra)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mamba_deploy.cli", "export", model, "-o", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def startup_s(tmp_path_factory):
    """Wall time of an export that fails at once (a missing local folder): imports and start-up only."""
    tmp_path = tmp_path_factory.mktemp("startup")
    proc, seconds = _export_subprocess(str(tmp_path / "missing"), tmp_path, "http://127.0.0.1:9")
    assert proc.returncode == 1, proc.stderr
    return seconds


def _assert_hub_unreachable(proc, seconds, startup_s):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {HUB_ID}: cannot reach the Hugging Face Hub"), proc.stderr
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local checkpoint folder" in lines[0]
    assert seconds < startup_s + 10, (seconds, startup_s)  # no retries with back-off (those took ~25 s)


def test_hub_at_a_closed_port(tmp_path, startup_s):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: connections are refused
    proc, seconds = _export_subprocess(HUB_ID, tmp_path, f"http://127.0.0.1:{port}")
    _assert_hub_unreachable(proc, seconds, startup_s)


def test_hub_that_never_answers(tmp_path, startup_s):
    with socket.socket() as server:  # accepts connections (in the kernel's backlog) and never replies
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        proc, seconds = _export_subprocess(HUB_ID, tmp_path, endpoint, HF_HUB_ETAG_TIMEOUT="2")
    _assert_hub_unreachable(proc, seconds, startup_s)


def test_config_linked_from_outside_is_refused(tmp_path):
    """config.json is read through the same inside-the-folder rule as the weights and tokenizer files."""
    import pytest

    from mamba_deploy.checkpoint import checkpoint_config
    from mamba_deploy.errors import CheckpointError

    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"d_model": 64, "n_layer": 2, "vocab_size": 100}')
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").symlink_to(outside)
    with pytest.raises(CheckpointError, match="config file 'config.json' resolves outside"):
        checkpoint_config(folder)
