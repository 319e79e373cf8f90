"""NVIDIA's NemotronH (`model_type` `nemotron_h`, `NemotronHForCausalLM`), dense variants, as a ModelConfig: a layer
pattern of Mamba-2 ('M'), attention ('*') and MLP ('-') blocks, each block norm -> mixer -> residual add.

The semantics are transformers' (the oracle): the Mamba-2 mixer clamps dt to (time_step_min, inf), attention
has no positional embedding and no biases, the MLP is down_proj(relu(up_proj(x))^2), lm_head is never tied."""
from __future__ import annotations

from typing import Any

from .config import MAMBA2, ModelConfig, _as_bool, _as_float, _as_int, _require
from .errors import ConfigError

_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_LIST_NAMES = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*", "mlp": "-", "moe": "E"}


def layer_pattern(data: dict[str, Any]) -> str:
    """The layer pattern ('M', '*', '-', 'E' per layer) from layers_block_type or hybrid_override_pattern."""
    listed = data.get("layers_block_type") or data.get("layer_types")
    if listed is not None:
        if not isinstance(listed, list) or any(t not in _LIST_NAMES for t in listed):
            raise ConfigError(f"field 'layers_block_type' must list layer types among {', '.join(_LIST_NAMES)}")
        return "".join(_LIST_NAMES[t] for t in listed)
    pattern = _require(data, "hybrid_override_pattern")
    if not isinstance(pattern, str) or not pattern or set(pattern) - set(_PATTERN):
        raise ConfigError(f"field 'hybrid_override_pattern' must be a string of M, *, - and E, got {pattern!r}")
    return pattern


def _refuse_variants(data: dict[str, Any], pattern: str) -> None:
    if "E" in pattern:
        raise ConfigError("field 'hybrid_override_pattern': MoE layers ('E') are not supported (dense variants only)")
    if _as_int(data.get("num_nextn_predict_layers", 0), "num_nextn_predict_layers", "d_intermediate"):
        raise ConfigError("field 'num_nextn_predict_layers': multi-token prediction layers are not supported")
    if data.get("sliding_window") is not None:
        raise ConfigError("field 'sliding_window': sliding-window attention is not supported")
    for key, want in (("mamba_hidden_act", "silu"), ("mlp_hidden_act", "relu2")):
        if data.get(key, want) != want:
            raise ConfigError(f"field '{key}': only {want} is supported, got {data[key]!r}")


def nemotron_h_config(data: dict[str, Any]) -> ModelConfig:
    pattern = layer_pattern(data)
    _refuse_variants(data, pattern)
    d_model = _as_int(_require(data, "hidden_size"), "hidden_size", "d_model")
    heads = _as_int(data.get("mamba_num_heads", 128), "mamba_num_heads", "num_heads")
    headdim = _as_int(data.get("mamba_head_dim", 64), "mamba_head_dim", "headdim")
    attn_heads = _as_int(data.get("num_attention_heads", 32), "num_attention_heads", "attn_num_heads")
    head_dim = data["head_dim"] if "head_dim" in data else data.get("attention_head_dim", 128)  # NVIDIA's own name
    head_dim = d_model // attn_heads if head_dim is None else _as_int(head_dim, "head_dim", "attn_head_dim")
    kv_heads = data.get("num_key_value_heads", 8)
    attn = [i for i, t in enumerate(pattern) if t == "*"]
    mlp = [i for i, t in enumerate(pattern) if t == "-"]
    get = data.get
    return ModelConfig(
        arch=MAMBA2, d_model=d_model, n_layer=len(pattern),
        vocab_size=_as_int(_require(data, "vocab_size"), "vocab_size"),
        vocab_size_padded=_as_int(data["vocab_size"], "vocab_size"),
        d_state=_as_int(get("ssm_state_size", 128), "ssm_state_size", "d_state"),
        d_conv=_as_int(get("conv_kernel", get("mamba_d_conv", 4)), "conv_kernel", "d_conv"),
        expand=1, mamba_d_inner=heads * headdim, headdim=headdim,
        ngroups=_as_int(get("n_groups", get("mamba_n_groups", 8)), "n_groups", "ngroups"),
        chunk_size=_as_int(get("chunk_size", get("mamba_chunk_size", 128)), "chunk_size"),
        dt_limit=(_as_float(get("time_step_min", get("mamba_dt_min", 0.001)), "time_step_min", 0.0, 1.0),
                  float("inf")),  # transformers' NemotronHMamba2Mixer clamps dt from below at time_step_min
        bias=_as_bool(get("use_bias", False), "use_bias"),
        conv_bias=_as_bool(get("use_conv_bias", get("mamba_conv_bias", True)), "use_conv_bias"),
        norm_eps=_as_float(get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", 0.0, 1.0),
        residual_in_fp32=False,  # NemotronHBlock keeps the residual in the model dtype
        tie_embeddings=False,  # transformers' NemotronHForCausalLM never ties lm_head (whatever tie_word_embeddings says)
        source_format="hf",
        attn_layer_idx=tuple(attn), attn_num_heads=attn_heads if attn else 0,
        attn_num_heads_kv=(attn_heads if kv_heads is None else _as_int(kv_heads, "num_key_value_heads",
                                                                        "attn_num_heads_kv")) if attn else 0,
        attn_head_dim=head_dim if attn else 0, attn_qkv_bias=False, attn_out_bias=False, attn_separate_proj=bool(attn),
        mlp_layer_idx=tuple(mlp), mlp_width=_as_int(get("intermediate_size", 21504), "intermediate_size") if mlp else 0,
        mlp_bias=_as_bool(get("mlp_bias", False), "mlp_bias") if mlp else False,
    )


def to_nemotron_h_config(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json of a NemotronH ModelConfig; nemotron_h_config reads it back."""
    pattern = "".join("*" if i in cfg.attn_layer_idx else "-" if i in cfg.mlp_layer_idx else "M"
                      for i in range(cfg.n_layer))
    out = {"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": cfg.vocab_size_padded,
           "hidden_size": cfg.d_model, "hybrid_override_pattern": pattern, "num_hidden_layers": cfg.n_layer,
           "ssm_state_size": cfg.d_state, "mamba_num_heads": cfg.nheads, "mamba_head_dim": cfg.headdim,
           "n_groups": cfg.ngroups, "conv_kernel": cfg.d_conv, "chunk_size": cfg.chunk_size,
           "time_step_min": cfg.dt_limit[0], "use_bias": cfg.bias, "use_conv_bias": cfg.conv_bias,
           "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
           "mamba_hidden_act": "silu", "mlp_hidden_act": "relu2", "residual_in_fp32": False}
    if cfg.attn_layer_idx:
        out.update(num_attention_heads=cfg.attn_num_heads, num_key_value_heads=cfg.attn_num_heads_kv,
                   head_dim=cfg.attn_head_dim)
    if cfg.mlp_layer_idx:
        out.update(intermediate_size=cfg.mlp_width, mlp_bias=cfg.mlp_bias)
    return out


def is_nemotron_h(cfg: ModelConfig) -> bool:
    """Whether `cfg` came from nemotron_h_config (the only source of these fields)."""
    return cfg.attn_separate_proj or bool(cfg.mlp_layer_idx) or bool(cfg.mamba_d_inner)
