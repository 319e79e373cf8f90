"""Shared test configuration: `gpu` tests skip without CUDA, `tensorrt` tests without TensorRT; tiny exports."""
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network in tests; the tokenizer fallback must not wait


def _has_tensorrt() -> bool:
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None  # a bare folder named tensorrt is not TensorRT


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    has_trt = _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT"))


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """exports(arch, **options) -> a tiny export folder, built once per (arch, options) per session."""
    from mamba_deploy.export.testing import built_once, tiny_export

    return built_once(lambda arch, **options: tiny_export(arch, tmp_path_factory.mktemp(arch), **options))
