"""Tiny exports for the TensorRT tests (real graphs from the exporter, built once per session)."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def trt_exports(tmp_path_factory):
    from mamba_deploy.export.testing import tiny_export

    cache = {}

    def get(arch, **options):
        key = (arch, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = tiny_export(arch, tmp_path_factory.mktemp(f"trt-{arch}"), **options)
        return cache[key]

    return get
