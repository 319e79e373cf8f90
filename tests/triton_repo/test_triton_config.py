"""Every config.pbtxt parses into Triton's ModelConfig protobuf (tritonclient's model_config_pb2) and obeys the
rules Triton and its backends apply when they load a model (triton_checks.load_problems), checked against the
model's own I/O."""
import onnx
import pytest
from triton_checks import load_problems, type_name

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.triton_repo import TritonOptions, write_triton_repository
from mamba_deploy.triton_repo.model_config import Enum, to_pbtxt

FAMILIES = [("mamba1", {}), ("mamba2", {"dtype": "float16"})]
pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")


def repo_model(repo, name):
    return onnx.load(str(repo / name / "1" / "model.onnx"), load_external_data=False)


@pytest.mark.parametrize("arch,export_options", FAMILIES)
def test_onnxruntime_config_parses_and_matches_the_model(own_exports, parse_config, tmp_path, arch, export_options):
    folder = own_exports(arch, **export_options)
    options = TritonOptions(name="m", max_batch=4, instances=3, device="gpu", idle_timeout=2.5)
    write_triton_repository(folder, tmp_path / "repo", options, progress=False)
    config = parse_config(tmp_path / "repo" / "m" / "config.pbtxt")
    assert (config.name, config.backend, config.platform, config.max_batch_size) == ("m", "onnxruntime", "", 4)
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, config.instance_group[0].KIND_GPU)]
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "direct"
    assert batching.max_sequence_idle_microseconds == 2_500_000
    kinds = {c.name: c.control[0].DESCRIPTOR.fields_by_name["kind"].enum_type.values_by_number[c.control[0].kind].name
             for c in batching.control_input}
    assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                     "READY": "CONTROL_SEQUENCE_READY"}
    assert all(list(c.control[0].int32_false_true) == [0, 1] for c in batching.control_input)
    n_layer = len(batching.state) // 2
    assert n_layer == 2 and [s.input_name for s in batching.state][:2] == ["STATE_IN_conv_000", "STATE_IN_ssm_000"]
    assert load_problems(config, repo_model(tmp_path / "repo", "m")) == []


def test_defaults_and_logits_all(own_exports, parse_config, tmp_path):
    """Default name (the export folder's), batch 8, one CPU instance; `--logits all` exports give one logits
    row per input token (dims [-1, vocab])."""
    folder = own_exports("mamba1", logits="all")
    result = write_triton_repository(folder, tmp_path / "repo", progress=False)
    config = parse_config(tmp_path / "repo" / result.model / "config.pbtxt")
    assert result.model == folder.name == config.name
    assert config.max_batch_size == 8 and config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert list(config.output[0].dims) == [-1, 104]
    assert load_problems(config, repo_model(tmp_path / "repo", result.model)) == []


def test_the_load_checks_catch_a_config_that_does_not_match(own_exports, parse_config, tmp_path):
    """The checks above can fail: a state with the wrong dims, and a model without the control inputs."""
    write_triton_repository(own_exports("mamba1"), tmp_path / "repo", TritonOptions(name="m"), progress=False)
    config = parse_config(tmp_path / "repo" / "m" / "config.pbtxt")
    model = repo_model(tmp_path / "repo", "m")
    config.sequence_batching.state[1].dims[0] += 1
    assert any("STATE_IN_ssm_000" in p for p in load_problems(config, model))
    config = parse_config(tmp_path / "repo" / "m" / "config.pbtxt")
    exported = onnx.load(str(own_exports("mamba1") / "prefill.onnx"), load_external_data=False)
    assert any("inputs, model provides" in p for p in load_problems(config, exported))


def test_to_pbtxt_round_trips_through_the_protobuf_parser(parse_config, tmp_path):
    message = {"name": 'a "quoted" \\ name', "max_batch_size": 2,
               "input": [{"name": "x", "data_type": Enum("TYPE_FP16"), "dims": [-1, 3]}],
               "sequence_batching": {"oldest": {}, "state": [
                   {"input_name": "i", "output_name": "o", "initial_state": [{"zero_data": True, "name": "z"}]}]}}
    (tmp_path / "config.pbtxt").write_text(to_pbtxt(message))
    config = parse_config(tmp_path / "config.pbtxt")
    assert config.name == 'a "quoted" \\ name' and config.max_batch_size == 2
    assert list(config.input[0].dims) == [-1, 3] and type_name(config, config.input[0].data_type) == "TYPE_FP16"
    assert config.sequence_batching.WhichOneof("strategy_choice") == "oldest"
    assert config.sequence_batching.state[0].initial_state[0].zero_data
    with pytest.raises(TypeError):
        to_pbtxt({"name": "é"})


def test_bfloat16_exports_are_refused_for_onnxruntime(exports, tmp_path):
    with pytest.raises(MambaDeployError, match="bfloat16"):
        write_triton_repository(exports("mamba2", dtype="bfloat16"), tmp_path / "repo", progress=False)
    assert not (tmp_path / "repo").exists()
