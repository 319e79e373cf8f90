"""Codestral-shaped Mamba-2 (8 groups of one head, d_state 128, headdim 64, untied head) against mamba-ssm itself on
the GPU: its MambaLMHeadModel on the same checkpoint (its Triton SSD kernels and torch conv: no compiled extension is
needed), against our reference model and the native engine (prefill, then one decode step per position); and the
reference of a d_ssm < d_inner Mamba-2 (a gated MLP beside the SSM) against mamba-ssm's.

Runs only where `mamba_ssm` is importable: on the GPU machine with the anchors' source on PYTHONPATH
(docs/performance.md, "mamba-ssm as an oracle"). mamba-ssm's SSD runs its matrix products in TF32 (about 3e-3
relative error on its own), hence the 1e-2 bar against it; our fp32 paths stay within 1e-4 of each other."""
import json

import pytest
import torch

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.random_init import make_random_checkpoint
from numerics import rel_err

pytestmark = pytest.mark.gpu
CODESTRAL = {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 16, "tie_embeddings": False,
             "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 8, "chunk_size": 64}}
# d_ssm < expand * d_model: the SSM on 256 of the 512 channels, a gated MLP on the rest (the native engine refuses it)
D_SSM = {**CODESTRAL, "ssm_cfg": {**CODESTRAL["ssm_cfg"], "ngroups": 2, "d_state": 64, "d_ssm": 256}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(CODESTRAL, tmp_path_factory.mktemp("codestral") / "ckpt", dtype=torch.float32,
                                  seed=11)


def test_d_ssm_reference_matches_mamba_ssm(tmp_path):
    folder = make_random_checkpoint(D_SSM, tmp_path / "ckpt", dtype=torch.float32, seed=12)
    model = _mamba_ssm_model(folder)
    ids = torch.randint(1, 1000, (2, 80), generator=torch.Generator().manual_seed(4)).cuda()
    with torch.no_grad():
        want = model(ids).logits.float()
    ref = load_reference(folder, torch.float32, "cuda")
    assert ref.config.mamba2_mlp_dim == 256
    assert rel_err(ref(ids), want) < 1e-2


def _mamba_ssm_model(checkpoint):
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed (an optional oracle)")
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["ssm_cfg"] = {**cfg["ssm_cfg"], "use_mem_eff_path": False}  # its fused path needs causal-conv1d's extension
    fields = {k: v for k, v in cfg.items() if k in MambaConfig.__dataclass_fields__}
    model = MambaLMHeadModel(MambaConfig(**fields), device="cuda", dtype=torch.float32).eval()
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    model.load_state_dict(state, strict=True)  # our checkpoints use mamba-ssm's names
    return model


def test_reference_and_native_match_mamba_ssm(native, checkpoint):
    model = _mamba_ssm_model(checkpoint)
    ids = torch.randint(1, 1000, (2, 96), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        want = model(ids).logits.float()
    ref = load_reference(checkpoint, torch.float32, "cuda")
    ours = ref(ids)
    assert rel_err(ours, want) < 1e-2
    eng = native.load_engine(checkpoint, dtype=torch.float32, max_batch=2)
    state = eng.new_state(2)
    got = [eng.prefill(ids[:, :64], state, all_logits=True)]
    got += [eng.decode(ids[:, t:t + 1], state).clone() for t in range(64, 96)]
    got = torch.cat(got, dim=1)
    assert rel_err(got, want) < 1e-2
    assert rel_err(got, ours) < 1e-4
