"""The tensorrt backend and builder as a user meets them without TensorRT, and (marked) with it."""
import subprocess
import sys

import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import load_export
from mamba_deploy.runtime.backend import BACKEND_AVAILABLE, _import, load_backend
from mamba_deploy.tensorrt import BuildOptions, tensorrt_available


def test_backend_is_registered_and_not_auto_without_tensorrt(exports):
    info = load_export(exports("mamba1"))
    assert _import("tensorrt")
    if not tensorrt_available():
        assert BACKEND_AVAILABLE["tensorrt"](info) is False


@pytest.mark.skipif(tensorrt_available(), reason="checks the message users without TensorRT get")
def test_build_and_load_without_tensorrt_say_how_to_install(exports, tmp_path):
    from mamba_deploy.tensorrt import build_engines

    folder = exports("mamba1")
    lib = tmp_path / "libmamba_deploy_trt_plugins.so"
    lib.write_bytes(b"\x7fELF")
    with pytest.raises(MambaDeployError, match="pypi.nvidia.com"):
        build_engines(folder, plugin_lib=lib)
    with pytest.raises(MambaDeployError):
        load_backend("tensorrt", load_export(folder))


def test_build_validates_options_before_anything_else(exports):
    from mamba_deploy.tensorrt import build_engines

    with pytest.raises(MambaDeployError, match="opt_seq"):
        build_engines(exports("mamba1"), max_seq=16, opt_seq=32)
    with pytest.raises(MambaDeployError, match="no such folder"):
        build_engines("/nonexistent/export", options=BuildOptions())


def test_unknown_state_io_mode(exports):
    from mamba_deploy.tensorrt.runtime import TensorRTEngine

    with pytest.raises(MambaDeployError, match="state_io"):
        TensorRTEngine(load_export(exports("mamba1")), state_io="copy")


def test_import_is_cheap_in_a_fresh_interpreter():
    code = ("import sys, mamba_deploy.tensorrt, mamba_deploy.runtime.backends.tensorrt;"
            "print('tensorrt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_engines_match_onnxruntime(exports, tmp_path, arch):
    """Real TensorRT: build, then prefill + decode against the onnxruntime backend (float32)."""
    import torch

    from mamba_deploy.tensorrt import build_engines

    folder = exports(arch)
    target = build_engines(folder, max_batch=4, max_seq=64, opt_seq=16, timing_cache=tmp_path / "cache")
    assert (target / "build.json").is_file() and (tmp_path / "cache").is_file()
    assert build_engines(folder, max_batch=4, max_seq=64, opt_seq=16) == target  # up to date: reused
    info = load_export(folder)
    ref = load_backend("onnxruntime", info)
    for state_io in ("inplace", "pingpong"):
        trt = load_backend("tensorrt", info, state_io=state_io)
        ids = torch.randint(0, info.config.vocab_size, (2, 70))  # > max_seq: fed in two chunks
        s_ref, s_trt = ref.new_state(2), trt.new_state(2)
        want, got = ref.prefill(ids, s_ref), trt.prefill(ids, s_trt).cpu()
        assert torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-3)
        for step in range(3):  # the first step captures, the later ones replay
            nxt = want[:, -1:].argmax(-1)
            want, got = ref.decode(nxt, s_ref), trt.decode(nxt, s_trt).cpu()
            assert torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-3), (state_io, step)
        for a, b in zip(s_ref.ssm + s_ref.conv, s_trt.ssm + s_trt.conv):
            assert torch.allclose(a.float(), b.cpu().float(), rtol=1e-3, atol=1e-3)
