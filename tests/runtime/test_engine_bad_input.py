"""Engine API: every bad argument is a one-line ParameterError naming the parameter, never a raw error."""
import pytest
import torch

from mamba_deploy.errors import MambaDeployError, ParameterError
from mamba_deploy.runtime import Engine


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def engine(request, export_dir):
    return Engine.load(export_dir, backend=request.param)


def raises_param(param, match=""):
    return pytest.raises(ParameterError, match=rf"^{param} {match}")


@pytest.mark.parametrize("prompt", [[1, 2**64], [[1, 2], [3, 2**64]], [1, 2.5], [2.5, 1], [1, True], [3, "a"],
                                    [1, -1], [1, 112]])
def test_bad_prompt_ids(engine, prompt):
    with raises_param("prompt", "token ids must be integers in"):
        engine.generate(prompt, max_new_tokens=1)


@pytest.mark.parametrize("prompt", [[], {"ids": [1]}, ["text", 1], 7])
def test_bad_prompt_kinds(engine, prompt):
    with raises_param("prompt", "must be a string"):
        engine.generate(prompt, max_new_tokens=1)


@pytest.mark.parametrize("kwargs,param", [
    (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"), (dict(temperature="hot"), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_p=None), "top_p"), (dict(min_p=-0.1), "min_p"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(max_new_tokens=2.5), "max_new_tokens"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens="8"), "max_new_tokens"),
    (dict(seed=2**70), "seed"), (dict(seed=2**64), "seed"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
    (dict(stop=[2.5]), "stop"), (dict(stop=2.5), "stop"), (dict(stop="x", output="ids"), "stop"),
    (dict(output="json"), "output"),
])
def test_bad_generate_arguments_name_the_parameter(engine, kwargs, param):
    with pytest.raises(ParameterError) as info:
        engine.generate([1, 2], **{"max_new_tokens": 2, "temperature": 0.7, **kwargs})
    assert info.value.param == param and str(info.value).startswith(f"{param} ")
    assert len(str(info.value).splitlines()) == 1


def test_largest_seed_and_numpy_ints_are_fine(engine):
    import numpy as np

    assert len(engine.generate([1, 2], max_new_tokens=2, seed=2**64 - 1, temperature=0.7)) == 2
    assert engine.generate([np.int64(1), 2], max_new_tokens=np.int32(2), temperature=0, top_k=np.int64(3)) == \
        engine.generate([1, 2], max_new_tokens=2, temperature=0)


def test_id_prompt_with_text_output(engine):
    ids = engine.tokenizer.encode("HI").ids
    assert engine.generate(ids, max_new_tokens=6, temperature=0, output="text") == \
        engine.generate("HI", max_new_tokens=6, temperature=0)
    assert engine.generate("HI", max_new_tokens=6, temperature=0, output="ids") == \
        engine.generate(ids, max_new_tokens=6, temperature=0)


@pytest.mark.parametrize("ids", [[[1, 2**64]], [[2**63]], [[1.5]], [[1], [2, 3]]])
def test_bad_input_ids_for_prefill(engine, ids):
    with raises_param("input_ids"):
        engine.prefill(ids, engine.new_state(1))


def _converted(state, **to):
    return type(state)([t.to(**to) for t in state.conv], [t.to(**to) for t in state.ssm])


def test_state_from_another_engine_is_refused(engine, exports):
    ids = torch.tensor([[1, 2]])
    other = Engine.load(exports("mamba1"), backend="onnxruntime")
    with raises_param(r"state\.conv\[0\]", "has shape"):
        engine.prefill(ids, other.new_state(1))
    with pytest.raises(MambaDeployError, match="batch"):
        engine.decode(ids[:, :1], engine.new_state(2))
    with raises_param(r"state\.conv\[0\]", "is torch.float64, this engine needs torch.float32"):
        engine.prefill(ids, _converted(engine.new_state(1), dtype=torch.float64))
    with raises_param(r"state\.conv\[0\]", "is on meta, this engine runs on cpu"):
        engine.decode(ids[:, :1], _converted(engine.new_state(1), device="meta"))
    with raises_param("state", "must be an InferenceState"):
        engine.prefill(ids, [torch.zeros(1)])


def test_state_of_the_wrong_state_dtype(engine):
    state = engine.new_state(1)
    state.ssm[1] = state.ssm[1].half()
    with raises_param(r"state\.ssm\[1\]", "is torch.float16"):
        engine.prefill(torch.tensor([[1, 2]]), state)


def test_prompt_ids_of_any_integer_type_check_alike():
    """check_prompt_ids: plain ints take a one-pass path, numpy integers the token-by-token one; both give plain
    ints, and a bad id is named in the message either way."""
    import numpy as np

    from mamba_deploy.runtime.checks import check_prompt_ids

    for ids in ([0, 5, 9], np.array([0, 5, 9]), [np.int64(0), 5, 9], torch.tensor([0, 5, 9]).tolist()):
        checked = check_prompt_ids(ids, 10)
        assert checked == [0, 5, 9] and all(type(t) is int for t in checked)
    for bad in ([0, 10], np.array([0, 10]), [np.int64(0), 10]):
        with raises_param("prompt", r"token ids must be integers in \[0, 10\), got (np\.int64\()?10\)? \(prompt 3\)$"):
            check_prompt_ids(bad, 10, " (prompt 3)")
