"""The repository on disk: layout, the rewritten model run by ONNX Runtime from inside it (the external data
resolves there) against the exported graph, hard link or copy of the weights, and what --force may replace."""
import errno
import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import load_export
from mamba_deploy.export.target import ExportTarget
from mamba_deploy.triton_repo import TritonOptions, write_triton_repository
from mamba_deploy.triton_repo import repository as repository_module
from mamba_deploy.triton_repo.names import renamed_states

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
FAMILIES = [("mamba1", {}), ("mamba2", {"dtype": "float16"})]


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def write(folder, repo, **options):
    return write_triton_repository(folder, repo, TritonOptions(**options), progress=False)


def random_feed(info, batch, seq, rng):
    """Exported-graph feed: random ids and random (non-zero) states."""
    cfg, dtypes = info.config, {"conv": np.dtype(info.meta["dtype"]), "ssm": np.dtype(info.meta["state_dtype"])}
    feed = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int64)}
    for e in renamed_states(cfg.n_layer):
        shape = (cfg.conv_state_shape if e.kind == "conv" else cfg.ssm_state_shape)(batch)
        feed[e.graph_input] = rng.standard_normal(shape).astype(dtypes[e.kind]) * 0.5
    return feed


def triton_feed(info, feed, start):
    """The same inputs under the repository model's names, with START per row."""
    batch = len(feed["input_ids"])
    out = {"input_ids": feed["input_ids"], "START": np.array(start, np.int32).reshape(batch, 1),
           "END": np.zeros((batch, 1), np.int32), "READY": np.ones((batch, 1), np.int32)}
    out.update({e.input_name: feed[e.graph_input] for e in renamed_states(info.config.n_layer)})
    return out


def run(session, feed):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch,export_options", FAMILIES)
def test_layout_and_the_model_runs_from_the_repository(own_exports, tmp_path, arch, export_options):
    folder = own_exports(arch, **export_options)
    result = write(folder, tmp_path / "repo", name="m", max_batch=4)
    assert (result.model, result.backend, result.max_batch, result.large_file) == ("m", "onnxruntime", 4, "linked")
    assert files(tmp_path / "repo") == ["m/1/model.onnx", "m/1/weights.data", "m/config.pbtxt",
                                        "mamba-deploy-triton.json"]
    marker = json.loads((tmp_path / "repo" / "mamba-deploy-triton.json").read_text())
    assert marker["tool"] == "mamba-deploy" and marker["export"] == str(folder.resolve())
    assert os.path.samefile(tmp_path / "repo/m/1/weights.data", folder / "weights.data")

    info, rng = load_export(folder), np.random.default_rng(0)
    original, served = session(folder / "prefill.onnx"), session(tmp_path / "repo/m/1/model.onnx")
    feed = random_feed(info, batch=2, seq=5, rng=rng)
    want, got = run(original, feed), run(served, triton_feed(info, feed, start=[0, 0]))
    np.testing.assert_array_equal(got["logits"], want["logits"])
    for e in renamed_states(info.config.n_layer):
        np.testing.assert_array_equal(got[e.output_name], want[e.graph_output])

    # START=1 on row 0 ignores its state (a sequence begins from zeros); row 1 keeps its own
    zero_feed = {k: (np.zeros_like(v) if k != "input_ids" else v) for k, v in feed.items()}
    fresh = run(original, zero_feed)["logits"]
    got = run(served, triton_feed(info, feed, start=[1, 0]))["logits"]
    np.testing.assert_array_equal(got[0], fresh[0])
    np.testing.assert_array_equal(got[1], want["logits"][1])
    assert not np.allclose(fresh[0], want["logits"][0])  # the random state matters, so the test can fail


def test_one_model_serves_prompt_chunks_and_single_tokens(own_exports, tmp_path):
    """As Triton's implicit state would run it: each request's state outputs are the next one's inputs. A prompt
    chunk, then single tokens, give the logits of one prefill over the whole sequence."""
    folder = own_exports("mamba1")
    write(folder, tmp_path / "repo", name="m")
    info, served = load_export(folder), session(tmp_path / "repo/m/1/model.onnx")
    entries = renamed_states(info.config.n_layer)
    ids = np.random.default_rng(1).integers(0, info.config.vocab_size, (1, 7), dtype=np.int64)
    garbage = random_feed(info, 1, 1, np.random.default_rng(2))  # what a first request's state may hold
    state, logits = {e.input_name: garbage[e.graph_input] for e in entries}, []
    for step, chunk in enumerate([ids[:, :4], ids[:, 4:5], ids[:, 5:6], ids[:, 6:7]]):
        feed = triton_feed(info, {"input_ids": chunk, **{e.graph_input: state[e.input_name] for e in entries}},
                           start=[int(step == 0)])
        out = run(served, feed)
        state, logits = {e.input_name: out[e.output_name] for e in entries}, out["logits"]
    whole = triton_feed(info, {"input_ids": ids, **{e.graph_input: np.zeros_like(garbage[e.graph_input])
                                                    for e in entries}}, start=[0])
    np.testing.assert_allclose(logits, run(served, whole)["logits"], rtol=1e-4, atol=1e-5)


def test_copy_instead_of_a_hard_link(own_exports, tmp_path, monkeypatch, capsys):
    folder = own_exports("mamba1")
    result = write(folder, tmp_path / "asked", name="m", copy=True)
    copied = tmp_path / "asked/m/1/weights.data"
    assert result.large_file == "copied" and not os.path.samefile(copied, folder / "weights.data")
    assert copied.read_bytes() == (folder / "weights.data").read_bytes() and copied.stat().st_nlink == 1

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    result = write_triton_repository(folder, tmp_path / "other-fs", TritonOptions(name="m"), progress=True)
    assert result.large_file == "copied"
    assert (tmp_path / "other-fs/m/1/weights.data").read_bytes() == (folder / "weights.data").read_bytes()
    assert "cannot hard-link it" in capsys.readouterr().err
    session(tmp_path / "other-fs/m/1/model.onnx")  # loads from its own folder


def test_force_replaces_only_a_repository_this_command_wrote(own_exports, tmp_path):
    folder = own_exports("mamba1")
    repo = tmp_path / "repo"
    write(folder, repo, name="m")
    with pytest.raises(MambaDeployError, match="already exists"):
        write(folder, repo, name="m")
    write(folder, repo, name="n", force=True)
    assert files(repo) == ["mamba-deploy-triton.json", "n/1/model.onnx", "n/1/weights.data", "n/config.pbtxt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temp, lock or old folder left

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(MambaDeployError, match="not a previous Triton model repository"):
        write(folder, other, force=True)
    (tmp_path / "link").symlink_to(repo)
    with pytest.raises(MambaDeployError, match="symbolic link"):
        write(folder, tmp_path / "link", force=True)
    with pytest.raises(MambaDeployError, match="is or holds the export folder"):
        write(folder, folder.parent, force=True)
    assert (other / "keep.txt").read_text() == "mine" and (folder / "config.json").is_file()


def test_a_second_writer_of_the_same_repository_is_refused(own_exports, tmp_path):
    with ExportTarget(tmp_path / "repo", False, [], repository_module.REPOSITORY):
        with pytest.raises(MambaDeployError, match=rf"another 'mamba-deploy triton' to {tmp_path / 'repo'} is running"):
            write(own_exports("mamba1"), tmp_path / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failure_leaves_no_repository_and_no_link(own_exports, tmp_path, monkeypatch):
    folder = own_exports("mamba1")

    def broken(*args):
        raise RuntimeError("disk full")

    links = (folder / "weights.data").stat().st_nlink
    monkeypatch.setattr(repository_module, "to_pbtxt", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write(folder, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []
    assert (folder / "weights.data").stat().st_nlink == links  # the temp folder's link went with it


def test_links_out_of_the_export_are_not_followed(own_exports, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(own_exports("mamba1"), folder)
    outside = tmp_path / "elsewhere.data"
    (folder / "weights.data").rename(outside)
    (folder / "weights.data").symlink_to(outside)
    with pytest.raises(MambaDeployError, match="resolves outside"):
        write(folder, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
