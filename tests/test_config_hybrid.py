"""mamba-ssm hybrid configs (attn_layer_idx + attn_cfg): parsing, defaults as mamba-ssm's MHA, refusals."""
import json

import pytest

from mamba_deploy.config import ModelConfig, parse_config, to_mamba_ssm_config
from mamba_deploy.errors import ConfigError

BASE = {"d_model": 64, "n_layer": 4, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba2", "headdim": 16},
        "attn_layer_idx": [1], "attn_cfg": {"causal": True, "num_heads": 8, "num_heads_kv": 2, "head_dim": 12,
                                           "rotary_emb_dim": 8, "mlp_dim": 100, "qkv_proj_bias": False}}


def test_fields_and_defaults():
    cfg = parse_config(BASE)
    assert cfg.attn_layer_idx == (1,) and cfg.mamba_layers == (0, 2, 3)
    assert (cfg.attn_num_heads, cfg.attn_num_heads_kv, cfg.attn_head_dim, cfg.attn_rotary_dim) == (8, 2, 12, 8)
    assert cfg.attn_mlp_dim == 256  # MHA rounds mlp_dim up to a multiple of 256
    assert (cfg.attn_qkv_bias, cfg.attn_out_bias, cfg.attn_rotary_base) == (False, True, 10000.0)
    assert cfg.attn_qkv_dim == 12 * (8 + 4) and cfg.softmax_scale == pytest.approx(12 ** -0.5)
    assert cfg.kv_cache_shape(3, 77) == (3, 2, 77, 12)
    plain = parse_config({**BASE, "attn_cfg": {"causal": True, "num_heads": 4}})
    assert (plain.attn_num_heads_kv, plain.attn_head_dim, plain.attn_rotary_dim, plain.attn_mlp_dim) == (4, 16, 0, 0)


def test_roundtrips():
    cfg = parse_config(BASE)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert parse_config(to_mamba_ssm_config(cfg)) == cfg
    pure = parse_config({**BASE, "attn_layer_idx": []})
    assert not any(k.startswith("attn") for k in pure.to_dict())  # pure Mamba exports read as before


@pytest.mark.parametrize("attn,field", [
    ({"causal": False, "num_heads": 8}, "attn_cfg.causal"),
    ({"num_heads": 8}, "attn_cfg.causal"),  # MHA's default is not causal
    ({"causal": True}, "attn_cfg.num_heads"),
    ({"causal": True, "num_heads": 8, "d_conv": 9}, "attn_cfg.d_conv"),
    ({"causal": True, "num_heads": 8, "rotary_emb_interleaved": True}, "attn_cfg.rotary_emb_interleaved"),
    ({"causal": True, "num_heads": 8, "num_heads_kv": 3}, "attn_cfg.num_heads_kv"),
    ({"causal": True, "num_heads": 8, "rotary_emb_dim": 5}, "attn_cfg.rotary_emb_dim"),
    ({"causal": True, "num_heads": 8, "rotary_emb_dim": 10}, "attn_cfg.rotary_emb_dim"),  # > head_dim 8
    ({"causal": True, "num_heads": 7}, "attn_cfg.num_heads"),  # 64 % 7 without head_dim
    ({"causal": True, "num_heads": 8, "window_size": 3}, "attn_cfg.window_size"),
    ({"causal": True, "num_heads": 8, "qkv_proj_bias": "no"}, "attn_cfg.qkv_proj_bias"),
    ({"causal": True, "num_heads": 8, "softmax_scale": -1}, "attn_cfg.softmax_scale"),
])
def test_attn_cfg_refusals_name_the_field(attn, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({**BASE, "attn_cfg": attn})


def test_mamba2attn_preset():
    from mamba_deploy.random_init import preset_config

    cfg = parse_config(preset_config("state-spaces/mamba2attn-2.7b"))
    assert cfg.attn_layer_idx == (9, 18, 27, 36, 45, 56) and len(cfg.mamba_layers) == 58
    assert (cfg.attn_num_heads, cfg.attn_num_heads_kv, cfg.attn_head_dim, cfg.attn_d_conv) == (30, 30, 128, 4)
    assert 2.5e9 < cfg.parameter_estimate() < 2.9e9


def test_nemotron_h_8b_preset():
    """The published Nemotron-H-8B shape: 52 layers (24 Mamba-2, 4 attention, 24 MLP), about 8.1B parameters."""
    import torch

    from mamba_deploy.models import MambaLM
    from mamba_deploy.random_init import preset_config

    cfg = parse_config(preset_config("nvidia/nemotron-h-8b"))
    assert (len(cfg.mamba_layers), cfg.attn_layer_idx, len(cfg.mlp_layer_idx)) == (24, (7, 18, 29, 40), 24)
    with torch.device("meta"):
        params = sum(p.numel() for p in MambaLM(cfg, torch.float16).parameters())
    assert 7.9e9 < params < 8.3e9


def test_layer_indices_as_a_set():  # mamba-ssm tests `layer_idx in attn_layer_idx`
    assert parse_config({**BASE, "attn_layer_idx": [3, 1, 3]}).attn_layer_idx == (1, 3)


@pytest.mark.parametrize("idx", [[4], [-1], ["1"], [True], [0, 1, 2, 3], 3])
def test_bad_layer_indices(idx):
    with pytest.raises(ConfigError, match="attn_layer_idx"):
        parse_config({**BASE, "attn_layer_idx": idx})
