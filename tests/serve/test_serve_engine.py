"""load_service's engine for an export folder: on the native backend its state pool is the service's slots (not
the engine's default 64); other backends get no such option. The native backend is a stand-in here (the torch
backend behind a recording loader), so this runs on the CPU."""
import pytest

from mamba_deploy.runtime import backend as B
from mamba_deploy.runtime.backends.torch import TorchBackend
from mamba_deploy.serve import ServeOptions, load_service


@pytest.fixture
def native_options(monkeypatch):
    """The options each load of the stand-in native backend got."""
    seen = []

    def native(info, **options):
        seen.append(options)
        return TorchBackend(info)
    monkeypatch.setitem(B.BACKENDS, "native", native)
    monkeypatch.setitem(B.BACKEND_AVAILABLE, "native", lambda info: True)
    return seen


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_a_native_engine_is_sized_to_the_service(exports, native_options, monkeypatch, backend):
    monkeypatch.setattr(B, "AUTO_ORDER", ("native", "torch"))
    service = load_service(str(exports("mamba1")), ServeOptions(backend=backend, max_batch=3))
    try:
        assert native_options == [{"max_batch": 3}] and service.scheduler.max_batch == 3
    finally:
        service.close()


def test_other_backends_get_no_max_batch(exports, native_options, monkeypatch):
    monkeypatch.setattr(B, "AUTO_ORDER", ("torch",))
    for backend in ("torch", "auto"):
        service = load_service(str(exports("mamba1")), ServeOptions(backend=backend, max_batch=3))
        service.close()
        assert service.engine.backend.name == "torch"
    assert native_options == []
