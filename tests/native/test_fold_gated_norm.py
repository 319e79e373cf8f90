"""The folded gated norm on the GPU (NativeEngine(fold_gated_norm=True): Mamba2 prefill and decode with one norm
group): the row norm's factor (x_sumsq) and the decode step's fold against torch; a folded prefill against the
unfolded one (eager and as prefill graphs, with the split prefill too), no gated norm launched, and the greedy
tokens after it unchanged; folded decode steps against unfolded ones, graph == eager bit for bit."""
import pytest
import torch
from prompts import ids

from mamba_deploy.native import prefill as P

pytestmark = pytest.mark.gpu

# folded against unfolded: two roundings apart, each about as far from the reference as the engine tests allow
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
ONE_GROUP = {"d_model": 256, "n_layer": 4, "vocab_size": 1000, "pad_vocab_size_multiple": 16,
             "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "headdim": 32, "ngroups": 1, "chunk_size": 16},
             "tie_embeddings": False}


@pytest.fixture(scope="module")
def one_group(tmp_path_factory):
    from mamba_deploy.random_init import make_random_checkpoint

    return make_random_checkpoint(ONE_GROUP, tmp_path_factory.mktemp("one_group"), dtype=torch.float32, seed=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_row_norm_applies_the_folded_factor(G, rel_err, dtype):
    rows, hidden, heads, dim, eps = 37, 512, 8, 4096, 1e-5
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    residual = torch.randn(rows, hidden, device="cuda")
    weight = (torch.randn(hidden, device="cuda") * 0.5 + 1).to(dtype)
    sumsq = (torch.rand(rows, 2 * heads, device="cuda") * 50 + 1)[:, :heads]  # a row stride past its count
    out = torch.full_like(x, float("nan"))
    residual_out = torch.full_like(residual, float("nan"))
    G.row_norm(x, residual, weight, eps, out=out, residual_out=residual_out, x_sumsq=sumsq, sumsq_dim=dim,
               sumsq_eps=eps)
    v = x.float() * torch.rsqrt(sumsq.sum(-1, keepdim=True) / dim + eps) + residual
    want = v * torch.rsqrt(v.square().mean(-1, keepdim=True) + eps) * weight.float()
    assert rel_err(residual_out, v) <= 1e-6
    assert rel_err(out, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("graphs", [False, True])
def test_folded_prefill_equals_the_unfolded_one(native, G, rel_err, one_group, monkeypatch, dtype, graphs):
    options = dict(dtype=dtype, max_batch=4, **({} if graphs else {"prefill_graph_tokens": 0}))
    folded = native.load_engine(one_group, fold_gated_norm=True, **options)
    plain = native.load_engine(one_group, **options)
    assert all(P.fold_applies(folded.config, L, dtype) for L in folded.layers)
    gated = []
    launch = G.row_norm
    monkeypatch.setattr(G, "row_norm", lambda *a, **k: gated.append(k.get("gate", False)) or launch(*a, **k))
    prompt = ids(2, 320, 1)  # graphs: two pieces (256, 64), both in the SSD form; more than 3 pieces stay eager
    got_state, want_state = folded.new_state(2), plain.new_state(2)
    got = folded.prefill(prompt, got_state)
    assert not graphs or folded.prefill_graphs.graphs, "no prefill graph was captured"
    assert True not in gated, "a gated norm ran although folded"
    want = plain.prefill(prompt, want_state)
    assert rel_err(got, want) <= TOL[dtype]
    for mine, theirs in zip(got_state.tensors(), want_state.tensors()):
        assert rel_err(mine, theirs) <= TOL[dtype]
    if dtype == torch.float32:  # greedy tokens after the prefill (and the folded engine's decode folds too)
        nxt_f, nxt_p = got.argmax(-1), want.argmax(-1)
        assert torch.equal(nxt_f, nxt_p)
        for _ in range(8):
            nxt_f = folded.decode(nxt_f, got_state).argmax(-1)
            nxt_p = plain.decode(nxt_p, want_state).argmax(-1)
            assert torch.equal(nxt_f, nxt_p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_folded_split_prefill_equals_folded_chunks_bitwise(native, one_group, dtype):
    from mamba_deploy.native.prefill_split import MIN_PART_TOKENS as PART

    split = native.load_engine(one_group, dtype=dtype, max_batch=2, prefill_graph_tokens=0, prefill_split=2,
                               fold_gated_norm=True)
    chunks = native.load_engine(one_group, dtype=dtype, max_batch=2, prefill_graph_tokens=0, chunk_len=PART,
                                fold_gated_norm=True)
    prompt = ids(2, 2 * PART, 2)
    mine, theirs = split.new_state(2), chunks.new_state(2)
    for all_logits in (False, True):
        assert torch.equal(split.prefill(prompt, mine, all_logits=all_logits),
                           chunks.prefill(prompt, theirs, all_logits=all_logits))
        for a, b in zip(mine.tensors(), theirs.tensors()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
# batch 1 (unfolded: a row a warp; folded: 4), 16-byte state accesses or not, a batch of 64
@pytest.mark.parametrize("batch,nheads,headdim,dstate", [(1, 64, 64, 128), (5, 6, 16, 32), (64, 4, 32, 256)])
def test_mamba2_step_folds_the_gated_norm(G, rel_err, dtype, state_dtype, batch, nheads, headdim, dstate):
    gen = torch.Generator(device="cuda").manual_seed(batch)
    rnd = lambda *shape, scale=1.0: torch.randn(*shape, device="cuda", generator=gen) * scale  # noqa: E731
    sdt, d = torch.float32 if state_dtype == "float32" else dtype, nheads * headdim
    buf = rnd(batch, 2 * d + 2 * dstate + nheads).to(dtype)  # z | x | B | C | dt: slices of one in_proj row
    z, x, B, C, dt = buf.split([d, d, dstate, dstate, nheads], dim=1)
    A, D, dt_bias = -torch.exp(rnd(nheads, scale=0.5)), rnd(nheads), rnd(nheads, scale=0.5) - 3.0
    weight = (1 + rnd(d, scale=0.1)).to(dtype)
    plain_state = rnd(batch, nheads, headdim, dstate).to(sdt)
    folded_state = plain_state.clone()
    y = torch.full((batch, d), float("nan"), dtype=dtype, device="cuda")
    G.mamba2_step(plain_state, x, dt, A, B, C, D, dt_bias, (0.001, 0.1), out=y)
    count = G.fold_sumsq_count(d)
    sumsq = torch.full((batch, 2 * count), float("nan"), device="cuda")[:, :count]  # a row stride past its count
    out = torch.full_like(y, float("nan"))
    G.mamba2_step(folded_state, x, dt, A, B, C, D, dt_bias, (0.001, 0.1), out=out,
                  fold=dict(z=z, weight=weight, sumsq=sumsq))
    assert torch.equal(folded_state, plain_state), "the fold changed the state update"
    gated = y.float() * torch.nn.functional.silu(z.float())
    assert rel_err(out, gated * weight.float()) <= TOL[dtype]
    assert rel_err(sumsq, gated.square().unflatten(1, (count, 16)).sum(-1)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_folded_decode_equals_the_unfolded_one(native, G, rel_err, one_group, monkeypatch, dtype, batch):
    from mamba_deploy.native import decode as D

    plain = native.load_engine(one_group, dtype=dtype, max_batch=4)
    prompt = ids(batch, 40, 3)
    state = plain.new_state(batch)
    tokens, want = [plain.prefill(prompt, state).argmax(-1)], []
    for _ in range(6):
        want.append(plain.decode(tokens[-1], state).clone())  # decode returns the engine's reused logits buffer
        tokens.append(want[-1].argmax(-1))
    gated = []
    launch = G.row_norm
    monkeypatch.setattr(G, "row_norm", lambda *a, **k: gated.append(k.get("gate", False)) or launch(*a, **k))
    graphed = native.load_engine(one_group, dtype=dtype, max_batch=4, fold_gated_norm=True)
    eager = native.load_engine(one_group, dtype=dtype, max_batch=4, fold_gated_norm=True)
    assert all(D.fold_decode(graphed, batch, L) for L in graphed.layers)
    states = [graphed.new_state(batch), eager.new_state(batch)]
    for eng, s in zip((graphed, eager), states):
        eng.prefill(prompt, s)  # both through the prefill graphs (an engine without graphs prefills in one chunk)
    eager.use_graphs = False
    for step, token in enumerate(tokens[:-1]):
        got = graphed.decode(token, states[0])
        assert torch.equal(got, eager.decode(token, states[1])), "graph != eager"
        assert rel_err(got, want[step]) <= TOL[dtype]
    assert gated and True not in gated, "a gated norm ran although folded"
