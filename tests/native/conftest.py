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
    # mamba-ssm's Mamba2 with d_ssm < expand * d_model: the SSM on 256 channels, a gated MLP on the other 256
    "mamba2_d_ssm": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
                     "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 1, "chunk_size": 16,
                                 "d_ssm": 256}, "tie_embeddings": False},
    # mamba-ssm's gated MLP after each mixer (d_intermediate 300 -> 384, 200 -> 256), LayerNorm in one
    "mamba1_mlp": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 8,
                   "d_intermediate": 300, "ssm_cfg": {"d_state": 16}, "tie_embeddings": False},
    "mamba2_mlp": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
                   "d_intermediate": 200, "rms_norm": False,
                   "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "headdim": 32, "ngroups": 2, "chunk_size": 16}},
    # mamba-ssm hybrids: Mamba2 + grouped-query MHA (rotary on half the head, a q k v conv, the in-projection
    # MLP) and the gated MLP after every mixer; Mamba1 + plain MHA with biases and its own softmax scale
    "hybrid": {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 16, "d_intermediate": 160,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 2, "chunk_size": 16},
               "attn_layer_idx": [1, 3], "tie_embeddings": False,
               "attn_cfg": {"causal": True, "num_heads": 8, "num_heads_kv": 2, "head_dim": 40, "rotary_emb_dim": 20,
                            "mlp_dim": 96, "out_proj_bias": False, "d_conv": 4}},
    "hybrid1": {"d_model": 256, "n_layer": 3, "vocab_size": 1000, "pad_vocab_size_multiple": 8,
                "ssm_cfg": {"d_state": 16}, "attn_layer_idx": [1], "tie_embeddings": True,
                "attn_cfg": {"causal": True, "num_heads": 4, "softmax_scale": 0.1, "qkv_proj_bias": True,
                             "rotary_emb_dim": 64}},
    # NemotronH (Hugging Face format): Mamba-2, grouped-query attention without rotary, relu^2 MLP blocks
    "nemotron_h": {"model_type": "nemotron_h", "vocab_size": 1000, "hidden_size": 256, "hybrid_override_pattern": "M*-M",
                   "mamba_num_heads": 8, "mamba_head_dim": 32, "n_groups": 2, "ssm_state_size": 32, "conv_kernel": 4,
                   "chunk_size": 16, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32,
                   "intermediate_size": 384, "tie_word_embeddings": False},
}


@pytest.fixture(scope="session")
def native():
    from mamba_deploy import native as mod

    reason = mod.unavailable_reason()
    if reason:
        pytest.fail(f"native engine unavailable: {reason}")
    return mod


@pytest.fixture(scope="module")
def G(native):
    """mamba_deploy.native.gemv: the decode kernels' bindings."""
    from mamba_deploy.native import gemv

    return gemv


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("native_ckpt")
    return {arch: make_random_checkpoint(cfg, root / arch, fmt="hf" if "model_type" in cfg else "mamba_ssm",
                                         dtype=torch.float32, seed=3) for arch, cfg in CONFIGS.items()}


@pytest.fixture(scope="session")
def rel_err():
    """||out - ref|| / ||ref|| in float64."""
    return _shared_rel_err
