"""Engine folders, build.json and atomic writes (no TensorRT needed)."""
import dataclasses
import json

import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.tensorrt import metadata as md


@pytest.mark.parametrize("name,slug", [
    ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"), ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
    ("NVIDIA H200", "h200"), ("Tesla T4", "tesla-t4"), ("  ", "gpu"), ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb")])
def test_gpu_slug(name, slug):
    assert md.gpu_slug(name) == slug


def test_engine_dir(tmp_path):
    assert md.engine_dir(tmp_path, "NVIDIA H100 80GB HBM3", "float16") == tmp_path / "engines/h100-80gb-hbm3-float16"
    portable = md.engine_dir(tmp_path, "x", "bfloat16", hardware_compatible=True)
    assert portable == tmp_path / "engines/ampere-plus-bfloat16"


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "plan"
    md.atomic_write(target, b"one")
    md.atomic_write(target, memoryview(b"two"))
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["plan"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "plan"
    md.atomic_write(target, b"old")

    class Boom:
        def __bytes__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        md.atomic_write(target, Boom())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def record(**kw):
    base = dict(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.13.0.35", dtype="float16",
                state_dtype="float32", limits={"max_batch": 8, "max_seq": 2048, "opt_seq": 512, "opt_batch": 1},
                plugin_sha256="ab" * 32, export_sha256={"config.json": "cd" * 32})
    return md.BuildRecord(**{**base, **kw})


def test_build_record_round_trip(tmp_path):
    rec = record(version_compatible=True)
    md.atomic_write(tmp_path / md.BUILD_FILE, rec.to_json())
    assert md.read_build_record(tmp_path) == rec
    data = json.loads((tmp_path / md.BUILD_FILE).read_text())
    for key in ("gpu", "compute_capability", "tensorrt", "dtype", "limits", "plugin_sha256", "plans"):
        assert key in data


def test_build_record_errors(tmp_path):
    with pytest.raises(MambaDeployError, match="mamba-deploy build"):
        md.read_build_record(tmp_path)
    (tmp_path / md.BUILD_FILE).write_text("{not json")
    with pytest.raises(MambaDeployError, match="unreadable"):
        md.read_build_record(tmp_path)
    (tmp_path / md.BUILD_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(MambaDeployError, match="--force"):
        md.read_build_record(tmp_path)
    data = dataclasses.asdict(record())
    del data["gpu"]
    (tmp_path / md.BUILD_FILE).write_text(json.dumps(data))
    with pytest.raises(MambaDeployError, match="missing gpu"):
        md.read_build_record(tmp_path)


def test_mismatches():
    rec = record()
    assert rec.mismatches("NVIDIA H100 PCIe", "9.0", "10.13.1.2") == []
    assert "compute capability" in rec.mismatches("NVIDIA A100", "8.0", "10.13.0.35")[0]
    assert "TensorRT" in rec.mismatches("NVIDIA H100", "9.0", "10.14.0")[0]
    assert rec.mismatches("x", "9.0", "10.13.0", plugin_sha256="00")[0].startswith("the plugin library")
    assert record(hardware_compatible=True).mismatches("NVIDIA A100", "8.0", "10.13.0") == []
    assert record(version_compatible=True).mismatches("NVIDIA H100", "9.0", "11.4.0") == []


def test_find_engine_dirs_and_fingerprint(tmp_path):
    assert md.find_engine_dirs(tmp_path) == []
    d = tmp_path / "engines" / "h100-float16"
    md.atomic_write(d / md.BUILD_FILE, record().to_json())
    (tmp_path / "engines" / "stray").mkdir()
    assert md.find_engine_dirs(tmp_path) == [d]
    (tmp_path / "config.json").write_text("{}")
    fp = md.export_fingerprint(tmp_path)
    assert list(fp) == ["config.json"] and fp["config.json"] == md.file_sha256(tmp_path / "config.json")
