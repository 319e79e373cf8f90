"""Parts of the native engine's decode step on the CPU, the kernels they launch replaced by those kernels'
references: Falcon-Mamba's norm step (`native.prefill.dt_bc_norm`: the slices it normalises, in place, are exactly
dt, B and C) and the gated MLP step (`native.decode.mlp_step` == the reference Block's norm2 + GatedMLP)."""
import types

import pytest
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.native import decode as native_decode
from mamba_deploy.native import prefill as native_prefill
from mamba_deploy.native import weights as native_weights
from mamba_deploy.ops import cuda as K
from mamba_deploy.ops import rms_norm_ref
from prefill_refs import PREFILL, add_norm_reference, kernel_reference, patch_prefill_kernels, prefill_weights


@pytest.mark.parametrize("dt_rank,d_state", [(20, 16), (5, 8), (256, 16)])
@pytest.mark.parametrize("shape", [(3,), (2, 7)])  # decode rows of the static buffer; a prefill chunk
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dt_bc_norm_equals_reference(monkeypatch, dt_rank, d_state, shape, dtype):
    cfg = parse_config({"model_type": "falcon_mamba", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 50,
                        "state_size": d_state, "time_step_rank": dt_rank, "mixer_rms_eps": 1e-3})
    monkeypatch.setattr(K, "gated_rms_norm", kernel_reference)
    unit = torch.ones(dt_rank + 2 * d_state, dtype=dtype)
    width = dt_rank + 2 * d_state
    if len(shape) == 1:  # decode: rows [:b] of the static (max_batch, width) buffer
        xdbl = (torch.randn(shape[0] + 2, width, dtype=dtype) * 3)[:shape[0]]
    else:  # prefill: x_proj's fresh (batch, seq, width) output
        xdbl = torch.randn(*shape, width, dtype=dtype) * 3
    dt, B, C = torch.split(xdbl.clone(), [dt_rank, d_state, d_state], dim=-1)
    native_prefill.dt_bc_norm(cfg, unit, xdbl)
    want = torch.cat([rms_norm_ref(t, 1e-3) for t in (dt, B, C)], dim=-1)
    assert torch.equal(xdbl, want)
    assert not torch.equal(xdbl, torch.cat([dt, B, C], -1))


def test_dt_bc_norm_does_nothing_for_plain_mamba(monkeypatch):
    cfg = parse_config({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 50})
    monkeypatch.setattr(K, "gated_rms_norm", None)  # would raise if called
    xdbl = torch.randn(2, cfg.dt_rank + 2 * cfg.d_state)
    before = xdbl.clone()
    native_prefill.dt_bc_norm(cfg, None, xdbl)
    assert torch.equal(xdbl, before)


@pytest.mark.parametrize("rms_norm", [True, False])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_mlp_step_equals_reference_block(monkeypatch, rms_norm, residual_in_fp32):
    from mamba_deploy.models.lm import Block

    cfg = parse_config({"d_model": 40, "n_layer": 1, "vocab_size": 50, "d_intermediate": 130, "rms_norm": rms_norm,
                        "residual_in_fp32": residual_in_fp32, "ssm_cfg": {"d_state": 8}})
    monkeypatch.setattr(K, "add_norm", add_norm_reference)
    monkeypatch.setattr(native_decode.G, "row_norm_ok", lambda *a: False)
    block = Block(cfg, torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5 + (1 if p.dim() == 1 else 0))
    rows, b = 6, 4  # the static buffers hold 6 rows; the step uses the first 4 (a float32 model: so does the residual)
    eng = types.SimpleNamespace(
        config=cfg, gemv_max_batch=0, tc_max_batch=0, hidden=torch.randn(rows, 40, generator=gen),
        residual=torch.randn(rows, 40, generator=gen), normed=torch.zeros(rows, 40),
        mlp_h=torch.zeros(rows, 2 * cfg.d_intermediate), mlp_y=torch.zeros(rows, cfg.d_intermediate))
    layer = native_weights.Layer(*[None] * 11, norm2_w=block.norm2.weight.detach(),
                                 norm2_b=None if rms_norm else block.norm2.bias.detach(),
                                 fc1_w=block.mlp.fc1.weight.detach(), fc2_w=block.mlp.fc2.weight.detach())
    hidden, residual = eng.hidden[:b].clone(), eng.residual[:b].clone()
    untouched = eng.hidden[b:].clone()
    native_decode.mlp_step(eng, b, layer)
    with torch.no_grad():
        normed, want_residual = block.norm2.add_forward(hidden, residual, residual_in_fp32)
        want = block.mlp(normed)
    assert cfg.d_intermediate == 256
    torch.testing.assert_close(eng.residual[:b], want_residual, rtol=0, atol=0)
    torch.testing.assert_close(eng.hidden[:b], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(eng.hidden[b:], untouched)


HYBRIDS = {  # attention without the q k v conv (the conv prefill is a CUDA kernel): rotary GQA + MHA's MLP; NemotronH
    "mha": {"d_model": 48, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 12},
            "attn_layer_idx": [1], "attn_cfg": {"causal": True, "num_heads": 6, "num_heads_kv": 2, "head_dim": 10,
                                                "rotary_emb_dim": 6, "mlp_dim": 20, "softmax_scale": 0.4}},
    "nemotron_h": {"model_type": "nemotron_h", "vocab_size": 50, "hidden_size": 48, "hybrid_override_pattern": "M*-",
                   "mamba_num_heads": 4, "mamba_head_dim": 12, "n_groups": 2, "ssm_state_size": 8,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "intermediate_size": 40},
}


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_attention_and_mlp_prefill_equal_the_reference_mixers(name):
    """native.hybrid's prefill of attention (two chunks over the KV cache, ragged lengths) and NemotronH's MLP
    block, on weights converted as the engine loads them, against the reference model's mixers."""
    from mamba_deploy.export.weights import export_name_and_tensor
    from mamba_deploy.models import MambaLM
    from mamba_deploy.native import hybrid
    from mamba_deploy.random_init import init_weights_

    cfg = parse_config(HYBRIDS[name])
    model = MambaLM(cfg, torch.float32)
    init_weights_(model, seed=1)
    weights = dict(export_name_and_tensor(k, p, torch.float32) for k, p in model.named_parameters())
    _, _, _, layers = native_weights.device_weights(cfg, weights, torch.float32, torch.device("cpu"))
    attn = next(L for L in layers if L.kind == "attention")
    mixer = model.backbone.layers[cfg.attn_layer_idx[0]].mixer
    gen = torch.Generator().manual_seed(2)
    mine, theirs = model.new_state(3, max_seq_len=16), model.new_state(3, max_seq_len=16)
    for state in (mine, theirs):
        state.length.copy_(torch.tensor([0, 4, 9]))
    for n in (5, 2):
        normed = torch.randn(3, n, cfg.d_model, generator=gen)
        got = hybrid.attention_prefill(cfg, attn, normed, mine, *hybrid.chunk_positions(mine, n))
        with torch.no_grad():
            want = mixer(normed, theirs.key[0], theirs.value[0], theirs.length)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.key[0], theirs.key[0], rtol=0, atol=0)
        torch.testing.assert_close(mine.value[0], theirs.value[0], rtol=0, atol=0)
        for state in (mine, theirs):
            state.length += n
    if cfg.mlp_layer_idx:
        block = model.backbone.layers[cfg.mlp_layer_idx[0]].mixer
        mlp = next(L for L in layers if L.kind == "mlp")
        x = torch.randn(2, 3, cfg.d_model, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(hybrid.mlp_prefill(mlp, x), block(x), rtol=1e-6, atol=1e-6)


def _prefill_layer(arch, monkeypatch):
    """(cfg, its one Mamba layer's weights): random float32 weights, the layer's kernels as their references."""
    patch_prefill_kernels(monkeypatch)
    cfg, (*_, layers) = prefill_weights(PREFILL[arch])
    return cfg, layers[0]


@pytest.mark.parametrize("arch", list(PREFILL))
def test_mamba_mixer_on_pool_rows_equals_it_on_the_gathered_rows(monkeypatch, arch):
    """native.prefill.mamba_mixer with `rows` (what a prefill graph replays on: the state pool through a row
    index) == the same layer on a copy of those rows; the other rows of the pool are not touched."""
    from mamba_deploy.models.state import InferenceState

    cfg, layer = _prefill_layer(arch, monkeypatch)
    gen = torch.Generator().manual_seed(4)
    pool = InferenceState.zeros(cfg, 5, torch.float32)
    for t in pool.tensors():
        t.copy_(torch.randn(t.shape, generator=gen))
    before, rows = pool.clone(), torch.tensor([3, 0])
    gathered = pool.with_tensors([t[rows].clone() for t in pool.tensors()])
    normed = torch.randn(2, 7, cfg.d_model, generator=gen)
    got = native_prefill.mamba_mixer(cfg, layer, normed, pool, None, rows)[0]
    want = native_prefill.mamba_mixer(cfg, layer, normed, gathered, None)[0]
    assert torch.equal(got, want)
    others = torch.tensor([1, 2, 4])
    for now, old, new in zip(pool.tensors(), before.tensors(), gathered.tensors()):
        assert torch.equal(now[rows], new) and torch.equal(now[others], old[others])
    assert not torch.equal(pool.ssm[0][rows], before.ssm[0][rows]), "the state did not change: the test shows nothing"


@pytest.mark.parametrize("arch", list(PREFILL))
def test_left_padded_prefill_equals_each_prompt_alone(monkeypatch, arch):
    """mamba_mixer of prompts of lengths 9, 4 and 1 right-aligned in one (3, 9) batch (pad: left padding)
    gives each row the state and outputs of its prompt prefilled alone from a zero state: the pad positions
    leave the zero state as it was (conv input 0, dt at its floor). Unmasked, the padding would change them."""
    from mamba_deploy.models.state import InferenceState

    cfg, layer = _prefill_layer(arch, monkeypatch)
    gen = torch.Generator().manual_seed(5)
    lengths, n = [9, 4, 1], 9
    normed = torch.randn(3, n, cfg.d_model, generator=gen)
    pad, padded_to = native_prefill.left_padding(cfg, (3, n), lengths, torch.device("cpu"))
    assert padded_to == 8 and pad.sum().item() == 5 + 8
    state = InferenceState.zeros(cfg, 3, torch.float32)
    got = native_prefill.mamba_mixer(cfg, layer, normed, state, None, pad=pad)[0]
    unmasked = InferenceState.zeros(cfg, 3, torch.float32)
    native_prefill.mamba_mixer(cfg, layer, normed, unmasked, None)
    for r, k in enumerate(lengths):
        alone = InferenceState.zeros(cfg, 1, torch.float32)
        want = native_prefill.mamba_mixer(cfg, layer, normed[r:r + 1, n - k:], alone, None)[0]
        torch.testing.assert_close(got[r:r + 1, n - k:], want, rtol=1e-5, atol=1e-6)
        for padded, single in zip(state.tensors(), alone.tensors()):
            torch.testing.assert_close(padded[r:r + 1], single, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked.ssm[0][1], state.ssm[0][1]), "padding unmasked changes nothing: no test"


@pytest.mark.parametrize("lengths,problem", [([3], "must be 2 prompt lengths in 1..5"),
                                             ([0, 5], "must be 2 prompt lengths in 1..5"),
                                             ([6, 5], "must be 2 prompt lengths in 1..5"),
                                             ([2.0, 5], "must be 2 prompt lengths in 1..5")])
def test_left_padding_refuses_bad_lengths(lengths, problem):
    from mamba_deploy.errors import ParameterError

    cfg = parse_config(PREFILL["mamba1"])
    with pytest.raises(ParameterError, match=problem):
        native_prefill.left_padding(cfg, (2, 5), lengths, torch.device("cpu"))
    assert native_prefill.left_padding(cfg, (2, 5), None, torch.device("cpu")) == (None, 0)


def test_left_padding_refuses_attention_and_a_dt_floor():
    from mamba_deploy.errors import ParameterError

    hybrid = parse_config({**PREFILL["mamba1"], "n_layer": 2, "attn_layer_idx": [1],
                           "attn_cfg": {"num_heads": 4, "causal": True}})
    with pytest.raises(ParameterError, match="without attention layers"):
        native_prefill.left_padding(hybrid, (1, 3), [2], torch.device("cpu"))
    floor = parse_config({**PREFILL["mamba2"], "ssm_cfg": {**PREFILL["mamba2"]["ssm_cfg"], "dt_limit": [0.001, 0.1]}})
    with pytest.raises(ParameterError, match="dt_limit to start at 0"):
        native_prefill.left_padding(floor, (1, 3), [2], torch.device("cpu"))


@pytest.mark.parametrize("n,want", [(1, [1]), (2, [2]), (3, [2, 1]), (100, [64, 32, 4]),
                                    (255, [128, 64, 32, 16, 8, 4, 2, 1]), (256, [256])])
def test_prefill_graph_pieces(n, want):
    from mamba_deploy.native.prefill_graphs import pieces

    assert pieces(n) == want and sum(want) == n
    with pytest.raises(ValueError, match="at least one token"):
        pieces(0)


@pytest.mark.parametrize("option,names", [("norm_in_gemv", ("in_proj", "x_proj")), ("staged_gemv", ("head",))])
def test_projection_placements_reject_unknown_projections(option, names):
    from mamba_deploy.errors import ParameterError
    from mamba_deploy.native.engine import NativeEngine

    cfg = parse_config({"d_model": 64, "n_layer": 1, "vocab_size": 50})
    with pytest.raises(ParameterError, match=f"{option} must name projections of"):
        NativeEngine(cfg, {}, device="cpu", **{option: names})


@pytest.mark.parametrize("preset,dtype,why", [
    ("mamba-1.4b", torch.float16, None), ("mamba-2.8b", torch.bfloat16, None), ("mamba-130m", torch.float32, None),
    ("mamba-2.8b", torch.float32, "d_inner 5120"), ("mamba2-1.3b", torch.float16, None),
    ("mamba2-2.7b", torch.bfloat16, None)])
def test_persistent_decode_names_what_it_cannot_run(preset, dtype, why):
    """native.persistent.unsupported: None for the presets it runs, else the first reason."""
    from mamba_deploy.native.persistent import unsupported
    from mamba_deploy.random_init import preset_config

    got = unsupported(parse_config(preset_config(preset)), dtype)
    assert got == why if why is None else got.startswith(why)


def test_persistent_decode_refuses_what_it_does_not_run():
    from mamba_deploy.native.persistent import unsupported

    base = {"d_model": 256, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"d_state": 16}}
    cases = {"Falcon-Mamba": {"model_type": "falcon_mamba", "hidden_size": 256, "num_hidden_layers": 2,
                              "vocab_size": 100, "mixer_rms_eps": 1e-6},
             "hybrid": {**base, "attn_layer_idx": [1], "attn_cfg": {"num_heads": 4, "causal": True}},
             "LayerNorm": {**base, "rms_norm": False}, "a gated MLP": {**base, "d_intermediate": 64},
             "a residual": {**base, "residual_in_fp32": False}, "d_model 4104": {**base, "d_model": 4104},
             "gated-norm groups of 64": {**base, "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "ngroups": 8}},
             "Mamba2's MLP part": {**base, "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "d_ssm": 256}},
             "d_state 16": {**base, "ssm_cfg": {"layer": "Mamba2", "d_state": 16}}}
    for words, raw in cases.items():
        why = unsupported(parse_config(raw), torch.float16)
        assert why is not None and words.lower() in why.lower(), (words, why)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("bias", [False, True])
def test_persistent_decode_layer_table_holds_each_layers_pointers(monkeypatch, arch, bias):
    """PersistentDecode's device table (md_mamba1_layer / md_mamba2_layer records): row l holds layer l's weight and
    state-pool addresses in the record's field order, 0 for an absent bias; its params the engine's shapes and
    buffers. Built on the CPU: a stand-in engine and a 9.0 GPU's properties (no launch)."""
    from mamba_deploy.export.weights import export_name_and_tensor
    from mamba_deploy.models import MambaLM
    from mamba_deploy.models.state import InferenceState
    from mamba_deploy.native import persistent as P
    from mamba_deploy.ops import _lib
    from mamba_deploy.random_init import init_weights_

    raw = {"d_model": 256, "n_layer": 3, "vocab_size": 64, "ssm_cfg": {"d_state": 16, "bias": bias}}
    if arch == "mamba2":
        raw["ssm_cfg"] = {"layer": "Mamba2", "d_state": 32, "headdim": 64, "ngroups": 2, "bias": bias}
    cfg, dtype = parse_config(raw), torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(major=9, minor=0, multi_processor_count=132))
    model = MambaLM(cfg, torch.float32)
    init_weights_(model, seed=1)
    weights = dict(export_name_and_tensor(k, p, torch.float32) for k, p in model.named_parameters())
    *_, layers = native_weights.device_weights(cfg, weights, dtype, torch.device("cpu"))
    buffers = {name: torch.zeros(1, width, dtype=dtype) for name, width in
               (("xz", cfg.in_proj_dim), ("y", cfg.d_inner), ("hidden", cfg.d_model), ("xdbl", 64))}
    eng = types.SimpleNamespace(config=cfg, dtype=dtype, device=torch.device("cpu"), layers=layers,
                                static=InferenceState.zeros(cfg, 2, dtype), **buffers)
    decode = P.PersistentDecode(eng)

    fields = _lib.MAMBA2_LAYER_FIELDS if arch == "mamba2" else _lib.MAMBA1_LAYER_FIELDS  # gemv.h's (test_lib_abi)
    assert decode.table.shape == (cfg.n_layer, len(fields))
    for L, row in zip(layers, decode.table.tolist()):
        meaning = {"norm_w": L.norm_w, "in_w": L.in_w, "in_b": L.in_b, "conv_w": L.conv_w, "conv_b": L.conv_b,
                   "conv_state": eng.static.conv[L.index], "x_w": L.x_w, "wdt": L.dt_packed, "dt_bias": L.dt_b,
                   "A": L.A, "D": L.D, "ssm_state": eng.static.ssm[L.index], "gnorm_w": L.gnorm_w, "out_w": L.out_w,
                   "out_b": L.out_b}
        assert row == [0 if meaning[f] is None else meaning[f].data_ptr() for f in fields]
        assert (row[fields.index("in_b")] != 0) == bias and (row[fields.index("out_b")] != 0) == bias
    p = decode.params
    assert (p.n_layer, p.d_model, p.d_inner, p.dstate) == (cfg.n_layer, cfg.d_model, cfg.d_inner, cfg.d_state)
    assert (p.xz, p.y, p.hidden, p.layers) == (eng.xz.data_ptr(), eng.y.data_ptr(), eng.hidden.data_ptr(),
                                               decode.table.data_ptr())
    assert isinstance(p, _lib.Mamba2DecodeParams if arch == "mamba2" else _lib.Mamba1DecodeParams)
    assert not decode.failed()
