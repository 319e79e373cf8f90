"""The reference LM equals Hugging Face transformers' Mamba/Mamba2 on random tiny checkpoints."""
import pytest
import torch

from hf_models import FALCON_CASES, MAMBA1_CASES, MAMBA2_CASES, make_hf_model, save_hf_model
from mamba_deploy import load_reference


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("name", list(MAMBA1_CASES) + list(FALCON_CASES) + list(MAMBA2_CASES))
def test_logits_match_transformers(name, tmp_path):
    hf = save_hf_model(name, tmp_path / name)
    ours = load_reference(tmp_path / name)
    ids = torch.randint(0, ours.config.vocab_size, (3, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
    got = ours(ids)
    err = rel_err(got, expected)
    print(f"{name}: rel err {err:.2e}, max abs {(got - expected).abs().max().item():.2e}")
    assert got.shape == expected.shape
    assert err <= 1e-5


@pytest.mark.parametrize("name", ["m1-d8-k4-untied", "fm-d6-k3-bias-tied-eps", "m2-g2-p8-k3-bias-tied"])
def test_decode_matches_transformers_generate(name, tmp_path):
    """Greedy tokens through our prefill + decode equal HF's full-sequence argmax chain."""
    hf = save_hf_model(name, tmp_path / name)
    ours = load_reference(tmp_path / name)
    ids = torch.randint(0, ours.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    state = ours.new_state(2)
    logits = ours.prefill(ids, state)
    seq = ids
    for _ in range(6):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        logits = ours.decode(nxt, state)
        with torch.no_grad():
            expected = hf(seq).logits[:, -1:]
        assert rel_err(logits, expected) <= 1e-5


@pytest.mark.parametrize("name", ["m1-d8-k4-untied", "fm-d8-r5-untied", "m2-g1-p16"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_worse_than_transformers(name, dtype, tmp_path):
    """Against float32 HF logits, our fp16/bf16 model errs no more than HF's own fp16/bf16 model (+10%)."""
    hf = save_hf_model(name, tmp_path / name)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(ids).logits
        hf_half = hf.to(dtype)(ids).logits
    ours = load_reference(tmp_path / name, dtype=dtype)(ids)
    ours_err, hf_err = rel_err(ours, expected), rel_err(hf_half, expected)
    print(f"{name} {dtype}: ours {ours_err:.2e}, transformers {hf_err:.2e}")
    assert ours_err <= max(1e-2, 1.1 * hf_err)


def test_falcon_norms_change_the_model():
    """Falcon-Mamba's dt/B/C norms matter on these weights (so the 1e-5 agreements above test them): the same
    weights as a plain HF Mamba model give other logits."""
    from transformers import MambaConfig, MambaForCausalLM

    falcon = make_hf_model("fm-d8-r5-untied")
    plain = MambaForCausalLM(MambaConfig(**{k: v for k, v in FALCON_CASES["fm-d8-r5-untied"].items()
                                            if k != "mixer_rms_eps"}))
    plain.load_state_dict(falcon.state_dict())
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(plain(ids).logits, falcon(ids).logits) > 1e-2


def test_random_falcon_checkpoint_is_one_transformers_loads(tmp_path):
    """random_init's Hugging Face writer (the native tests' checkpoints, the falcon-mamba-7b preset) gives a
    folder transformers' FalconMambaForCausalLM.from_pretrained reads as the same model."""
    from transformers import FalconMambaForCausalLM

    from mamba_deploy.random_init import make_random_checkpoint

    config = {"model_type": "falcon_mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 90,
              "state_size": 16, "time_step_rank": 20, "expand": 2, "mixer_rms_eps": 1e-6, "tie_word_embeddings": False}
    folder = make_random_checkpoint(config, tmp_path / "falcon", fmt="hf", dtype=torch.float32, seed=3)
    hf = FalconMambaForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 90, (2, 11), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(load_reference(folder)(ids), hf(ids).logits) <= 1e-5
