"""CMakeLists.txt configures as the README says: on a build machine without a GPU, and without an
architecture option, the kernels are compiled for sm_90 alone (every architecture is a full compile), as sm_90a
machine code (wgmma) plus compute_90 PTX for later GPUs."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("nvcc")), reason="needs cmake and nvcc")
def test_no_gpu_and_no_arch_option_compiles_for_sm90_alone(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # no GPU, even on a GPU machine
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBA_DEPLOY_CUDA_ARCHS", "CUDAARCHS", "MAMBA_DEPLOY_BUILD_KERNELS")}
    env.update(PATH=f"{fake_bin}{os.pathsep}{env.get('PATH', '')}", MAMBA_DEPLOY_TENSORRT="OFF")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    result = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), *generator], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mamba-deploy: CUDA architectures 90a-real;90-virtual\n" in result.stdout
    assert "sm_90 only" in result.stdout and "MAMBA_DEPLOY_CUDA_ARCHS" in result.stdout  # says how to override
