"""benchmarks/decode_options.py's arguments on the CPU: option values capped as the engine caps them, projection
sets, environment switches, and a one-line error for each mistake."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import decode_options as O  # noqa: E402

from mamba_deploy.native import gemv as G  # noqa: E402


def test_options_and_switches_parse():
    sets = O.parse_sets(["tc_max_batch=16,999", "staged_gemv=none,in_proj+out_proj"])
    assert sets["tc_max_batch"] == [16, G.TC_MAX_BATCH]
    assert sets["staged_gemv"] == [frozenset(), frozenset({"in_proj", "out_proj"})]
    assert O.parse_sets(["step_dt_tc=0,1,5"]) == {"step_dt_tc": [0, 1, 1]}  # a switch: capped at 1
    assert O.parse_sets(["out_proj_slices=0,2,9"]) == {"out_proj_slices": [0, 2, O.D.OUT_PROJ_SLICES]}
    assert O.parse_envs(["MD_TC_STAGES=4,8", "MD_TC_SPLIT=-,1"]) == {"MD_TC_STAGES": ["4", "8"],
                                                                      "MD_TC_SPLIT": ["-", "1"]}


@pytest.mark.parametrize("parse,spec,message", [
    (O.parse_sets, "tc_max_batch", "expected OPTION=V1,V2"), (O.parse_sets, "nope=1", "unknown option"),
    (O.parse_sets, "tc_max_batch=x", "not a non-negative integer"),
    (O.parse_sets, "staged_gemv=head", "outside"), (O.parse_envs, "=1", "expected NAME=V1,V2"),
    (O.parse_envs, "MD_X=", "expected NAME=V1,V2")])
def test_mistakes_are_one_line(parse, spec, message):
    with pytest.raises(ValueError, match=message):
        parse([spec])


def test_set_env_sets_and_unsets(monkeypatch):
    monkeypatch.setenv("MD_TEST_SWITCH", "1")
    O.set_env("MD_TEST_SWITCH", "-")
    assert "MD_TEST_SWITCH" not in O.os.environ
    O.set_env("MD_TEST_SWITCH", "8")
    assert O.os.environ["MD_TEST_SWITCH"] == "8"
