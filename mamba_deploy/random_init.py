"""Random checkpoints shaped like the published models, written in mamba-ssm or Hugging Face format.

We cannot download the real checkpoints here, so tests and benchmarks make their own:
`make_random_checkpoint("mamba-1.4b", "ckpt/", dtype=torch.float16)`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import MAMBA2, ModelConfig, parse_config, to_mamba_ssm_config
from .config_hf import to_hf_config

_M1 = {"ssm_cfg": {}, "vocab_size": 50277, "pad_vocab_size_multiple": 8, "rms_norm": True,
       "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": True}
_M2 = {**_M1, "ssm_cfg": {"layer": "Mamba2"}, "pad_vocab_size_multiple": 16, "d_intermediate": 0,
       "attn_layer_idx": [], "attn_cfg": {}}
# The 7B Mamba-family models people deploy, as their Hugging Face config.json has them (parse_config reads both).
_HF_7B = {"hidden_size": 4096, "num_hidden_layers": 64, "conv_kernel": 4, "expand": 2, "use_bias": False,
          "use_conv_bias": True, "layer_norm_epsilon": 1e-5, "residual_in_fp32": True, "tie_word_embeddings": False}
PRESETS: dict[str, dict[str, Any]] = {
    **{f"mamba-{n}": {**_M1, "d_model": d, "n_layer": L} for n, d, L in [
        ("130m", 768, 24), ("370m", 1024, 48), ("790m", 1536, 48), ("1.4b", 2048, 48), ("2.8b", 2560, 64)]},
    **{f"mamba2-{n}": {**_M2, "d_model": d, "n_layer": L} for n, d, L in [
        ("130m", 768, 24), ("370m", 1024, 48), ("780m", 1536, 48), ("1.3b", 2048, 48), ("2.7b", 2560, 64)]},
    # state-spaces/mamba2attn-2.7b: Mamba-2 with 6 attention layers (MHA: 30 heads of 128, rotary 64, a conv of 4)
    "mamba2attn-2.7b": {**_M2, "d_model": 2560, "n_layer": 64, "attn_layer_idx": [9, 18, 27, 36, 45, 56],
                        "attn_cfg": {"causal": True, "d_conv": 4, "head_dim": 128, "num_heads": 30,
                                     "out_proj_bias": False, "qkv_proj_bias": False, "rotary_emb_dim": 64}},
    "falcon-mamba-7b": {**_HF_7B, "model_type": "falcon_mamba", "vocab_size": 65024, "state_size": 16,
                        "time_step_rank": 256, "mixer_rms_eps": 1e-6},  # tiiuae/falcon-mamba-7b
    "mamba-codestral-7b": {**_HF_7B, "model_type": "mamba2", "vocab_size": 32768, "state_size": 128,  # mistralai/
                           "num_heads": 128, "head_dim": 64, "n_groups": 8, "chunk_size": 256},  # Mamba-Codestral-7B-v0.1
    # nvidia/Nemotron-H-8B-Base-8K: 24 Mamba-2, 4 attention (32 heads over 8 kv heads of 128) and 24 relu^2 MLP layers
    "nemotron-h-8b": {"model_type": "nemotron_h", "vocab_size": 131072, "hidden_size": 4096,
                      "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
                      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "mamba_num_heads": 128,
                      "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4, "chunk_size": 128,
                      "intermediate_size": 21504, "tie_word_embeddings": False},
}


def preset_config(name: str) -> dict[str, Any]:
    key = name.split("/")[-1].removesuffix("-hf")
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return json.loads(json.dumps(PRESETS[key]))


@torch.no_grad()
def init_weights_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter in place with values of realistic scale (as mamba-ssm's init, plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    cfg: ModelConfig = model.config

    def rand(shape, scale=1.0, offset=0.0):
        return torch.randn(shape, generator=gen) * scale + offset

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 2)[-2:]
        if name.endswith("A_log"):
            base = torch.arange(1, p.shape[-1] + 1, dtype=torch.float32) if cfg.arch != MAMBA2 else \
                torch.empty(p.shape).uniform_(1, 16, generator=gen)
            val = torch.log(base.expand(p.shape)) + rand(p.shape, 0.1)
        elif name.endswith(("dt_bias", "dt_proj.bias")):
            dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            val = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
        elif name.endswith(".D"):
            val = 1.0 + rand(p.shape, 0.1)
        elif leaf[-1] == "weight" and (p.dim() == 1):  # norms
            val = 1.0 + rand(p.shape, 0.1)
        elif leaf[-1] == "bias":
            val = rand(p.shape, 0.02)
        elif "conv1d" in name:
            val = rand(p.shape, 1.0 / math.sqrt(cfg.d_conv))
        elif "embedding" in name:
            val = rand(p.shape, 0.02)
        else:  # linear layers: (out, in)
            val = rand(p.shape, 1.0 / math.sqrt(p.shape[-1]))
        p.copy_(val)


def write_checkpoint(model: torch.nn.Module, folder: str | os.PathLike, fmt: str = "mamba_ssm",
                     ssm_config: dict[str, Any] | None = None) -> Path:
    """Save `model` (a MambaLM) as a checkpoint folder; written to a temp folder, then renamed.

    fmt "mamba_ssm": config.json (d_model, ssm_cfg ...) + pytorch_model.bin;
    fmt "hf": Hugging Face config.json + model.safetensors with HF key names.
    """
    if fmt not in ("mamba_ssm", "hf"):
        raise ValueError(f"fmt must be 'mamba_ssm' or 'hf', got {fmt!r}")
    cfg: ModelConfig = model.config
    folder = Path(folder)
    state = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent if folder.parent.exists() else None))
    try:
        if fmt == "mamba_ssm":
            (tmp / "config.json").write_text(json.dumps(ssm_config or to_mamba_ssm_config(cfg), indent=2))
            torch.save(state, tmp / "pytorch_model.bin")
        else:
            from safetensors.torch import save_file
            (tmp / "config.json").write_text(json.dumps(to_hf_config(cfg), indent=2))
            hf_state = {k.replace("backbone.embedding.", "backbone.embeddings."): v.contiguous()
                        for k, v in state.items()}
            save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:  # an error or an interrupt mid-write leaves no temp folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def make_random_checkpoint(config: str | dict[str, Any], folder: str | os.PathLike, fmt: str = "mamba_ssm",
                           dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A preset name ("mamba-1.4b") or a config dict (mamba-ssm or Hugging Face form) -> a random checkpoint folder
    (a Hugging Face config is written as such, also with fmt "mamba_ssm")."""
    from .models import MambaLM

    ssm_config = preset_config(config) if isinstance(config, str) else dict(config)
    cfg = parse_config(ssm_config, origin="random-init config")
    with torch.device("meta"):
        model = MambaLM(cfg, dtype=dtype)
    model = model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    init_weights_(model, seed)
    return write_checkpoint(model, folder, fmt, ssm_config if fmt == "mamba_ssm" else None)
