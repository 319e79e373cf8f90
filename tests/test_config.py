"""ModelConfig from mamba-ssm and Hugging Face config.json, and clear refusals."""
import json
import math

import pytest

from mamba_deploy.config import ModelConfig, load_config, parse_config
from mamba_deploy.errors import ConfigError

MAMBA_1P4B = {"d_model": 2048, "n_layer": 48, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
              "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
MAMBA2_1P3B = {"d_model": 2048, "d_intermediate": 0, "n_layer": 48, "vocab_size": 50277,
               "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
               "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
               "tie_embeddings": True}


def test_mamba_ssm_mamba1_derived_sizes():
    cfg = parse_config(MAMBA_1P4B)
    assert (cfg.arch, cfg.d_inner, cfg.dt_rank, cfg.d_state, cfg.d_conv) == ("mamba1", 4096, 128, 16, 4)
    assert (cfg.vocab_size, cfg.vocab_size_padded) == (50277, 50280)
    assert cfg.conv_state_shape(3) == (3, 4096, 3) and cfg.ssm_state_shape(3) == (3, 4096, 16)
    assert cfg.tie_embeddings and cfg.in_proj_dim == 8192


def test_mamba_ssm_mamba2_derived_sizes():
    cfg = parse_config(MAMBA2_1P3B)
    assert (cfg.arch, cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups) == ("mamba2", 64, 64, 128, 1)
    assert cfg.conv_dim == 4096 + 2 * 128 and cfg.in_proj_dim == 4096 + 4352 + 64
    assert cfg.vocab_size_padded == 50288 and cfg.dt_limit == (0.0, math.inf)
    assert cfg.ssm_state_shape(2) == (2, 64, 64, 128)


def test_hf_configs():
    m1 = parse_config({"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
                       "state_size": 16, "expand": 2, "conv_kernel": 4, "time_step_rank": 48, "use_bias": False,
                       "use_conv_bias": True, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True})
    assert (m1.arch, m1.dt_rank, m1.vocab_size_padded, m1.source_format) == ("mamba1", 48, 50280, "hf")
    m2 = parse_config({"model_type": "mamba2", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50288,
                       "state_size": 128, "num_heads": 24, "head_dim": 64, "n_groups": 1, "chunk_size": 256,
                       "time_step_limit": [0.0, {"__float__": "Infinity"}], "layer_norm_epsilon": 1e-5})
    assert (m2.nheads, m2.ngroups, m2.dt_limit, m2.tie_embeddings) == (24, 1, (0.0, math.inf), False)


def test_roundtrip_through_dict():
    cfg = parse_config(MAMBA2_1P3B)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("patch,field", [
    ({"attn_layer_idx": [3]}, "attn_cfg.causal"),
    ({"d_intermediate": -1}, "d_intermediate"),
    ({"d_intermediate": "4096"}, "d_intermediate"),
    ({"attn_layer_idx": [0], "d_intermediate": 4096, "attn_cfg": {"causal": True}}, "attn_cfg.num_heads"),
    ({"ssm_cfg": {"layer": "Mamba3"}}, "ssm_cfg.layer"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_ssm": 8192}}, "ssm_cfg.d_ssm"),  # more than expand * d_model
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 48}}, "headdim"),
    ({"n_layer": 0}, "n_layer"),
    ({"d_model": "big"}, "d_model"),
    ({"ssm_cfg": {"d_conv": 1}}, "d_conv"),
])
def test_mamba_ssm_refusals_name_the_field(patch, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({**MAMBA2_1P3B, **patch})


def test_missing_field_and_unknown_type():
    with pytest.raises(ConfigError, match="n_layer"):
        parse_config({"d_model": 64, "vocab_size": 10})
    for other in ("zamba2", "bamba"):
        with pytest.raises(ConfigError, match=f"model_type.*{other}"):
            parse_config({"model_type": other, "hidden_size": 64})
    with pytest.raises(ConfigError, match="num_heads"):
        parse_config({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10,
                      "num_heads": 3, "head_dim": 16})


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(tmp_path)


HF_MAMBA1 = {"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280}


@pytest.mark.parametrize("patch,field", [
    ({"n_layer": 10**9}, "n_layer"),
    ({"d_model": math.inf}, "d_model"),
    ({"d_model": 1e300}, "d_model"),
    ({"d_model": math.nan}, "d_model"),
    ({"vocab_size": 2**40}, "vocab_size"),
    ({"n_layer": True}, "n_layer"),
    ({"n_layer": "48"}, "n_layer"),
    ({"n_layer": 4.5}, "n_layer"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_state": 10**6}}, "ssm_cfg.d_state"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_conv": 16}}, "ssm_cfg.d_conv"),
    ({"ssm_cfg": {"layer": "Mamba2", "expand": 1000}}, "ssm_cfg.expand"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 10**5}}, "ssm_cfg.headdim"),
    ({"ssm_cfg": {"layer": "Mamba2", "ngroups": 10**5}}, "ssm_cfg.ngroups"),
    ({"ssm_cfg": {"layer": "Mamba2", "bias": "false"}}, "ssm_cfg.bias"),
    ({"ssm_cfg": {"layer": "Mamba2", "rmsnorm": "false"}}, "ssm_cfg.rmsnorm"),
    ({"ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, 10**400]}}, "ssm_cfg.dt_limit"),
    ({"tie_embeddings": "false"}, "tie_embeddings"),
    ({"rms_norm": 1}, "rms_norm"),
    ({"norm_epsilon": math.inf}, "norm_epsilon"),
    ({"norm_epsilon": "1e-5"}, "norm_epsilon"),
    ({"pad_vocab_size_multiple": 1e300}, "pad_vocab_size_multiple"),
])
def test_mamba_ssm_absurd_values_are_refused_naming_the_field(patch, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config({**MAMBA2_1P3B, **patch})


@pytest.mark.parametrize("patch,field", [
    ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
    ({"hidden_size": "Infinity"}, "hidden_size"),
    ({"hidden_size": 1e300}, "hidden_size"),
    ({"state_size": 10**6}, "state_size"),
    ({"conv_kernel": 16}, "conv_kernel"),
    ({"use_bias": "false"}, "use_bias"),
    ({"use_conv_bias": "true"}, "use_conv_bias"),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings"),
    ({"layer_norm_epsilon": math.nan}, "layer_norm_epsilon"),
])
def test_hf_absurd_values_are_refused_naming_the_field(patch, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config({**HF_MAMBA1, **patch})
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config({**HF_MAMBA1, "model_type": "mamba2", "num_heads": 24, "head_dim": 64, **patch})


def test_total_size_guard():
    """Each field within its range, the product absurd: refused before any allocation."""
    with pytest.raises(ConfigError, match="parameters"):
        parse_config({**MAMBA_1P4B, "d_model": 2**16, "n_layer": 1024, "ssm_cfg": {"expand": 16}})


def test_integral_floats_and_real_booleans_still_accepted():
    cfg = parse_config({**MAMBA_1P4B, "d_model": 2048.0, "ssm_cfg": {"bias": True, "conv_bias": False}})
    assert (cfg.d_model, cfg.bias, cfg.conv_bias) == (2048, True, False)


@pytest.mark.parametrize("patch,field", [({"bias": "false"}, "bias"), ({"n_layer": 10**9}, "n_layer"),
                                         ({"norm_eps": math.inf}, "norm_eps"), ({"d_conv": 4.0}, "d_conv")])
def test_export_config_form_is_checked_too(patch, field):
    """ModelConfig.from_dict reads the config.json of export folders."""
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        ModelConfig.from_dict({**parse_config(MAMBA2_1P3B).to_dict(), **patch})


# tiiuae/falcon-mamba-7b's config.json as published (expand 16 beside intermediate_size 8192: transformers takes
# intermediate_size), and mistralai/Mamba-Codestral-7B-v0.1's (norm_before_gate true is ignored by transformers).
FALCON_MAMBA_7B = {"architectures": ["FalconMambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "eos_token_id": 11,
                   "expand": 16, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.1,
                   "intermediate_size": 8192, "layer_norm_epsilon": 1e-05, "model_type": "falcon_mamba",
                   "num_hidden_layers": 64, "pad_token_id": 11, "rescale_prenorm_residual": False,
                   "residual_in_fp32": True, "state_size": 16, "tie_word_embeddings": False, "time_step_floor": 0.0001,
                   "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
                   "time_step_rank": 256, "time_step_scale": 1.0, "torch_dtype": "bfloat16", "use_bias": False,
                   "use_cache": True, "use_conv_bias": True, "vocab_size": 65024}
CODESTRAL_7B = {"architectures": ["Mamba2ForCausalLM"], "chunk_size": 256, "conv_kernel": 4, "expand": 2, "head_dim": 64,
                "hidden_act": "silu", "hidden_size": 4096, "layer_norm_epsilon": 1e-05, "model_type": "mamba2",
                "n_groups": 8, "norm_before_gate": True, "num_heads": 128, "num_hidden_layers": 64,
                "residual_in_fp32": True, "rms_norm": True, "state_size": 128, "tie_word_embeddings": False,
                "time_step_limit": [0.0, {"__float__": "Infinity"}], "time_step_rank": 256, "use_bias": False,
                "use_conv_bias": True, "vocab_size": 32768}


def test_falcon_mamba_7b_config():
    from mamba_deploy.config_hf import to_hf_config

    cfg = parse_config(FALCON_MAMBA_7B)
    assert (cfg.arch, cfg.d_inner, cfg.expand, cfg.dt_rank, cfg.d_state) == ("mamba1", 8192, 2, 256, 16)
    assert (cfg.mixer_rms_eps, cfg.tie_embeddings, cfg.vocab_size, cfg.vocab_size_padded) == (1e-6, False, 65024, 65024)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert parse_config(to_hf_config(cfg)) == cfg
    assert parse_config({**FALCON_MAMBA_7B, "mixer_rms_eps": 1e-3}).mixer_rms_eps == 1e-3
    plain = parse_config({**FALCON_MAMBA_7B, "model_type": "mamba"})
    assert plain.mixer_rms_eps is None and plain.d_inner == 8192


def test_codestral_7b_config():
    cfg = parse_config(CODESTRAL_7B)
    assert (cfg.arch, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state) == ("mamba2", 128, 64, 8, 128)
    assert (cfg.conv_dim, cfg.tie_embeddings, cfg.dt_limit, cfg.mixer_rms_eps) == (8192 + 2048, False,
                                                                                  (0.0, math.inf), None)


@pytest.mark.parametrize("patch,field", [
    ({"mixer_rms_eps": "1e-6"}, "mixer_rms_eps"),
    ({"mixer_rms_eps": -1.0}, "mixer_rms_eps"),
    ({"intermediate_size": 8191}, "intermediate_size"),
    ({"intermediate_size": 4096 * 17}, "intermediate_size"),
    ({"intermediate_size": True}, "intermediate_size"),
])
def test_falcon_mamba_bad_values_name_the_field(patch, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config({**FALCON_MAMBA_7B, **patch})


def test_mixer_rms_eps_is_mamba1_only():
    with pytest.raises(ConfigError, match="mixer_rms_eps"):
        ModelConfig.from_dict({**parse_config(MAMBA2_1P3B).to_dict(), "mixer_rms_eps": 1e-6})


def test_7b_presets_have_the_published_sizes():
    from mamba_deploy.random_init import preset_config

    falcon, codestral = (parse_config(preset_config(n)) for n in ("falcon-mamba-7b", "mamba-codestral-7b"))
    assert falcon == parse_config(FALCON_MAMBA_7B)
    assert codestral == parse_config(CODESTRAL_7B)
    assert round(falcon.parameter_estimate() / 1e9, 2) == 7.27 and round(codestral.parameter_estimate() / 1e9, 2) == 7.28


def test_d_intermediate_is_gated_mlp_width_rounded_as_mamba_ssm():
    from mamba_deploy.config import to_mamba_ssm_config

    plain = parse_config(MAMBA2_1P3B)
    for given, width in ((0, 0), (1, 128), (4096, 4096), (5000, 5120)):
        cfg = parse_config({**MAMBA2_1P3B, "d_intermediate": given})
        assert cfg.d_intermediate == width
        assert cfg.parameter_estimate() == plain.parameter_estimate() + 48 * 3 * 2048 * width
        assert parse_config(to_mamba_ssm_config(cfg)) == cfg
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert parse_config({**MAMBA_1P4B, "d_intermediate": 8192}).d_intermediate == 8192


def test_later_fields_are_written_only_when_set():
    """Exports of plain models keep the config.json (and slot fingerprints) of before Falcon-Mamba and MLPs; a
    Falcon-Mamba or MLP export names its field, which an older reader refuses as unknown."""
    plain = parse_config(MAMBA2_1P3B).to_dict()
    assert "mixer_rms_eps" not in plain and "d_intermediate" not in plain
    assert parse_config(FALCON_MAMBA_7B).to_dict()["mixer_rms_eps"] == 1e-6
    assert parse_config({**MAMBA2_1P3B, "d_intermediate": 256}).to_dict()["d_intermediate"] == 256
