"""The reference attention mixer of mamba-ssm hybrids: against a plain transcription of mamba-ssm's MHA
(repeat_interleave + causal SDPA, rotate-half rotary), and the KV-cache invariants of the whole LM."""
import pytest
import torch
import torch.nn.functional as F

from mamba_deploy.config import parse_config
from mamba_deploy.errors import ParameterError
from mamba_deploy.models import MambaLM
from mamba_deploy.ops import attention_ref, attention_sdpa
from mamba_deploy.random_init import init_weights_
from numerics import rel_err

# odd shapes: GQA 6/2 with rotary on part of a head, MHA without rotary, MQA with full-head rotary; Mamba1 and 2
CONFIGS = {
    "m2-gqa-rotary": {"d_model": 48, "n_layer": 4, "vocab_size": 61, "d_intermediate": 40,
                      "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 12, "ngroups": 2, "chunk_size": 4},
                      "attn_layer_idx": [1], "attn_cfg": {"causal": True, "num_heads": 6, "num_heads_kv": 2,
                                                         "head_dim": 10, "rotary_emb_dim": 6, "mlp_dim": 30}},
    "m2-conv-rotary": {"d_model": 40, "n_layer": 3, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba2", "headdim": 10,
                                                                                   "d_state": 6},
                       "attn_layer_idx": [1, 2], "attn_cfg": {"causal": True, "num_heads": 4, "head_dim": 8,
                                                             "rotary_emb_dim": 4, "d_conv": 3, "mlp_dim": 16,
                                                             "qkv_proj_bias": False, "out_proj_bias": False}},
    "m1-mha": {"d_model": 40, "n_layer": 3, "vocab_size": 53, "ssm_cfg": {"d_state": 6},
               "attn_layer_idx": [1, 2], "attn_cfg": {"causal": True, "num_heads": 5, "softmax_scale": 0.4}},
    "m2-mqa-fullrot": {"d_model": 32, "n_layer": 3, "vocab_size": 40, "ssm_cfg": {"layer": "Mamba2", "headdim": 8,
                                                                                   "d_state": 4},
                       "attn_layer_idx": [0], "attn_cfg": {"causal": True, "num_heads": 4, "num_heads_kv": 1,
                                                          "head_dim": 6, "rotary_emb_dim": 6, "rotary_emb_base": 500.0,
                                                          "out_proj_bias": False}},
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    m = MambaLM(parse_config(CONFIGS[request.param]))
    init_weights_(m, seed=5)
    return m.eval()


def _rotary_rotate_half(x, positions, dim, base):
    """flash-attn's non-interleaved rotary as x * cos + rotate_half(x) * sin over the first dim channels."""
    if dim == 0:
        return x
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = positions.float()[..., None] * inv
    cos, sin = torch.cat([freqs.cos()] * 2, -1)[:, :, None], torch.cat([freqs.sin()] * 2, -1)[:, :, None]
    head, tail = x[..., :dim], x[..., dim:]
    half = torch.cat([-head[..., dim // 2:], head[..., :dim // 2]], -1)
    return torch.cat([head * cos + half * sin, tail], -1)


def _mha_without_cache(mixer, hidden):
    """mamba-ssm's MHA.forward(x, inference_params=None), written out."""
    c = mixer.cfg
    qkv = mixer.in_proj(hidden)
    if c.attn_mlp_dim:
        qkv, x_mlp = qkv.split([qkv.shape[-1] - c.attn_mlp_dim, c.attn_mlp_dim], dim=-1)
        up, gate = x_mlp.chunk(2, dim=-1)
        x_mlp = up * F.silu(gate)
    if c.attn_d_conv:  # nn.Conv1d with padding d_conv - 1, the tail cut off
        conv = F.conv1d(qkv.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias, padding=c.attn_d_conv - 1,
                        groups=c.attn_qkv_dim)
        qkv = conv[..., :-(c.attn_d_conv - 1)].transpose(1, 2)
    q, kv = qkv.split([c.attn_num_heads * c.attn_head_dim, 2 * c.attn_num_heads_kv * c.attn_head_dim], dim=-1)
    b, l, _ = hidden.shape
    q = q.reshape(b, l, c.attn_num_heads, c.attn_head_dim)
    kv = kv.reshape(b, l, 2, c.attn_num_heads_kv, c.attn_head_dim)
    positions = torch.arange(l).expand(b, l)
    q = _rotary_rotate_half(q, positions, c.attn_rotary_dim, c.attn_rotary_base)
    k = _rotary_rotate_half(kv[:, :, 0], positions, c.attn_rotary_dim, c.attn_rotary_base)
    context = attention_sdpa(q, k, kv[:, :, 1], c.softmax_scale).reshape(b, l, -1)
    if c.attn_mlp_dim:
        context = torch.cat([context, x_mlp], dim=-1)
    return mixer.out_proj(context)


@pytest.mark.parametrize("heads,heads_kv,seqlen", [(4, 4, 1), (6, 2, 9), (5, 1, 13)])
def test_attention_ref_equals_sdpa(heads, heads_kv, seqlen):
    gen = torch.Generator().manual_seed(heads * seqlen)
    q = torch.randn(3, seqlen, heads, 7, generator=gen)
    k, v = (torch.randn(3, seqlen, heads_kv, 7, generator=gen) for _ in range(2))
    cache_k, cache_v = (torch.randn(3, heads_kv, seqlen + 5, 7, generator=gen) for _ in range(2))  # junk beyond
    cache_k[:, :, :seqlen], cache_v[:, :, :seqlen] = k.transpose(1, 2), v.transpose(1, 2)
    got = attention_ref(q, cache_k, cache_v, torch.arange(seqlen).expand(3, seqlen), 0.37)
    assert rel_err(got, attention_sdpa(q, k, v, 0.37)) < 1e-6


def test_mixer_equals_mamba_ssm_mha(model):
    cfg = model.config
    hidden = torch.randn(2, 11, cfg.d_model, generator=torch.Generator().manual_seed(1))
    for j, layer in enumerate(cfg.attn_layer_idx):
        mixer = model.backbone.layers[layer].mixer
        state = model.new_state(2, max_seq_len=16)
        with torch.no_grad():
            got = mixer(hidden, state.key[j], state.value[j], state.length,
                        state.attn_conv[j] if state.attn_conv else None)
            want = _mha_without_cache(mixer, hidden)
        assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("k", [1, 4])
def test_prefill_then_decode_equals_longer_prefill(model, k):
    ids = torch.randint(0, model.config.vocab_size, (3, 14), generator=torch.Generator().manual_seed(k))
    full = model(ids)
    state = model.new_state(3, max_seq_len=20)
    logits = [model.prefill(ids[:, :-k], state, chunk_len=3)]  # chunked prefill too
    logits += [model.decode(ids[:, t:t + 1], state) for t in range(14 - k, 14)]
    assert rel_err(torch.cat(logits, 1), full[:, 13 - k:]) < 1e-5
    assert state.length.tolist() == [14, 14, 14]


def test_rows_at_different_positions_equal_each_alone(model):
    """A batch whose rows hold different lengths (the scheduler's slots) == each row run alone."""
    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, model.config.vocab_size, (1, n), generator=gen) for n in (2, 7, 4)]
    alone, states = [], []
    for p in prompts:
        state = model.new_state(1, max_seq_len=12)
        model.prefill(p, state)
        states.append(state)
    step = torch.randint(0, model.config.vocab_size, (3, 1), generator=gen)
    for r, state in enumerate(states):
        alone.append(model.decode(step[r:r + 1], state.clone()))
    batch = states[0].with_tensors([torch.cat(ts) for ts in zip(*(s.tensors() for s in states))])
    assert batch.length.tolist() == [2, 7, 4]
    assert rel_err(model.decode(step, batch), torch.cat(alone)) < 1e-6


def test_overflow_is_refused_before_any_write(model):
    state = model.new_state(2, max_seq_len=6)
    model.prefill(torch.ones(2, 4, dtype=torch.int64), state)
    before = [t.clone() for t in state.tensors()]
    with pytest.raises(ParameterError, match="max_seq_len"):
        model.prefill(torch.ones(2, 3, dtype=torch.int64), state)
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors()))
    model.decode(torch.ones(2, 1, dtype=torch.int64), state)
    model.decode(torch.ones(2, 1, dtype=torch.int64), state)  # exactly full
    with pytest.raises(ParameterError, match="max_seq_len"):
        model.decode(torch.ones(2, 1, dtype=torch.int64), state)
