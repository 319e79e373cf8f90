"""Engine.load's slots: a backend whose state pool is fixed at load (native) is built with that many slots, the
others get no such option; `mamba-deploy serve` passes its --max-batch, `run` one slot. The native backend is a
stand-in here (the torch backend with native's slots_option, recording its options), so this runs on the CPU."""
import pytest

from mamba_deploy.errors import ParameterError
from mamba_deploy.runtime import Engine, backend as B
from mamba_deploy.runtime.backends.torch import TorchBackend
from mamba_deploy.serve import ServeOptions, load_service


@pytest.fixture
def native_options(monkeypatch):
    """The options each load of the stand-in native backend got; "auto" picks it."""
    seen = []

    class StandIn(TorchBackend):
        slots_option = "max_batch"

        def __init__(self, info, **options):
            seen.append(options)
            super().__init__(info)
    monkeypatch.setitem(B.BACKENDS, "native", StandIn)
    monkeypatch.setitem(B.BACKEND_AVAILABLE, "native", lambda info: True)
    monkeypatch.setattr(B, "AUTO_ORDER", ("native", "torch"))
    return seen


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_a_service_sizes_a_native_engine_to_its_slots(exports, native_options, backend):
    service = load_service(str(exports("mamba1")), ServeOptions(backend=backend, max_batch=3))
    try:
        assert native_options == [{"max_batch": 3}] and service.scheduler.max_batch == 3
    finally:
        service.close()


def test_slots_go_only_to_a_backend_with_a_fixed_pool(exports, native_options):
    engine = Engine.load(exports("mamba1"), backend="torch", slots=2)
    assert engine.backend.name == "torch" and engine.max_batch == 2 and native_options == []
    engine = Engine.load(exports("mamba1"), backend="native", slots=2, max_batch=5)  # an explicit option wins
    assert native_options == [{"max_batch": 5}] and engine.max_batch == 2
    Engine.load(exports("mamba1"), backend="native")
    assert native_options[-1] == {}  # no slots: the backend's own default
    with pytest.raises(ParameterError, match="slots must be an integer >= 1"):
        Engine.load(exports("mamba1"), slots=0)


def test_run_loads_one_slot(exports, native_options):
    from click.testing import CliRunner

    from mamba_deploy.cli import cli

    result = CliRunner().invoke(cli, ["run", str(exports("mamba1")), "--ids", "1,2,3", "--max-new-tokens", "2",
                                      "--backend", "native"])
    assert result.exit_code == 0, result.output
    assert native_options == [{"max_batch": 1}]
