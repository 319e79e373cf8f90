"""Hugging Face's config.json for Mamba models (MambaForCausalLM, Mamba2ForCausalLM, FalconMambaForCausalLM; NemotronH
through config_nemotron): read into a ModelConfig and written back. mamba-ssm's format lives in config.py."""
from __future__ import annotations

import math
from typing import Any

from .config import (INT_RANGES, MAMBA1, MAMBA2, ModelConfig, _as_bool, _as_float, _as_int, _dt_limit,
                     _require)
from .errors import ConfigError

_HF_TYPES = {"mamba": MAMBA1, "mamba2": MAMBA2, "falcon_mamba": MAMBA1}


def from_hf_config(data: dict[str, Any]) -> ModelConfig:
    """A Hugging Face config.json (model_type mamba, mamba2, falcon_mamba or nemotron_h) as a ModelConfig."""
    model_type = data["model_type"]
    if model_type == "nemotron_h":
        from .config_nemotron import nemotron_h_config

        return nemotron_h_config(data)
    if model_type not in _HF_TYPES:
        raise ConfigError(f"field 'model_type': unsupported model type {model_type!r} (expected nemotron_h, "
                          f"{', '.join(_HF_TYPES)})")
    arch = _HF_TYPES[model_type]
    d_model = _as_int(_require(data, "hidden_size"), "hidden_size", "d_model")
    expand = _hf_expand(data, arch, d_model)
    vocab = _as_int(_require(data, "vocab_size"), "vocab_size")
    act = data.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"field 'hidden_act': only silu is supported, got {act!r}")
    common = dict(
        d_model=d_model,
        n_layer=_as_int(_require(data, "num_hidden_layers"), "num_hidden_layers", "n_layer"),
        vocab_size=vocab,
        vocab_size_padded=vocab,  # HF checkpoints store the padded embedding size here
        d_conv=_as_int(data.get("conv_kernel", 4), "conv_kernel", "d_conv"),
        expand=expand,
        bias=_as_bool(data.get("use_bias", False), "use_bias"),
        conv_bias=_as_bool(data.get("use_conv_bias", True), "use_conv_bias"),
        norm_eps=_as_float(data.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", 0.0, 1.0),
        residual_in_fp32=_as_bool(data.get("residual_in_fp32", True), "residual_in_fp32"),
        source_format="hf",
    )
    if arch == MAMBA1:
        dt_rank = data.get("time_step_rank", "auto")
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else _as_int(dt_rank, "time_step_rank", "dt_rank")
        rms_eps = _as_float(data.get("mixer_rms_eps", 1e-6), "mixer_rms_eps", 0.0, 1.0) \
            if model_type == "falcon_mamba" else None
        return ModelConfig(arch=MAMBA1, d_state=_as_int(data.get("state_size", 16), "state_size", "d_state"),
                           dt_rank=dt_rank, tie_embeddings=_as_bool(data.get("tie_word_embeddings", True),
                                                                    "tie_word_embeddings"),
                           mixer_rms_eps=rms_eps, **common)
    head_dim = _as_int(data.get("head_dim", 64), "head_dim", "headdim")
    num_heads = data.get("num_heads")
    if num_heads is not None and _as_int(num_heads, "num_heads") * head_dim != expand * d_model:
        raise ConfigError(
            f"field 'num_heads': num_heads * head_dim ({num_heads} * {head_dim}) != expand * hidden_size "
            f"({expand} * {d_model})")
    return ModelConfig(
        arch=MAMBA2,
        d_state=_as_int(data.get("state_size", 128), "state_size", "d_state"),
        headdim=head_dim,
        ngroups=_as_int(data.get("n_groups", 8), "n_groups", "ngroups"),
        chunk_size=_as_int(data.get("chunk_size", 256), "chunk_size"),
        dt_limit=_dt_limit(data.get("time_step_limit", (0.0, math.inf)), "time_step_limit"),
        tie_embeddings=_as_bool(data.get("tie_word_embeddings", False), "tie_word_embeddings"),
        **common,
    )


def _hf_expand(data: dict[str, Any], arch: str, d_model: int) -> int:
    """transformers' Mamba1 configs take `intermediate_size` over expand * hidden_size when both are given
    (falcon-mamba-7b ships expand 16 with intermediate_size 8192 = 2 * 4096)."""
    inter = data.get("intermediate_size")
    if arch != MAMBA1 or inter is None:
        return _as_int(data.get("expand", 2), "expand")
    inter = _as_int(inter, "intermediate_size")
    if inter % d_model or not 1 <= inter // d_model <= INT_RANGES["expand"][1]:
        raise ConfigError(f"field 'intermediate_size': {inter} is not hidden_size ({d_model}) times an expand "
                          f"factor from 1 to {INT_RANGES['expand'][1]} (not supported)")
    return inter // d_model


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json (MambaForCausalLM / Mamba2ForCausalLM / FalconMambaForCausalLM) of `cfg`;
    from_hf_config reads it back."""
    from .config_nemotron import is_nemotron_h, to_nemotron_h_config

    if is_nemotron_h(cfg):
        return to_nemotron_h_config(cfg)
    if cfg.d_intermediate or cfg.attn_layer_idx or cfg.mamba2_mlp_dim:
        raise ValueError("MLP or attention layers (d_intermediate > 0, d_ssm < d_inner) have no Hugging Face config "
                         "format; use mamba-ssm's")
    common = {"hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "vocab_size": cfg.vocab_size_padded,
              "state_size": cfg.d_state, "expand": cfg.expand, "conv_kernel": cfg.d_conv, "use_bias": cfg.bias,
              "use_conv_bias": cfg.conv_bias, "layer_norm_epsilon": cfg.norm_eps,
              "residual_in_fp32": cfg.residual_in_fp32, "tie_word_embeddings": cfg.tie_embeddings,
              "hidden_act": "silu"}
    if cfg.arch == MAMBA2:
        lo, hi = cfg.dt_limit
        return {**common, "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "num_heads": cfg.nheads,
                "head_dim": cfg.headdim, "n_groups": cfg.ngroups, "chunk_size": cfg.chunk_size,
                "time_step_limit": [lo, hi]}
    m1 = {**common, "time_step_rank": cfg.dt_rank, "intermediate_size": cfg.d_inner}
    if cfg.mixer_rms_eps is not None:
        return {**m1, "model_type": "falcon_mamba", "architectures": ["FalconMambaForCausalLM"],
                "mixer_rms_eps": cfg.mixer_rms_eps}
    return {**m1, "model_type": "mamba", "architectures": ["MambaForCausalLM"]}
