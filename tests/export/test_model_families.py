"""Falcon-Mamba and Codestral-shaped Mamba-2 checkpoints (tiny, random, Hugging Face format) through export,
ONNX Runtime, the torch backend and `verify --oracle transformers`."""
import pytest
import torch
from click.testing import CliRunner
from hf_models import CODESTRAL_CASES, FALCON_CASES, save_hf_model
from test_export import OrtModel, rel

from mamba_deploy.cli import cli
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.verify import verify_export

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
CASES = list(FALCON_CASES) + CODESTRAL_CASES


@pytest.fixture(scope="module")
def family_export(tmp_path_factory):
    """family_export(name, ops) -> (export folder, the HF model it came from), built once per module."""
    cache = {}

    def get(name, ops="plugin"):
        if (name, ops) not in cache:
            root = tmp_path_factory.mktemp(name)
            hf = save_hf_model(name, root / "ckpt")
            cache[name, ops] = export_model(root / "ckpt", root / "export", ExportOptions(ops=ops), progress=False), hf
        return cache[name, ops]

    return get


@pytest.mark.parametrize("ops", ["plugin", "standard"])
@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_matches_transformers(family_export, name, ops):
    """Batch-2 prefill then decode steps in ONNX Runtime, states fed back, against HF's full-sequence logits."""
    folder, hf = family_export(name, ops)
    onnx_model = OrtModel(folder)
    ids = torch.randint(0, onnx_model.cfg.vocab_size, (2, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = hf(ids).logits
    logits, states = onnx_model.run("prefill", ids[:, :9], onnx_model.zero_states(2))
    errors = [rel(logits[:, -1], want[:, 8])]
    for t in range(9, 14):
        logits, states = onnx_model.run("decode", ids[:, t:t + 1], states)
        errors.append(rel(logits[:, -1], want[:, t]))
    assert max(errors) <= 1e-5, errors


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("name", CASES)
def test_verify_oracle_transformers_passes(family_export, name, backend):
    folder, _ = family_export(name)
    report = verify_export(folder, backend=backend, oracle="transformers", steps=4)
    assert report.passed and report.greedy_identical, report.to_dict()
    assert report.max_rel_err <= 1e-5


def test_verify_cli_on_falcon_mamba(family_export):
    folder, _ = family_export("fm-d8-r5-untied")
    result = CliRunner().invoke(cli, ["verify", str(folder), "--steps", "2", "--oracle", "transformers",
                                      "--backend", "onnxruntime"])
    assert result.exit_code == 0 and "PASS" in result.stdout, result.output


def test_export_configs(family_export):
    """The exported config says what each family is: Falcon-Mamba's norm eps; Codestral's 8 groups, d_state 128,
    headdim 64, untied head."""
    for name, kwargs in FALCON_CASES.items():
        cfg = OrtModel(family_export(name)[0]).cfg
        assert (cfg.arch, cfg.mixer_rms_eps, cfg.tie_embeddings) == ("mamba1", kwargs["mixer_rms_eps"],
                                                                     kwargs["tie_word_embeddings"])
    for name in CODESTRAL_CASES:
        cfg = OrtModel(family_export(name)[0]).cfg
        assert (cfg.arch, cfg.ngroups, cfg.d_state, cfg.headdim, cfg.tie_embeddings, cfg.mixer_rms_eps) == \
            ("mamba2", 8, 128, 64, False, None)
