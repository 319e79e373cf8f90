"""mamba-ssm's Mamba2 with d_ssm < expand * d_model (the SSM on d_ssm channels, a gated MLP silu(z0) * x0 on the
rest, both inside in_proj / out_proj): config, the reference against mamba-ssm's forward written out, export ->
ONNX Runtime and torch, verify, and the transformers oracle's refusal (it has no such model). The native engine
runs it in tests/native (conftest's mamba2_d_ssm) and against mamba-ssm itself in test_mamba_ssm_oracle.py."""
import pytest
import torch
import torch.nn.functional as F

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.config import parse_config, to_mamba_ssm_config
from mamba_deploy.errors import ConfigError, MambaDeployError
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.export.artifact import load_export
from mamba_deploy.export.testing import TINY_CONFIGS, tiny_checkpoint
from mamba_deploy.ops import causal_conv1d_ref, chunk_scan_ref, gated_rms_norm_ref
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.verify import verify_export
from numerics import rel_err as rel

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
CONFIG = TINY_CONFIGS["mamba2_dssm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("dssm")
    ckpt = tiny_checkpoint("mamba2_dssm", root / "ckpt", seed=5)
    return ckpt, export_model(ckpt, root / "export", ExportOptions(), progress=False)


def test_config_fields_and_round_trip():
    cfg = parse_config(CONFIG)
    assert (cfg.d_inner, cfg.mamba2_mlp_dim, cfg.mixer_out_dim, cfg.nheads) == (48, 48, 96, 4)
    assert cfg.in_proj_dim == 2 * 48 + 48 + (48 + 2 * 2 * 8) + 4  # z0, x0, z, xBC, dt
    assert cfg.ssm_state_shape(1) == (1, 4, 12, 8) and cfg.conv_state_shape(1) == (1, 80, 3)
    assert parse_config(to_mamba_ssm_config(cfg)) == cfg
    plain = parse_config({**CONFIG, "ssm_cfg": {**CONFIG["ssm_cfg"], "d_ssm": 96}})
    assert plain.mamba2_mlp_dim == 0 and "d_ssm" not in to_mamba_ssm_config(plain)["ssm_cfg"]


@pytest.mark.parametrize("d_ssm,message", [(120, "more than expand"), (42, "multiple of headdim"),
                                           (0, "d_ssm")])
def test_bad_d_ssm_is_refused(d_ssm, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**CONFIG, "ssm_cfg": {**CONFIG["ssm_cfg"], "d_ssm": d_ssm}})


def _mamba_ssm_forward(mixer, u):
    """mamba-ssm's Mamba2.forward (its non-fused path) written out: split [z0, x0, z, xBC, dt], conv + SiLU, the
    chunk scan, the gated RMSNorm over d_ssm in groups, then out_proj([silu(z0) * x0, y])."""
    c = mixer.cfg
    zxbcdt = mixer.in_proj(u)
    d_mlp = (zxbcdt.shape[-1] - 2 * c.d_inner - 2 * c.ngroups * c.d_state - c.nheads) // 2
    z0, x0, z, xbc, dt = torch.split(zxbcdt, [d_mlp, d_mlp, c.d_inner, c.d_inner + 2 * c.ngroups * c.d_state,
                                              c.nheads], dim=-1)
    xbc, _ = causal_conv1d_ref(xbc.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, None, "silu")
    x, B, C = torch.split(xbc.transpose(1, 2), [c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
    b, L = u.shape[:2]
    y, _ = chunk_scan_ref(x.reshape(b, L, c.nheads, c.headdim), dt, -torch.exp(mixer.A_log.float()),
                          B.reshape(b, L, c.ngroups, c.d_state), C.reshape(b, L, c.ngroups, c.d_state), c.chunk_size,
                          mixer.D, None, mixer.dt_bias, None, True, c.dt_limit)
    y = gated_rms_norm_ref(y.reshape(b, L, -1), z, mixer.norm.weight, c.norm_eps, c.d_inner // c.ngroups)
    return mixer.out_proj(torch.cat([F.silu(z0) * x0, y], dim=-1))


def test_reference_mixer_is_mamba_ssms_forward(exported):
    model = load_reference(exported[0])
    mixer = model.backbone.layers[0].mixer
    u = torch.randn(2, 19, model.config.d_model, generator=torch.Generator().manual_seed(1))
    state = model.new_state(2)
    with torch.no_grad():
        got, _, _ = mixer(u, state.conv[0], state.ssm[0])
        assert rel(got, _mamba_ssm_forward(mixer, u)) < 1e-6


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_backends_match_the_reference_through_prefill_and_decode(exported, backend):
    ckpt, folder = exported
    model = load_reference(ckpt)
    ids = torch.randint(1, 100, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids)[:, 5:]
    run = load_backend(backend, load_export(folder))
    state = run.new_state(2)
    got = [run.prefill(ids[:, :6], state)] + [run.decode(ids[:, t:t + 1], state).clone() for t in range(6, 14)]
    assert rel(torch.cat(got, 1), want) < 1e-5


def test_verify_passes_and_the_transformers_oracle_refuses(exported):
    ckpt, folder = exported
    report = verify_export(folder, reference=str(ckpt), backend="onnxruntime", steps=4)
    assert report.passed and report.max_rel_err < 1e-5
    with pytest.raises(MambaDeployError, match="d_ssm"):
        verify_export(folder, reference=str(ckpt), backend="onnxruntime", oracle="transformers")
