"""benchmarks/prefill_models.py's A/B switch on the CPU: an engine option set for the block in the option's own
type (an int where the engine holds None: an option it decides itself) and restored after it."""
import pathlib
import sys
import types

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import prefill_models as M  # noqa: E402


@pytest.mark.parametrize("before,value,inside", [(None, 2, 2), (False, 1, True), (1, 4, 4)])
def test_variant_set_sets_and_restores_an_option(before, value, inside):
    eng = types.SimpleNamespace(prefill_split=before)
    with M.variant_set(eng, ("option", "prefill_split", value)):
        assert eng.prefill_split == inside and type(eng.prefill_split) is type(inside)
    assert eng.prefill_split is before


def test_variant_set_refuses_an_unknown_option():
    with pytest.raises(SystemExit, match="no option 'nope'"):
        with M.variant_set(types.SimpleNamespace(), ("option", "nope", 1)):
            pass
