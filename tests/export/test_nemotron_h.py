"""NemotronH (dense: Mamba-2 'M', attention '*' and MLP '-' layers) against transformers' NemotronHForCausalLM on
tiny random checkpoints of odd shapes: config, the reference, export -> ONNX Runtime and torch, verify, refusals."""
import pytest
import torch

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.config import parse_config
from mamba_deploy.config_hf import to_hf_config
from mamba_deploy.errors import ConfigError
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.export.artifact import load_export
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.verify import verify_export
from numerics import rel_err as rel

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
BASE = dict(vocab_size=101, hidden_size=48, mamba_num_heads=10, mamba_head_dim=12, n_groups=2, ssm_state_size=8,
            conv_kernel=4, chunk_size=8, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
            intermediate_size=72, time_step_min=0.001, layer_norm_epsilon=1e-5, tie_word_embeddings=False)
CASES = {
    "gqa-mlp": dict(hybrid_override_pattern="M*-M-*M"),  # d_inner 120 is not a multiple of hidden 48
    "attn-first-tied": dict(hybrid_override_pattern="*MM-", num_key_value_heads=6, head_dim=8, n_groups=5,
                            conv_kernel=3, tie_word_embeddings=True, use_conv_bias=False, mlp_bias=True),
    "mamba-mlp-bias": dict(hybrid_override_pattern="M-M", use_bias=True, time_step_min=0.01, mamba_head_dim=8,
                           mamba_num_heads=6, ssm_state_size=5),
}
MAX_LEN = 24


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """case(name) -> (transformers model, checkpoint folder, export folder), built once per module."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(7)
            model = NemotronHForCausalLM(NemotronHConfig(**{**BASE, **CASES[name]})).eval()
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if "norm" in pname or pname.endswith((".D", "dt_bias")) or "bias" in pname:
                        p.add_(torch.randn_like(p) * 0.1)
            root = tmp_path_factory.mktemp(name)
            model.save_pretrained(root / "ckpt")
            limit = MAX_LEN if "*" in CASES[name]["hybrid_override_pattern"] else None  # only for attention
            out = export_model(root / "ckpt", root / "export", ExportOptions(max_seq_len=limit), progress=False)
            cache[name] = model, root / "ckpt", out
        return cache[name]

    return get


def test_config_fields():
    cfg = parse_config({"model_type": "nemotron_h", **BASE, **CASES["gqa-mlp"]})
    assert (cfg.n_layer, cfg.mamba_layers, cfg.attn_layer_idx, cfg.mlp_layer_idx) == (7, (0, 3, 6), (1, 5), (2, 4))
    assert (cfg.d_inner, cfg.nheads, cfg.headdim, cfg.dt_limit) == (120, 10, 12, (0.001, float("inf")))
    assert cfg.attn_separate_proj and (cfg.attn_qkv_bias, cfg.attn_out_bias, cfg.attn_rotary_dim) == (False, False, 0)
    assert parse_config(to_hf_config(cfg)) == cfg
    listed = parse_config({"model_type": "nemotron_h", **BASE,
                           "layers_block_type": ["mamba", "attention", "mlp", "mamba", "mlp", "attention", "mamba"]})
    assert listed == cfg


@pytest.mark.parametrize("patch,field", [
    ({"hybrid_override_pattern": "M*E-"}, "hybrid_override_pattern"),
    ({"hybrid_override_pattern": "MX"}, "hybrid_override_pattern"),
    ({"hybrid_override_pattern": "*-"}, "attn_layer_idx"),  # no Mamba layer
    ({"mlp_hidden_act": "gelu"}, "mlp_hidden_act"),
    ({"sliding_window": 64}, "sliding_window"),
    ({"num_nextn_predict_layers": 1}, "num_nextn_predict_layers"),
    ({"num_key_value_heads": 4}, "num_heads_kv"),
])
def test_refusals_name_the_field(patch, field):
    with pytest.raises(ConfigError, match=field):
        parse_config({"model_type": "nemotron_h", **BASE, "hybrid_override_pattern": "M*-", **patch})


@pytest.mark.parametrize("name", list(CASES))
def test_reference_onnxruntime_and_torch_match_transformers(case, name):
    """Batch-2 prefill (chunked) then decode steps, states fed back, against transformers' full-sequence logits."""
    hf, ckpt, folder = case(name)
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits[:, 5:]  # transformers cannot cache a model without attention
    ref = load_reference(ckpt)
    assert rel(ref(ids)[:, 5:], want) < 1e-5
    info = load_export(folder)
    for backend in (load_backend("onnxruntime", info), load_backend("torch", info)):
        state = backend.new_state(2)
        backend.prefill(ids[:, :3], state)
        got = [backend.prefill(ids[:, 3:6], state)] + \
            [backend.decode(ids[:, t:t + 1], state).clone() for t in range(6, 12)]  # decode reuses its buffer
        assert rel(torch.cat(got, 1)[..., :101], want[..., :101]) < 1e-5, backend.name


def test_verify_against_transformers(case):
    import onnx

    _, ckpt, folder = case("gqa-mlp")
    for kind in ("prefill", "decode"):
        onnx.checker.check_model(str(folder / f"{kind}.onnx"), full_check=True)
    report = verify_export(folder, reference=str(ckpt), backend="onnxruntime", oracle="transformers", steps=4)
    assert report.passed and report.max_rel_err < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_native_verifies_against_transformers(case, name):
    """The native engine (attention in its decode graph, MLP blocks, a float32 export) against transformers."""
    _, ckpt, folder = case(name)
    report = verify_export(folder, reference=str(ckpt), backend="native", oracle="transformers", steps=4)
    assert report.passed and report.max_rel_err < 1e-4, report
