"""Against mamba-ssm itself on the GPU: its MambaLMHeadModel on the same checkpoint (its Triton SSD kernels, torch
conv and SDPA: no compiled extension is needed), against our reference model and the native engine (prefill, then
one decode step per position), for a Codestral-shaped Mamba-2 (8 groups of one head, d_state 128, headdim 64,
untied head), a d_ssm < d_inner Mamba-2 (a gated MLP beside the SSM) and a hybrid (Mamba-2 + grouped-query MHA with
its q k v conv and in-projection MLP, the gated MLP after every mixer; no rotary: mamba-ssm's needs flash-attn).

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
# d_ssm < expand * d_model: the SSM on 256 of the 512 channels, a gated MLP on the rest
D_SSM = {**CODESTRAL, "ssm_cfg": {**CODESTRAL["ssm_cfg"], "ngroups": 2, "d_state": 64, "d_ssm": 256}}
HYBRID = {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 16, "d_intermediate": 160,
          "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 2, "chunk_size": 64},
          "attn_layer_idx": [1, 3], "tie_embeddings": False,
          "attn_cfg": {"causal": True, "num_heads": 8, "num_heads_kv": 2, "head_dim": 40, "mlp_dim": 96,
                       "out_proj_bias": False, "d_conv": 4}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(CODESTRAL, tmp_path_factory.mktemp("codestral") / "ckpt", dtype=torch.float32,
                                  seed=11)


@pytest.mark.parametrize("name,config", [("d_ssm", D_SSM), ("hybrid", HYBRID)])
def test_reference_and_native_match_mamba_ssm_variants(native, tmp_path, name, config):
    folder = make_random_checkpoint(config, tmp_path / name, dtype=torch.float32, seed=12)
    model = _mamba_ssm_model(folder)
    ids = torch.randint(1, 1000, (2, 80), generator=torch.Generator().manual_seed(4)).cuda()
    with torch.no_grad():
        want = model(ids).logits.float()
    ref = load_reference(folder, torch.float32, "cuda")
    assert (ref.config.mamba2_mlp_dim, ref.config.attn_layer_idx) == ((256, ()) if name == "d_ssm" else (0, (1, 3)))
    ours = ref(ids)
    assert rel_err(ours, want) < 1e-2
    got = _native_logits(native, folder, ids, 64)
    assert rel_err(got, want) < 1e-2
    assert rel_err(got, ours) < 1e-4


def _native_logits(native, checkpoint, ids, prompt_len):
    """The native engine's float32 logits of every position: prefill ids[:, :prompt_len], then a step per token."""
    eng = native.load_engine(checkpoint, dtype=torch.float32, max_batch=ids.shape[0])
    state = eng.new_state(ids.shape[0])
    got = [eng.prefill(ids[:, :prompt_len], state, all_logits=True)]
    got += [eng.decode(ids[:, t:t + 1], state).clone() for t in range(prompt_len, ids.shape[1])]
    return torch.cat(got, dim=1)


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
    got = _native_logits(native, checkpoint, ids, 64)
    assert rel_err(got, want) < 1e-2
    assert rel_err(got, ours) < 1e-4
