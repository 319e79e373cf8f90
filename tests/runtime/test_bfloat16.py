"""bfloat16 exports: "auto" picks a backend that runs them, the torch backend's error is the export's own,
and `mamba-deploy verify` passes on the torch backend (tiny models and the demo model)."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mamba_deploy import load_reference
from mamba_deploy.cli import cli
from mamba_deploy.export.artifact import load_export
from mamba_deploy.runtime import Engine
from mamba_deploy.runtime import backend as backend_module
from mamba_deploy.runtime.backends.torch import load_reference_from_export
from numerics import rel_err

DEMO = Path(__file__).resolve().parents[2] / "examples" / "models" / "mamba-tiny-pydoc"


def test_auto_runs_bfloat16_exports_on_torch(exports, monkeypatch):
    """Where no GPU backend is available: a CPU host, or a GPU host with them switched off here."""
    probe = backend_module._probe
    monkeypatch.setattr(backend_module, "_probe", lambda name, info: name not in ("tensorrt", "native") and
                        probe(name, info))
    engine = Engine.load(exports("mamba2", dtype="bfloat16"))
    assert engine.backend.name == "torch"
    assert len(engine.generate([5, 6, 7], max_new_tokens=3, temperature=0)) == 3
    assert Engine.load(exports("mamba2", dtype="float16")).backend.name == "onnxruntime"


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_torch_backend_bfloat16_error_is_the_weights_own(exports, arch):
    """Against the float32 source, the torch backend on a bf16 export errs no more than a float32 model
    holding the export's bf16-rounded weights (+25%: the bf16 conv state and logits); computing in bf16
    made it 1.5-1.6x that."""
    folder = exports(arch, dtype="bfloat16")
    info = load_export(folder)
    engine = Engine.load(folder, backend="torch")
    source, rounded = load_reference(info.meta["source"], torch.float32), load_reference_from_export(info)
    ids = torch.randint(0, 100, (2, 14), generator=torch.Generator().manual_seed(4))
    runs = [(m, m.new_state(2)) for m in (engine, source, rounded.float())]
    outs = [[m.prefill(ids[:, :10], s)] for m, s in runs]
    for t in range(10, 14):
        for (m, s), out in zip(runs, outs):
            out.append(m.decode(ids[:, t:t + 1], s))
    got, want, floor = (torch.cat(o, dim=1) for o in outs)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) <= 1.25 * rel_err(floor, want)


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_verify_bfloat16_export_on_torch_passes(exports, tmp_path, model):
    if model == "tiny":
        folder = exports("mamba2", dtype="bfloat16")
    else:
        folder = tmp_path / "demo-bf16"
        result = CliRunner().invoke(cli, ["export", str(DEMO), "-o", str(folder), "--dtype", "bfloat16", "-q"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["verify", str(folder), "--backend", "torch", "--steps", "4", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["passed"], result.output
    assert report["max_rel_err"] <= 1.5e-2  # the export's own bf16 weights, not bf16 arithmetic (~1.8e-2)
