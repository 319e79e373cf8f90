"""mamba-ssm configs with d_intermediate > 0 (a gated MLP after each mixer, mamba-ssm's Block + GatedMLP): the
reference LM against an oracle built here from transformers' own Mamba / Mamba2 mixers and norms, wired as
mamba-ssm's Block and GatedMLP are written (mamba_ssm/modules/block.py, mlp.py: residual add -> norm -> mixer ->
residual add -> norm2 -> fc2(y * silu(gate)), y, gate = fc1 halves)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hf_models import MLP_CONFIGS, mlp_checkpoint

from mamba_deploy import load_reference
from mamba_deploy.config_hf import to_hf_config


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _oracle_logits(model, ids):
    """transformers' mixers and RMS norms holding `model`'s weights, in mamba-ssm's Block order, plus the MLP."""
    import transformers

    cfg = model.config
    hf_cfg = to_hf_config(dataclasses.replace(cfg, d_intermediate=0))
    cls = hf_cfg.pop("architectures")[0]
    hf = getattr(transformers, cls)(getattr(transformers, cls.replace("ForCausalLM", "Config"))(**hf_cfg)).eval()
    state = model.state_dict()
    hf.load_state_dict({k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()
                        if ".norm2." not in k and ".mlp." not in k}, strict=False)
    hidden, residual = hf.backbone.embeddings(ids), None
    for i, block in enumerate(hf.backbone.layers):
        p = f"backbone.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        hidden = block.mixer(block.norm(residual))
        residual = hidden + residual
        normed = F.rms_norm(residual, (cfg.d_model,), state[p + "norm2.weight"], cfg.norm_eps)
        y, gate = F.linear(normed, state[p + "mlp.fc1.weight"]).chunk(2, dim=-1)
        hidden = F.linear(y * F.silu(gate), state[p + "mlp.fc2.weight"])
    return hf.lm_head(hf.backbone.norm_f(hidden + residual))


@pytest.mark.parametrize("name", ["m1-mlp100", "m2-mlp200-g2"])
def test_reference_matches_transformers_mixers_in_mamba_ssm_blocks(name, tmp_path):
    model = load_reference(mlp_checkpoint(name, tmp_path / name))
    assert model.config.d_intermediate == -(-MLP_CONFIGS[name]["d_intermediate"] // 128) * 128
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = _oracle_logits(model, ids), model(ids)
    assert _rel(got, want) <= 1e-5
    with torch.no_grad():  # the MLPs matter: the same model with them zeroed is far off
        for layer in model.backbone.layers:
            layer.mlp.fc2.weight.zero_()
        assert _rel(model(ids), want) > 1e-2


@pytest.mark.parametrize("name", list(MLP_CONFIGS))
def test_prefill_then_decode_equals_full_forward(name, tmp_path):
    model = load_reference(mlp_checkpoint(name, tmp_path / name))
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    state = model.new_state(2)
    steps = [model.prefill(ids[:, :7], state)] + [model.decode(ids[:, t:t + 1], state) for t in range(7, 12)]
    with torch.no_grad():
        full = model(ids)
    for t, logits in zip(range(6, 12), steps):
        assert _rel(logits[:, 0], full[:, t]) <= 1e-5
