"""Loading an export folder: every backend refuses files outside the folder and a config.json that the
graphs contradict, with one MambaDeployError, before reading any weight."""
import hashlib
import json
import shutil

import onnx
import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import load_export
from mamba_deploy.runtime.backend import load_backend

BACKENDS = ["onnxruntime", "torch", "native"]
pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


class _StubEngine:
    """Stands in for the GPU engine so that the native loader's checks run on CPU."""

    def __init__(self, cfg, weights, **options):
        self.cfg, self.weights = cfg, weights


@pytest.fixture
def load(monkeypatch):
    """load(backend, folder): the backend's loader on `folder`; native with its GPU parts stubbed out."""
    import mamba_deploy.native.loading as native

    monkeypatch.setattr(native, "require_native", lambda: None)
    monkeypatch.setattr(native, "NativeEngine", _StubEngine)
    return lambda backend, folder: load_backend(backend, load_export(folder))


def _copy(exports, tmp_path, name="export", arch="mamba1"):
    return shutil.copytree(exports(arch), tmp_path / name)


def _relocate(folder, location):
    """Point every external initializer of both graphs at `location`."""
    for graph in ("prefill.onnx", "decode.onnx"):
        model = onnx.load(str(folder / graph), load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        (folder / graph).write_bytes(model.SerializeToString())


def _outside(tmp_path, folder, how):
    """Make `folder` read a file of another export (tmp_path/other), which lies outside `folder`."""
    other = tmp_path / "other"
    if how in ("dotdot", "absolute"):
        _relocate(folder, "../other/weights.data" if how == "dotdot" else str(other / "weights.data"))
        (folder / "weights.data").unlink()
    else:  # weights.data or decode.onnx replaced by a link out
        name = "weights.data" if how == "symlink" else "decode.onnx"
        (folder / name).unlink()
        (folder / name).symlink_to(other / name)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "graph-symlink"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_files_outside_the_export_folder_are_refused(exports, tmp_path, load, backend, how):
    folder = _copy(exports, tmp_path)
    _copy(exports, tmp_path, "other")
    _outside(tmp_path, folder, how)
    with pytest.raises(MambaDeployError, match="resolves outside"):
        load(backend, folder)


EDITS = {  # config.json edits the graphs contradict
    "more layers": lambda c: c.update(n_layer=c["n_layer"] + 1),
    "fewer layers": lambda c: c.update(n_layer=c["n_layer"] - 1),
    "d_state": lambda c: c.update(d_state=c["d_state"] * 2),
    "d_model": lambda c: c.update(d_model=c["d_model"] * 2),
    "vocab": lambda c: c.update(vocab_size=c["vocab_size"] + 64, vocab_size_padded=c["vocab_size_padded"] + 64),
    "untied": lambda c: c.update(tie_embeddings=False),
    "dtype": lambda c: c["export"].update(dtype="float16"),
    "state dtype": lambda c: c["export"].update(state_dtype="float16"),
}


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_config_edited_against_the_graphs_is_one_error(exports, tmp_path, load, backend, edit):
    folder = _copy(exports, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    EDITS[edit](config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MambaDeployError, match="config.json does not match"):
        load(backend, folder)


@pytest.mark.parametrize("backend", BACKENDS)
def test_untouched_export_loads(exports, load, backend):
    assert load(backend, exports("mamba2")).config.n_layer == 2


@pytest.mark.parametrize("damage", ["truncated", "missing"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_incomplete_weights_are_one_error(exports, tmp_path, load, backend, damage):
    folder = _copy(exports, tmp_path)
    weights = folder / "weights.data"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(MambaDeployError, match="truncated" if damage == "truncated" else "missing"):
        load(backend, folder)


def test_export_records_weights_size_and_sha256(exports):
    folder = exports("mamba1")
    meta = json.loads((folder / "config.json").read_text())["export"]
    data = (folder / "weights.data").read_bytes()
    assert meta["weights_bytes"] == len(data)
    assert meta["weights_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_tensorrt_build_refuses_files_outside_before_parsing(exports, tmp_path, how):
    """TensorRT's ONNX parser resolves external data itself: the build checks the export first."""
    from mamba_deploy.tensorrt.builder import build_engines

    folder = _copy(exports, tmp_path)
    _copy(exports, tmp_path, "other")
    _outside(tmp_path, folder, how)
    with pytest.raises(MambaDeployError, match="resolves outside"):
        build_engines(folder)
