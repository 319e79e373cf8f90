"""Fixtures of the native-engine tests: the kernel library, tiny random checkpoints of each model family."""
import pytest
import torch
from numerics import rel_err as _shared_rel_err

from mamba_deploy.random_init import make_random_checkpoint

# Small but not degenerate: fp16 rounding accumulates over several layers and a 1k vocabulary.
CONFIGS = {
    "mamba1": {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 8,
               "ssm_cfg": {"d_state": 16}, "tie_embeddings": True},
    "mamba2": {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 2, "chunk_size": 16},
               "tie_embeddings": False},
    # Falcon-Mamba (Hugging Face format: mamba-ssm has none): Mamba1 + dt/B/C norms, odd dt_rank, untied head
    "falcon_mamba": {"model_type": "falcon_mamba", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
                     "state_size": 16, "time_step_rank": 20, "expand": 2, "conv_kernel": 4, "mixer_rms_eps": 1e-6,
                     "tie_word_embeddings": False},
    # Codestral Mamba's structure: 8 groups (one head each), d_state 128, headdim 64, untied head
    "codestral": {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
                  "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 8, "chunk_size": 16},
                  "tie_embeddings": False},
    # mamba-ssm's gated MLP after each mixer (d_intermediate 300 -> 384, 200 -> 256), LayerNorm in one
    "mamba1_mlp": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 8,
                   "d_intermediate": 300, "ssm_cfg": {"d_state": 16}, "tie_embeddings": False},
    "mamba2_mlp": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
                   "d_intermediate": 200, "rms_norm": False,
                   "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "headdim": 32, "ngroups": 2, "chunk_size": 16}},
}


@pytest.fixture(scope="session")
def native():
    from mamba_deploy import native as mod

    reason = mod.unavailable_reason()
    if reason:
        pytest.fail(f"native engine unavailable: {reason}")
    return mod


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("native_ckpt")
    return {arch: make_random_checkpoint(cfg, root / arch, fmt="hf" if "model_type" in cfg else "mamba_ssm",
                                         dtype=torch.float32, seed=3) for arch, cfg in CONFIGS.items()}


@pytest.fixture(scope="session")
def rel_err():
    """||out - ref|| / ||ref|| in float64."""
    return _shared_rel_err
