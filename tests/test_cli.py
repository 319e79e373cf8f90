"""The command line: happy paths, and every bad input gives one `error:` line, exit 1, no partial output."""
import json
import os
import shutil
import subprocess
import sys

import click
import pytest
from byte_tokenizer import write_byte_tokenizer
from click.testing import CliRunner

from mamba_deploy.cli import cli
from mamba_deploy.export.testing import tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint("mamba1", tmp_path_factory.mktemp("cli") / "ckpt")


@pytest.fixture(scope="module")
def exported(ckpt):
    out = ckpt.parent / "out"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output


def test_export_run_verify_inspect(exported):
    result = invoke("run", exported, "--ids", "1,2,3", "--max-new-tokens", "4", "--temperature", "0", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["ids"]) == 4
    result = invoke("verify", exported, "--steps", "2", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["passed"]
    result = invoke("verify", exported, "--steps", "1", "--oracle", "transformers", "--backend", "torch")
    assert result.exit_code == 0 and "PASS" in result.stdout
    result = invoke("inspect", exported)
    assert result.exit_code == 0 and "past_ssm_state.0" in result.stdout and "MambaSelectiveScan" in result.stdout


def test_verify_fails_against_another_model(exported, tmp_path):
    other = tiny_checkpoint("mamba1", tmp_path / "other", seed=1)
    result = invoke("verify", exported, "--reference", other, "--steps", "1")
    assert result.exit_code == 1 and "FAIL" in result.stdout


def _corrupt_config(folder):
    (folder / "config.json").write_text("{not json")


def _truncate_weights(folder):
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


def _drop_weights(folder):
    (folder / "pytorch_model.bin").unlink()


def _unknown_type(folder):
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))


@pytest.mark.parametrize("damage", [_corrupt_config, _truncate_weights, _drop_weights, _unknown_type])
def test_export_bad_checkpoint(tmp_path, damage):
    ckpt = tiny_checkpoint("mamba1", tmp_path / "ckpt")
    damage(ckpt)
    result = invoke("export", ckpt, "-o", tmp_path / "out", "-q")
    assert_one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no output, no temp folder


def test_export_missing_path_and_existing_output(tmp_path, exported):
    assert_one_line_error(invoke("export", tmp_path / "nope", "-o", tmp_path / "out"))
    before = sorted(p.name for p in exported.iterdir())
    assert_one_line_error(invoke("export", exported.parent / "ckpt", "-o", exported))
    assert sorted(p.name for p in exported.iterdir()) == before


def test_newer_format_version_and_non_export_folders(tmp_path, exported, ckpt):
    newer = tmp_path / "newer"
    newer.mkdir()
    config = json.loads((exported / "config.json").read_text())
    config["export"]["format_version"] = 99
    (newer / "config.json").write_text(json.dumps(config))
    for command in ("run", "verify", "inspect"):
        args = [command, newer] + (["--ids", "1"] if command == "run" else [])
        result = invoke(*args)
        assert_one_line_error(result)
    assert "newer" in invoke("inspect", newer).stderr
    assert_one_line_error(invoke("inspect", ckpt))  # a checkpoint, not an export
    assert_one_line_error(invoke("run", tmp_path / "missing", "--ids", "1"))


def test_bad_usage_is_one_line(exported):
    assert_one_line_error(invoke("run", exported))  # neither --prompt nor --ids
    assert_one_line_error(invoke("run", exported, "--prompt", "x"))  # no tokenizer in this export
    assert_one_line_error(invoke("run", exported, "--ids", "1,x"))
    assert_one_line_error(invoke("run", exported, "--ids", "1", "--top-p", "0"))
    assert_one_line_error(invoke("export", "a", "-o", "b", "--dtype", "int8"))
    assert_one_line_error(invoke("run", exported, "--ids", "1", "--backend", "nope"))


def test_force_overwrites(exported, tmp_path):
    out = tmp_path / "copy"
    assert invoke("export", exported.parent / "ckpt", "-o", out, "-q", "--ops", "standard").exit_code == 0
    result = invoke("export", exported.parent / "ckpt", "-o", out, "-q", "--force", "--logits", "all")
    assert result.exit_code == 0
    assert json.loads((out / "config.json").read_text())["export"]["logits"] == "all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_export_draws_no_progress_bar_off_a_terminal(exported, tmp_path):
    """Without -q the progress bar is drawn on a terminal only: piped or logged, the output is the one result line
    (tqdm's carriage-return frames filled logs before)."""
    out = tmp_path / "piped"
    result = invoke("export", exported.parent / "ckpt", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"exported {exported.parent / 'ckpt'} to {out}"]
    assert "\r" not in result.stderr and "export:" not in result.stderr  # (a warning line may be there)


def test_console_script_subprocess(tmp_path):
    """The installed `mamba-deploy` script when there is one, else the same entry point through python -c."""
    script = shutil.which("mamba-deploy")
    command = [script] if script else [sys.executable, "-c", "from mamba_deploy.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([*command, "inspect", str(tmp_path / "nope")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such folder"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU errors")
@pytest.mark.parametrize("args,message", [
    (["build", "{exp}", "--backend", "native"], "native backend unavailable"),
    (["build", "{exp}", "--backend", "tensorrt"], "TensorRT"),
    (["bench", "--random-init", "mamba-1.4b"], "native backend is unavailable"),
    (["bench"], "give an export folder or --random-init"),
    (["bench", "--random-init", "mamba-9b"], "unknown model"),
    (["bench", "{exp}", "--batch", "1,x"], "comma-separated integers"),
])
def test_build_and_bench_errors_without_gpu(exported, args, message):
    result = invoke(*[a.format(exp=exported) for a in args])
    assert_one_line_error(result)
    assert message in result.output


def test_developer_bench_errors_are_one_line(monkeypatch):
    """`python3 -m mamba_deploy.bench` (the developer benchmark): no native engine here, or neither a folder nor
    --random-init, exits 1 with one line on stderr (sys.exit(message)), as `mamba-deploy bench` does."""
    from mamba_deploy import bench
    from mamba_deploy.native import loading

    monkeypatch.setattr(loading, "unavailable_reason", lambda: "no CUDA GPU visible to torch")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--random-init", "mamba-1.4b"])
    assert exc.value.code == "error: native backend unavailable: no CUDA GPU visible to torch"
    monkeypatch.setattr(loading, "unavailable_reason", lambda: None)
    with pytest.raises(SystemExit) as exc:
        bench.main([])
    assert exc.value.code == "error: give either a folder or random_init"


def test_developer_bench_passes_the_engine_options(monkeypatch):
    """The engine switches given to `python3 -m mamba_deploy.bench` reach bench() by NativeEngine's names; the
    others are left to the engine."""
    from mamba_deploy import bench
    from mamba_deploy.native import loading

    seen = {}
    monkeypatch.setattr(loading, "unavailable_reason", lambda: None)
    monkeypatch.setattr(bench, "bench", lambda *a, **k: seen.update(k))
    bench.main(["--random-init", "mamba-1.4b", "--step-dt-tc", "--fold-gated-norm", "--prefill-split", "3",
                "--wgmma-min-batch", "3"])
    assert seen["engine_options"] == {"step_dt_tc": True, "fold_gated_norm": True, "prefill_split": 3,
                                      "wgmma_min_batch": 3}
    bench.main(["--random-init", "mamba-1.4b", "--prefill-graph-tokens", "0", "--tc-max-batch", "8", "--tf32",
                "--persistent-decode"])
    assert seen["engine_options"] == {"prefill_graph_tokens": 0, "tc_max_batch": 8, "tf32": True,
                                      "persistent_decode": True}


def test_bench_table_says_whether_the_prefill_was_split():
    """The table's head names the parts of a split prefill (the default depends on max_batch), nothing when whole."""
    from mamba_deploy.bench import format_table

    row = dict(model="m", batch=1, decode_ms=1.0, tok_s=1000.0, gbps=1.0, floor_ms=0.5, prefill_ms=16.2,
               prefill_len=2048, weight_gb=2.75, mamba_ssm_ms=None, peak_gib=4.4)
    assert "prefill 2048 tokens (split in 2 parts): 16.20 ms" in format_table([{**row, "prefill_parts": 2}], "G",
                                                                              "float16", "float32")
    whole = format_table([{**row, "prefill_parts": 1}], "G", "float16", "float32")
    assert "prefill 2048 tokens: 16.20 ms" in whole and "split" not in whole


@pytest.fixture(scope="module")
def with_tokenizer(exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "export"
    shutil.copytree(exported, folder)
    write_byte_tokenizer(folder)
    return folder


@pytest.mark.parametrize("args,message", [
    (["--seed", str(2**70)], "--seed must be an integer in [0, 2**64)"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**64)"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be an integer >= 0"),
    (["--top-p", "0"], "--top-p must be a number in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be an integer >= 0"),
    (["--repetition-penalty", "nan"], "--repetition-penalty must be a number > 0"),
    (["--stop", "xy"], "--stop strings need text output"),
])
def test_run_errors_name_the_flag(exported, args, message):
    result = invoke("run", exported, "--ids", "1,2", *args)
    assert_one_line_error(result)
    assert result.stderr.startswith(f"error: {message}"), result.stderr


@pytest.mark.parametrize("ids", [f"1,{2**64}", "1,104", "1,-3", ",", "1,2.5"])
def test_run_bad_ids_name_ids(exported, ids):
    result = invoke("run", exported, "--ids", ids, "--max-new-tokens", "1")
    assert_one_line_error(result)
    assert result.stderr.startswith("error: --ids "), result.stderr


def test_export_errors_name_the_flag(ckpt, tmp_path):
    result = invoke("export", ckpt, "-o", tmp_path / "out", "--opset", "5", "-q")
    assert_one_line_error(result)
    assert result.stderr.startswith("error: --opset must be between"), result.stderr


def test_no_tokenizer_error_mentions_ids(exported):
    result = invoke("run", exported, "--prompt", "hello")
    assert_one_line_error(result)
    assert "--ids" in result.stderr and "no tokenizer" in result.stderr


def test_run_ids_prints_text_when_there_is_a_tokenizer(with_tokenizer):
    args = ["run", with_tokenizer, "--ids", "72,73", "--max-new-tokens", "5", "--temperature", "0"]
    ids = json.loads(invoke(*args, "--json", "--print-ids").stdout)["ids"]
    text = json.loads(invoke(*args, "--json").stdout)["text"]
    prompted = json.loads(invoke("run", with_tokenizer, "--prompt", "HI", *args[4:], "--json").stdout)["text"]
    assert len(ids) == 5 and isinstance(text, str) and text == prompted
    assert invoke(*args).stdout == text + "\n"
    assert invoke(*args, "--print-ids").stdout == "".join(f"{i} " for i in ids) + "\n"


def test_backend_choices_are_the_registry_names(exported):
    from mamba_deploy.runtime.backend import backend_names

    for command in ("run", "verify"):
        option = next(p for p in cli.commands[command].params if p.name == "backend")
        assert list(option.type.choices) == backend_names()
        assert "[auto|onnxruntime|torch|native|tensorrt]" in invoke(command, "--help").stdout
    result = invoke("run", exported, "--ids", "1", "--backend", "nope")
    assert_one_line_error(result)
    assert "'nope' is not one of 'auto', 'onnxruntime'" in result.stderr


def test_every_option_has_help():
    missing = [f"{name} {p.opts[0]}" for name, command in cli.commands.items() for p in command.params
               if isinstance(p, click.Option) and not p.help]
    assert missing == []


@pytest.mark.parametrize("given,meant", [("\\n", "\n"), ("a\\tb\\r", "a\tb\r"), ("\\\\n", "\\n"), ("\\x", "\\x"),
                                         ("END", "END"), ("42", 42), ("-1", "-1")])
def test_stop_reads_escapes_and_token_ids(given, meant):
    from mamba_deploy.cli import parse_stop

    assert parse_stop(given) == meant


def test_run_passes_escaped_stops_to_generate(exported, monkeypatch):
    """`--stop "\\n"` on the command line is a backslash and an n; generate gets the newline it means."""
    from mamba_deploy.runtime import Engine

    seen = {}

    def generate(self, source, stream=False, **kwargs):
        seen.update(kwargs)
        return iter([1])

    monkeypatch.setattr(Engine, "generate", generate)
    result = invoke("run", exported, "--ids", "1", "--stop", "\\n", "--stop", "7", "--json")
    assert result.exit_code == 0, result.output
    assert seen["stop"] == ["\n", 7]


@pytest.mark.parametrize("signal_exc,message,code", [(KeyboardInterrupt, "interrupted", 130),
                                                     ("terminated", "terminated", 143)])
def test_a_signal_wrapped_in_another_error_still_exits_as_the_signal(capsys, signal_exc, message, code):
    """A signal that lands inside code turning it into another exception (a dataclass's __set_name__ during an
    import, seen once in CI) is still an interruption: one line and its exit status, not a traceback."""
    from mamba_deploy.cli import MambaDeployGroup, Terminated

    cause = Terminated() if signal_exc == "terminated" else signal_exc()
    group = MambaDeployGroup()

    @group.command()
    def run():
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("Error calling __set_name__") from exc

    with pytest.raises(SystemExit) as exit_info:
        group.main(["run"], prog_name="mamba-deploy")
    assert exit_info.value.code == code
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_an_error_with_no_signal_behind_it_is_not_hidden():
    from mamba_deploy.cli import MambaDeployGroup

    group = MambaDeployGroup()

    @group.command()
    def run():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        group.main(["run"], prog_name="mamba-deploy")
