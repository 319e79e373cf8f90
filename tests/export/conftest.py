"""Tiny exports shared by the export tests (built once per session)."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network in tests; the tokenizer fallback must not wait


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """exports(arch, **options) -> export folder, cached per (arch, options)."""
    from mamba_deploy.export.testing import tiny_export

    cache = {}

    def get(arch, **options):
        key = (arch, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = tiny_export(arch, tmp_path_factory.mktemp(arch), **options)
        return cache[key]

    return get
