"""The `cuda` fixture of the kernel tests: the kernel library's module, or a failure saying why it is missing."""
import pytest


@pytest.fixture(scope="module")
def cuda():
    from mamba_deploy.ops import cuda as mod

    if not mod.is_available():
        pytest.fail(f"kernel library unavailable: {mod.unavailable_reason()}")
    return mod
