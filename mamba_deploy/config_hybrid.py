"""mamba-ssm hybrids: ModelConfig's attn_* fields from a mamba-ssm config's attn_layer_idx + attn_cfg (the
arguments of its MHA module), refusing what the reference does not implement with the field named."""
from __future__ import annotations

from typing import Any

from .config import ATTN_MLP_MULTIPLE, _as_bool, _as_float, _as_int
from .errors import ConfigError


def attention_fields(data: dict[str, Any], d_model: int) -> dict[str, Any]:
    """ModelConfig's attn_* fields from mamba-ssm's attn_layer_idx + attn_cfg (the arguments of its MHA)."""
    idx = data.get("attn_layer_idx") or []
    if not idx:
        return {}
    if not isinstance(idx, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in idx):
        raise ConfigError(f"field 'attn_layer_idx' must be a list of layer indices, got {idx!r}")
    attn = data.get("attn_cfg") or {}
    if not isinstance(attn, dict):
        raise ConfigError("field 'attn_cfg' must be an object")
    known = {"num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias", "softmax_scale",
             "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base", "rotary_emb_interleaved"}
    unknown = sorted(set(attn) - known)
    if unknown:
        raise ConfigError(f"field 'attn_cfg.{unknown[0]}': not an argument of mamba-ssm's MHA (not supported)")
    if not _as_bool(attn.get("causal", False), "attn_cfg.causal"):
        raise ConfigError("field 'attn_cfg.causal': only causal attention can generate (set causal: true)")
    d_conv = attn.get("d_conv", 0)
    d_conv = _as_int(d_conv, "attn_cfg.d_conv", "d_conv") if d_conv else 0  # 0: none; else what the kernels take
    if _as_bool(attn.get("rotary_emb_interleaved", False), "attn_cfg.rotary_emb_interleaved"):
        raise ConfigError("field 'attn_cfg.rotary_emb_interleaved': interleaved rotary embeddings are not "
                          "supported yet")
    if "num_heads" not in attn:
        raise ConfigError("missing field 'attn_cfg.num_heads'")
    heads = _as_int(attn["num_heads"], "attn_cfg.num_heads", "attn_num_heads")
    head_dim = attn.get("head_dim")
    if head_dim is None and d_model % heads:
        raise ConfigError(f"field 'attn_cfg.num_heads': d_model {d_model} is not a multiple of {heads} (set head_dim)")
    scale = attn.get("softmax_scale")
    mlp_dim = _as_int(attn.get("mlp_dim", 0), "attn_cfg.mlp_dim", "attn_mlp_dim")
    return dict(
        attn_d_conv=d_conv, attn_layer_idx=tuple(sorted(set(idx))), attn_num_heads=heads,  # MHA where `layer_idx in attn_layer_idx`
        attn_num_heads_kv=_as_int(attn.get("num_heads_kv") or heads, "attn_cfg.num_heads_kv", "attn_num_heads_kv"),
        attn_head_dim=d_model // heads if head_dim is None else _as_int(head_dim, "attn_cfg.head_dim", "attn_head_dim"),
        attn_rotary_dim=_as_int(attn.get("rotary_emb_dim", 0), "attn_cfg.rotary_emb_dim", "attn_rotary_dim"),
        attn_rotary_base=_as_float(attn.get("rotary_emb_base", 10000.0), "attn_cfg.rotary_emb_base", 1.0, 1e12),
        attn_mlp_dim=-(-mlp_dim // ATTN_MLP_MULTIPLE) * ATTN_MLP_MULTIPLE,
        attn_qkv_bias=_as_bool(attn.get("qkv_proj_bias", True), "attn_cfg.qkv_proj_bias"),
        attn_out_bias=_as_bool(attn.get("out_proj_bias", True), "attn_cfg.out_proj_bias"),
        attn_softmax_scale=None if scale is None else _as_float(scale, "attn_cfg.softmax_scale", 1e-6, 1e6))
