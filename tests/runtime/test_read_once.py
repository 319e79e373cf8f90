"""Engine.load reads the export's config.json once, whichever backend runs it (the backends take the ExportInfo)."""
import builtins
import pathlib

import pytest

from mamba_deploy.runtime import Engine


def count_config_reads(monkeypatch) -> list:
    """Patch the ways a file can be read so that every read of a file named config.json is recorded."""
    reads = []
    real_read_text, real_read_bytes, real_open = pathlib.Path.read_text, pathlib.Path.read_bytes, builtins.open

    def record(path):
        if pathlib.Path(path).name == "config.json":
            reads.append(str(path))

    def read_text(self, *a, **k):
        record(self)
        return real_read_text(self, *a, **k)

    def read_bytes(self, *a, **k):
        record(self)
        return real_read_bytes(self, *a, **k)

    def open_(file, *a, **k):
        if isinstance(file, (str, pathlib.PurePath)):
            record(file)
        return real_open(file, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    monkeypatch.setattr(builtins, "open", open_)
    return reads


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_engine_load_reads_config_once(export_dir, monkeypatch, backend):
    reads = count_config_reads(monkeypatch)
    Engine.load(export_dir, backend=backend)
    assert len(reads) == 1, reads


@pytest.mark.gpu
def test_native_engine_load_reads_config_once(export_dir, monkeypatch):
    reads = count_config_reads(monkeypatch)
    Engine.load(export_dir, backend="native")
    assert len(reads) == 1, reads


def test_native_backend_builds_its_engine_from_the_given_export_info(export_dir, monkeypatch):
    """CPU check of the native loading chain: the GPU engine itself is replaced by a recorder."""
    from mamba_deploy.export.artifact import load_export
    from mamba_deploy.native import loading
    from mamba_deploy.runtime.backends.native import NativeBackend

    built = {}
    monkeypatch.setattr(loading, "require_native", lambda: None)
    monkeypatch.setattr(loading, "NativeEngine", lambda cfg, weights, **kw: built.update(cfg=cfg, weights=weights))
    info = load_export(export_dir)
    reads = count_config_reads(monkeypatch)
    NativeBackend(info)
    assert reads == [] and built["cfg"] is info.config and built["weights"]
