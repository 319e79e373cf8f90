"""The tensorrt model: written only from a TensorRT build of the export (build.json + prefill plan; the plan's bytes
are never read, so a stand-in file serves here), served under the plan's own tensor names."""
import json
import shutil

import onnx
import pytest
from triton_checks import load_problems

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.tensorrt.metadata import BuildRecord, export_fingerprint
from mamba_deploy.triton_repo import TritonOptions, write_triton_repository

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


@pytest.fixture
def export(own_exports, tmp_path):
    """A private copy of a tiny export (the tests add engines/ folders to it)."""
    folder = tmp_path / "export"
    shutil.copytree(own_exports("mamba2", dtype="float16"), folder)
    return folder


def add_build(folder, name, max_batch=16, **changes):
    """engines/<name>/ as `build --backend tensorrt` leaves it: build.json, then a prefill and a decode plan."""
    engines = folder / "engines" / name
    engines.mkdir(parents=True)
    meta = json.loads((folder / "config.json").read_text())["export"]
    fields = dict(gpu="NVIDIA H200", compute_capability="9.0", tensorrt="10.13.0", dtype=meta["dtype"],
                  state_dtype=meta["state_dtype"], plugin_sha256="ab" * 32, export_sha256=export_fingerprint(folder),
                  limits={"max_batch": max_batch, "max_seq": 2048, "opt_seq": 512, "opt_batch": 1})
    (engines / "build.json").write_text(BuildRecord(**{**fields, **changes}).to_json())
    for kind in ("prefill", "decode"):
        (engines / f"{kind}.plan").write_bytes(f"{name} {kind} plan".encode())
    return engines


def write(folder, repo, **options):
    return write_triton_repository(folder, repo, TritonOptions(backend="tensorrt", **options), progress=False)


def test_tensorrt_model_serves_the_prefill_plan(export, tmp_path, parse_config):
    add_build(export, "h200-float16")
    (export / "engines" / "h200-native").mkdir()
    (export / "engines" / "h200-native" / "build.json").write_text('{"backend": "native"}')  # ignored
    result = write(export, tmp_path / "repo", name="m")
    assert (result.engines, result.max_batch, result.large_file) == ("h200-float16", 16, "linked")
    repo = tmp_path / "repo"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == \
        ["m/1/model.plan", "m/config.pbtxt", "mamba-deploy-triton.json"]
    assert (repo / "m/1/model.plan").read_bytes() == b"h200-float16 prefill plan"
    config = parse_config(repo / "m" / "config.pbtxt")
    assert (config.platform, config.backend, config.max_batch_size) == ("tensorrt_plan", "", 16)
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert len(config.sequence_batching.control_input) == 0  # a plan has no START/END/READY inputs
    states = config.sequence_batching.state
    assert (states[0].input_name, states[0].output_name) == ("past_conv_state.0", "present_conv_state.0")
    # TensorRT keeps the ONNX names, so the exported graph's I/O is the plan's
    assert load_problems(config, onnx.load(str(export / "prefill.onnx"), load_external_data=False)) == []


def test_max_batch_within_the_engines_limit(export, tmp_path):
    add_build(export, "h200-float16", max_batch=4)
    assert write(export, tmp_path / "small", max_batch=2).max_batch == 2
    with pytest.raises(MambaDeployError, match="max_batch 5 is above the 4"):
        write(export, tmp_path / "big", max_batch=5)


def test_which_build(export, tmp_path):
    with pytest.raises(MambaDeployError, match="has no TensorRT engines: build them with"):
        write(export, tmp_path / "repo")
    add_build(export, "h200-float16")
    add_build(export, "ampere-plus-float16")
    with pytest.raises(MambaDeployError, match=r"several TensorRT builds .* --engines NAME"):
        write(export, tmp_path / "repo")
    assert write(export, tmp_path / "repo", engines="ampere-plus-float16").engines == "ampere-plus-float16"
    with pytest.raises(MambaDeployError, match="resolves outside"):
        write(export, tmp_path / "other", engines="../../elsewhere")
    with pytest.raises(MambaDeployError, match="no engines/missing folder"):
        write(export, tmp_path / "other", engines="missing")


def test_builds_that_do_not_match_the_export_are_refused(export, tmp_path):
    add_build(export, "old", export_sha256={"config.json": "00" * 32})
    with pytest.raises(MambaDeployError, match="built from another version of this export"):
        write(export, tmp_path / "repo", engines="old")
    add_build(export, "other-dtype", dtype="float32")
    with pytest.raises(MambaDeployError, match="built for float32/float32"):
        write(export, tmp_path / "repo", engines="other-dtype")
    assert not (tmp_path / "repo").exists()
