"""Tiny random Hugging Face Mamba/Mamba2/FalconMamba models, saved as checkpoint folders (our independent oracle),
and tiny mamba-ssm configs with gated MLPs (d_intermediate > 0), which no transformers model has."""
from __future__ import annotations

from pathlib import Path

import torch

MAMBA1_CASES = {
    # name: MambaConfig kwargs
    "m1-d8-k4-untied": dict(hidden_size=48, num_hidden_layers=2, vocab_size=101, state_size=8, time_step_rank=5,
                            conv_kernel=4, use_bias=False, use_conv_bias=True, tie_word_embeddings=False),
    "m1-d16-k3-bias-tied": dict(hidden_size=32, num_hidden_layers=3, vocab_size=77, state_size=16, expand=2,
                                conv_kernel=3, use_bias=True, use_conv_bias=False, tie_word_embeddings=True),
    "m1-d4-expand3": dict(hidden_size=40, num_hidden_layers=2, vocab_size=53, state_size=4, expand=3,
                          conv_kernel=4, use_bias=True, use_conv_bias=True, tie_word_embeddings=False,
                          residual_in_fp32=False),
}
FALCON_CASES = {
    # FalconMambaConfig kwargs: Mamba1 + weightless RMS norms on dt, B, C (mixer_rms_eps); odd sizes
    "fm-d8-r5-untied": dict(hidden_size=48, num_hidden_layers=2, vocab_size=101, state_size=8, time_step_rank=5,
                            conv_kernel=4, use_bias=False, use_conv_bias=True, tie_word_embeddings=False,
                            mixer_rms_eps=1e-6),
    "fm-d6-k3-bias-tied-eps": dict(hidden_size=40, num_hidden_layers=3, vocab_size=67, state_size=6, expand=3,
                                   conv_kernel=3, use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
                                   mixer_rms_eps=1e-3, residual_in_fp32=False),
}
CODESTRAL_CASES = ["m2-codestral-g8-h8", "m2-codestral-g8-h16-k3-bias"]  # in MAMBA2_CASES
MAMBA2_CASES = {
    "m2-g1-p16": dict(hidden_size=64, num_hidden_layers=2, vocab_size=101, state_size=16, num_heads=8, head_dim=16,
                      n_groups=1, chunk_size=8, conv_kernel=4, tie_word_embeddings=False),
    "m2-g2-p8-k3-bias-tied": dict(hidden_size=32, num_hidden_layers=2, vocab_size=61, state_size=32, num_heads=8,
                                  head_dim=8, n_groups=2, chunk_size=4, conv_kernel=3, use_bias=True,
                                  use_conv_bias=False, tie_word_embeddings=True),
    "m2-g4-p32-limit": dict(hidden_size=64, num_hidden_layers=2, vocab_size=93, state_size=8, num_heads=4,
                            head_dim=32, n_groups=4, chunk_size=16, expand=2, tie_word_embeddings=False,
                            time_step_limit=(0.0, 0.05)),
    # Codestral Mamba's structure (n_groups 8, state_size 128, head_dim 64, untied head) at small sizes
    "m2-codestral-g8-h8": dict(hidden_size=256, num_hidden_layers=2, vocab_size=131, state_size=128, num_heads=8,
                               head_dim=64, n_groups=8, chunk_size=16, expand=2, tie_word_embeddings=False),
    "m2-codestral-g8-h16-k3-bias": dict(hidden_size=256, num_hidden_layers=3, vocab_size=97, state_size=128,
                                        num_heads=16, head_dim=64, n_groups=8, chunk_size=8, expand=4, conv_kernel=3,
                                        use_bias=True, use_conv_bias=True, tie_word_embeddings=False,
                                        residual_in_fp32=False, norm_before_gate=True),
}


def make_hf_model(name: str, seed: int = 0):
    """A random HF MambaForCausalLM / Mamba2ForCausalLM / FalconMambaForCausalLM, with norms and D perturbed away
    from 1."""
    from transformers import (FalconMambaConfig, FalconMambaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig,
                              MambaForCausalLM)

    torch.manual_seed(seed)
    if name in MAMBA1_CASES:
        model = MambaForCausalLM(MambaConfig(**MAMBA1_CASES[name]))
    elif name in FALCON_CASES:
        model = FalconMambaForCausalLM(FalconMambaConfig(**FALCON_CASES[name]))
    else:
        model = Mamba2ForCausalLM(Mamba2Config(**MAMBA2_CASES[name]))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith(".D") or "bias" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_hf_model(name: str, folder: Path, seed: int = 0):
    model = make_hf_model(name, seed)
    model.save_pretrained(folder)
    return model


MLP_CONFIGS = {
    # mamba-ssm config.json dicts (vocab >= 100 for test_export._check_chain); d_intermediate is rounded up to a
    # multiple of 128 as GatedMLP does
    "m1-mlp100": {"d_model": 48, "n_layer": 3, "vocab_size": 117, "pad_vocab_size_multiple": 8, "d_intermediate": 100,
                  "ssm_cfg": {"d_state": 8}, "tie_embeddings": False},
    "m2-mlp200-g2": {"d_model": 64, "n_layer": 2, "vocab_size": 101, "pad_vocab_size_multiple": 16,
                     "d_intermediate": 200, "residual_in_fp32": False,
                     "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8}},
    "m2-mlp128-layernorm": {"d_model": 32, "n_layer": 2, "vocab_size": 103, "pad_vocab_size_multiple": 8,
                            "d_intermediate": 128, "rms_norm": False,
                            "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 1, "chunk_size": 4}},
}


def mlp_checkpoint(name: str, folder: Path) -> Path:
    """A random mamba-ssm checkpoint of MLP_CONFIGS[name] (float32): transformers has no model with these MLPs."""
    from mamba_deploy.random_init import make_random_checkpoint

    return make_random_checkpoint(MLP_CONFIGS[name], folder, dtype=torch.float32, seed=1)
