"""BuildOptions validation and the lazy TensorRT loader (no TensorRT needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mamba_deploy
from mamba_deploy.errors import MambaDeployError
from mamba_deploy.tensorrt import BuildOptions, _loader
from mamba_deploy.tensorrt.options import parse_size


@pytest.mark.parametrize("text,size", [("4G", 4 << 30), ("512M", 512 << 20), ("1GiB", 1 << 30), ("64k", 64 << 10),
                                       (123, 123), ("2048", 2048), (None, None), ("1.5G", 3 << 29)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "4X", "-1G", 0, -5, "0"])
def test_parse_size_rejects(bad):
    with pytest.raises(MambaDeployError):
        parse_size(bad)


def test_defaults_validate():
    opts = BuildOptions(workspace="1G").validate()
    assert opts.workspace == 1 << 30
    assert opts.limits() == {"max_batch": 8, "max_seq": 2048, "opt_seq": 512, "opt_batch": 1}


@pytest.mark.parametrize("kwargs,word", [
    ({"max_batch": 0}, "max_batch"), ({"max_seq": -1}, "max_seq"), ({"opt_seq": 4096}, "opt_seq"),
    ({"opt_batch": 9}, "opt_batch"), ({"max_batch": True}, "max_batch"), ({"max_batch": 70000}, "65535"),
    ({"optimization_level": 7}, "optimization_level"), ({"plugin_lib": "/nonexistent/lib.so"}, "plugin library"),
])
def test_bad_options_name_the_option(kwargs, word):
    with pytest.raises(MambaDeployError, match=word):
        BuildOptions(**kwargs).validate()


def test_timing_cache_must_not_be_a_folder(tmp_path):
    with pytest.raises(MambaDeployError, match="folder"):
        BuildOptions(timing_cache=tmp_path).validate()


def test_missing_tensorrt_is_a_user_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(MambaDeployError, match="pip install --extra-index-url https://pypi.nvidia.com tensorrt"):
        _loader.import_tensorrt()
    with pytest.raises(MambaDeployError, match="not installed"):
        _loader.lazy_tensorrt.Builder  # noqa: B018  (attribute access imports)


def test_too_old_tensorrt_is_refused(monkeypatch):
    fake = type(sys)("tensorrt")
    fake.__version__ = "8.6.1"
    fake.__file__ = "/opt/tensorrt/__init__.py"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(MambaDeployError, match="too old"):
        _loader.import_tensorrt()


@pytest.mark.parametrize("text,version", [("10.13.0.35", (10, 13, 0, 35)), ("11.4.0.106", (11, 4, 0, 106)),
                                          ("10.3.0.post1", (10, 3, 0)), ("", ())])
def test_parse_version(text, version):
    assert _loader.parse_version(text) == version


def test_find_plugin_library(tmp_path, monkeypatch):
    lib = tmp_path / _loader.PLUGIN_LIB_NAME
    lib.write_bytes(b"\x7fELF")
    assert _loader.find_plugin_library(lib) == lib.resolve()
    monkeypatch.setenv(_loader.PLUGIN_ENV_VAR, str(lib))
    assert _loader.find_plugin_library() == lib.resolve()
    monkeypatch.setenv(_loader.PLUGIN_ENV_VAR, str(tmp_path / "missing.so"))
    with pytest.raises(MambaDeployError, match="TENSORRT_INCLUDE_DIR"):
        _loader.find_plugin_library()


_IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
import mamba_deploy
for module in pkgutil.walk_packages(mamba_deploy.__path__, "mamba_deploy."):
    importlib.import_module(module.name)
print(sorted(name for name in sys.modules if name.split(".")[0] == "tensorrt"))
import tensorrt
print(tensorrt.__file__)
"""


def test_importing_the_package_does_not_import_tensorrt(tmp_path):
    """Every mamba_deploy module imports without importing tensorrt (it is imported lazily, on first use).

    In a fresh interpreter, a fake `tensorrt` that imports fine shadows any real one: an eager
    `import tensorrt` anywhere (even inside try/except) leaves it in sys.modules, TensorRT installed or not."""
    (tmp_path / "tensorrt.py").write_text("# a fake TensorRT: importing it must not happen\n")
    root = Path(mamba_deploy.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(root),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_MODULE], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    imported, fake_file = proc.stdout.splitlines()
    assert Path(fake_file) == tmp_path / "tensorrt.py"  # the fake was the one importable
    assert imported == "[]"


def test_a_bare_tensorrt_folder_is_not_tensorrt(monkeypatch):
    fake = type(sys)("tensorrt")
    fake.__path__ = ["/somewhere/tests/tensorrt"]  # what a namespace package looks like
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(MambaDeployError, match="only the folder"):
        _loader.import_tensorrt()
