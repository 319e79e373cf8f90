"""Tiny random checkpoints and exports for tests (here, and for other backends' test suites)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..random_init import make_random_checkpoint
from .exporter import ExportOptions, export_model

TINY_CONFIGS = {
    "mamba1": {"d_model": 32, "n_layer": 2, "vocab_size": 100, "pad_vocab_size_multiple": 8,
               "ssm_cfg": {"d_state": 8}},
    "mamba2": {"d_model": 64, "n_layer": 2, "vocab_size": 100, "pad_vocab_size_multiple": 16,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8}},
    # hybrids (mamba-ssm's attn_layer_idx + attn_cfg): grouped-query attention with rotary and MHA's gated MLP
    "hybrid": {"d_model": 48, "n_layer": 3, "vocab_size": 100, "pad_vocab_size_multiple": 16, "d_intermediate": 40,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 12, "ngroups": 2, "chunk_size": 8},
               "attn_layer_idx": [1], "attn_cfg": {"causal": True, "num_heads": 6, "num_heads_kv": 2, "head_dim": 10,
                                                  "rotary_emb_dim": 6, "mlp_dim": 20, "out_proj_bias": False,
                                                  "d_conv": 3}},
    # mamba-ssm's Mamba2 with d_ssm < expand * d_model: the SSM on 48 channels, a gated MLP on the other 48
    "mamba2_dssm": {"d_model": 48, "n_layer": 2, "vocab_size": 100, "pad_vocab_size_multiple": 16,
                    "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 12, "ngroups": 2, "chunk_size": 8,
                                "d_ssm": 48}},
    "hybrid1": {"d_model": 40, "n_layer": 4, "vocab_size": 100, "pad_vocab_size_multiple": 8,
                "ssm_cfg": {"d_state": 6}, "attn_layer_idx": [1, 3],
                "attn_cfg": {"causal": True, "num_heads": 5, "softmax_scale": 0.3, "qkv_proj_bias": True}},
}


def tiny_checkpoint(arch: str, folder: str | os.PathLike, fmt: str = "mamba_ssm",
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    return make_random_checkpoint(TINY_CONFIGS[arch], folder, fmt=fmt, dtype=dtype, seed=seed)


def tiny_export(arch: str, folder: str | os.PathLike, **options) -> Path:
    """A tiny random `arch` checkpoint in folder/ckpt exported to folder/export with ExportOptions(**options)."""
    folder = Path(folder)
    ckpt = tiny_checkpoint(arch, folder / "ckpt")
    return export_model(ckpt, folder / "export", ExportOptions(**options), progress=False)


def built_once(build: Callable[..., Any]) -> Callable[..., Any]:
    """build(name, *args, **options) memoised on its arguments: what a test fixture hands out, each made once."""
    cache: dict[tuple, Any] = {}

    def get(name: str, *args: Any, **options: Any) -> Any:
        key = (name, args, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = build(name, *args, **options)
        return cache[key]

    return get
