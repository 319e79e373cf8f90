"""native/prefill_split.py on the CPU: where a chunk is cut (part_bounds), and a wavefront of parts on stand-in
streams and events with the kernels as their references: the logits and state of the chunk prefilled in one go,
every part's conv and scan of a layer enqueued after a wait for the previous part's record of that same layer,
the side streams forked from the caller's stream and joined back into it."""
import dataclasses
import types
from collections import Counter

import pytest
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.errors import ParameterError
from mamba_deploy.models.state import InferenceState
from mamba_deploy.native import prefill as P, prefill_split as S
from mamba_deploy.ops import cuda as K
from prefill_refs import PREFILL, FakeWavefront, patch_prefill_kernels, prefill_weights


@pytest.mark.parametrize("n,parts,step,want", [
    (2048, 2, 256, [(0, 1024), (1024, 2048)]),
    (2048, 4, 16, [(0, 512), (512, 1024), (1024, 1536), (1536, 2048)]),
    (2048, 1, 16, [(0, 2048)]),
    (300, 2, 16, [(0, 300)]),                      # two parts of >= 256 do not fit
    (600, 2, 256, [(0, 256), (256, 600)]),         # the cut on a multiple of 256
    (1000, 3, 256, [(0, 256), (256, 1000)]),       # a third part would be 232 tokens
])
def test_part_bounds(n, parts, step, want):
    assert S.part_bounds(n, parts, step) == want


def test_part_bounds_cover_the_chunk_on_aligned_cuts():
    for n in range(1, 5000, 37):
        for parts in (1, 2, 3, 4, 8):
            for step in (16, 64, 256):
                bounds = S.part_bounds(n, parts, step)
                assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) <= parts
                assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
                assert all(hi % step == 0 for _, hi in bounds[:-1])
                assert len(bounds) == 1 or all(hi - lo >= S.MIN_PART_TOKENS for lo, hi in bounds)
    assert len(S.part_bounds(4096, 4, 256)) == 4 and len(S.part_bounds(1024, 2, 256)) == 2


def _engine(arch, monkeypatch, parts):
    """A stand-in NativeEngine of 3 layers on the CPU (the kernels as references, logged) and its wavefront."""
    patch_prefill_kernels(monkeypatch)
    monkeypatch.setattr(S, "MIN_PART_TOKENS", 8)
    wavefront = FakeWavefront()
    monkeypatch.setattr(K, "causal_conv1d", wavefront.logged(K.causal_conv1d, "conv"))
    for scan in ("selective_scan", "chunk_scan"):
        monkeypatch.setattr(K, scan, wavefront.logged(getattr(K, scan), "scan"))
    cfg, (emb, head, norm_f, layers) = prefill_weights({**PREFILL[arch], "n_layer": 3})
    eng = types.SimpleNamespace(config=cfg, dtype=torch.float32, unit=None, layers=layers, emb=emb, head=head,
                                norm_f=norm_f, prefill_split=parts, fold_gated_norm=False,
                                max_batch=S.AUTO_MAX_DECODE_BATCH)
    return eng, wavefront


def _one_go(eng, ids, state, all_logits, pad):
    hidden, residual, factor = eng.emb[ids], None, None
    for L in eng.layers:
        hidden, residual, factor = P.layer(eng, L, hidden, residual, state, pad=pad, factor=factor)
    return P.head_logits(eng, hidden, residual, all_logits, factor)


def _check_order(log, streams, layers):
    """Each part's conv / scan launch of layer i follows a wait whose event part j-1 recorded after its own
    launch i of that kind; the side streams fork off the caller before any launch and join it after all."""
    waited, launches = {}, Counter()
    for entry in log:
        if entry[0] == "wait":
            waited[entry[1], entry[2]] = entry[3]
        elif entry[0] == "launch":
            _, stream, kind = entry
            j = streams.index(stream)
            if j:
                assert waited.pop((stream, kind)) == (streams[j - 1], kind, launches[stream, kind]), entry
            launches[stream, kind] += 1
    assert set(launches.values()) == {layers} and len(launches) == 2 * len(streams)
    first = next(i for i, e in enumerate(log) if e[0] == "launch")
    last = max(i for i, e in enumerate(log) if e[0] == "launch")
    assert {e[1] for e in log[:first] if e[0] == "join"} == set(streams[:-1])
    assert {e[2] for e in log[last:] if e[0] == "join" and e[1] == "caller"} == set(streams[:-1])


@pytest.mark.parametrize("arch", list(PREFILL))
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("all_logits", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_wavefront_equals_the_chunk_in_one_go(monkeypatch, arch, parts, all_logits, padded):
    eng, wavefront = _engine(arch, monkeypatch, parts)
    cfg, n = eng.config, 40
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (2, n), generator=gen)
    pad = P.left_padding(cfg, (2, n), [n, 21], torch.device("cpu"))[0] if padded else None
    state, alone = InferenceState.zeros(cfg, 2, torch.float32), InferenceState.zeros(cfg, 2, torch.float32)
    assert S.applies(eng, n)
    got = S.run(eng, wavefront, ids, state, all_logits, pad=pad)
    log = list(wavefront.log)  # before the chunk in one go adds its own launches
    want = _one_go(eng, ids, alone, all_logits, pad)
    keep = slice(None) if not padded else slice(n - 21, None)  # logits at pad positions mean nothing
    torch.testing.assert_close(got[1:, keep], want[1:, keep], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got[:1], want[:1], rtol=2e-5, atol=2e-5)
    for mine, theirs in zip(state.tensors(), alone.tensors()):
        torch.testing.assert_close(mine, theirs, rtol=2e-5, atol=2e-5)
    streams = [s.name for s in wavefront.streams[:parts - 1]] + ["caller"]
    assert len(S.part_bounds(n, parts, S.align(cfg))) == parts
    _check_order(log, streams, layers=3)
    kept = [e for e in log if e[0] == "keep"]
    assert kept == [("keep", "caller")] * (parts - 1 if all_logits else 0)  # the side parts' logits


def test_applies_only_to_split_engines_of_mamba_layers_and_long_chunks(monkeypatch):
    eng, _ = _engine("mamba1", monkeypatch, 2)
    assert S.applies(eng, 24) and not S.applies(eng, 23)  # a cut at 16 (the scan tile), parts of >= 8 tokens
    eng.prefill_split = 1
    assert not S.applies(eng, 4096)
    eng.prefill_split, eng.config = 2, parse_config({**PREFILL["mamba1"], "n_layer": 2, "attn_layer_idx": [1],
                                                     "attn_cfg": {"num_heads": 4, "causal": True}})
    assert not S.applies(eng, 4096)


def test_the_default_splits_graphed_mamba1_chunks_of_one_row_only(monkeypatch):
    """prefill_split None (the engine's default): AUTO_PARTS for a prefill graph's batch-1 piece of Mamba1 layers of
    at most AUTO_MAX_D_INNER channels or Mamba2 layers of more, in an engine of max_batch <= AUTO_MAX_DECODE_BATCH;
    whole chunks eager (an eager split is bound by the host), at batch > 1, for other widths and in an engine that
    decodes more rows; a number given is kept whatever the model, batch, path and max_batch."""
    eng, _ = _engine("mamba1", monkeypatch, None)
    assert S.parts(eng, 1, graphed=True) == S.AUTO_PARTS == 2 and S.applies(eng, 24, 1, graphed=True)
    eng.max_batch = S.AUTO_MAX_DECODE_BATCH + 1
    assert S.parts(eng, 1, graphed=True) == 1 and not S.applies(eng, 4096, 1, graphed=True)
    eng.prefill_split = 2
    assert S.parts(eng, 1, graphed=True) == 2
    eng.prefill_split, eng.max_batch = None, S.AUTO_MAX_DECODE_BATCH
    assert S.bounds(eng, 24, 1, graphed=True) == [(0, 16), (16, 24)]
    assert S.parts(eng, 1) == 1 and not S.applies(eng, 4096, 1) and S.bounds(eng, 4096, 1) == [(0, 4096)]
    assert S.parts(eng, 2, graphed=True) == 1 and not S.applies(eng, 4096, 2, graphed=True)
    eng.config = dataclasses.replace(eng.config, d_model=S.AUTO_MAX_D_INNER // eng.config.expand + 8)
    assert eng.config.d_inner > S.AUTO_MAX_D_INNER and S.parts(eng, 1, graphed=True) == 1
    eng.config = dataclasses.replace(eng.config, d_model=S.AUTO_MAX_D_INNER // eng.config.expand)
    assert eng.config.d_inner == S.AUTO_MAX_D_INNER and S.parts(eng, 1, graphed=True) == 2
    eng2, _ = _engine("mamba2", monkeypatch, None)
    assert S.parts(eng2, 1, graphed=True) == 1 and not S.applies(eng2, 4096, 1, graphed=True)
    narrow = eng2.config
    eng2.config = dataclasses.replace(narrow, d_model=S.AUTO_MAX_D_INNER // narrow.expand + 8)
    assert eng2.config.d_inner > S.AUTO_MAX_D_INNER and S.parts(eng2, 1, graphed=True) == 2
    assert S.parts(eng2, 1) == 1 and S.parts(eng2, 2, graphed=True) == 1
    eng2.config = narrow
    eng2.prefill_split = 3
    assert S.parts(eng2, 8) == 3 and S.applies(eng2, 4096, 8)


def test_prompt_plan_names_a_full_chunks_path_and_parts(monkeypatch):
    """prompt_plan: the first chunk (at most chunk_len tokens) replays a prefill graph where the state is the pool
    and the graphs take the chunk, and is cut as bounds() cuts it on that path."""
    eng, _ = _engine("mamba1", monkeypatch, None)
    eng.chunk_len = 2048
    eng.prefill_graphs = types.SimpleNamespace(applies=lambda batch, n, all_logits: n <= 1024 and batch == 1)
    assert S.prompt_plan(eng, 1024) == (True, 2)
    assert S.prompt_plan(eng, 1024, pooled=False) == (False, 1)     # eager: whole by default
    assert S.prompt_plan(eng, 32768) == (False, 1)                  # a 2,048-token chunk the graphs do not take
    eng.prefill_split = 4
    assert S.prompt_plan(eng, 32768) == (False, 4)                  # a number given splits eager chunks too
    eng.prefill_split, eng.max_batch = None, S.AUTO_MAX_DECODE_BATCH + 1
    assert S.prompt_plan(eng, 1024) == (True, 1)


def test_the_default_cuts_a_graphed_batch_1_mamba1_chunk_in_two(monkeypatch):
    eng, wavefront = _engine("mamba1", monkeypatch, None)
    state = InferenceState.zeros(eng.config, 1, torch.float32)
    S.run(eng, wavefront, torch.zeros(1, 40, dtype=torch.long), state, False, graphed=True)
    assert ("join", "caller", "side0") in wavefront.log
    assert not any(e[1:] == ("caller", "side1") for e in wavefront.log if e[0] == "join")


def test_side_streams_join_the_caller_when_a_launch_raises(monkeypatch):
    eng, wavefront = _engine("mamba2", monkeypatch, 2)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("a launch failed")
    monkeypatch.setattr(K, "chunk_scan", failing)
    state = InferenceState.zeros(eng.config, 1, torch.float32)
    with pytest.raises(ValueError, match="a launch failed"):
        S.run(eng, wavefront, torch.zeros(1, 40, dtype=torch.long), state, False)
    assert wavefront.log[-1] == ("join", "caller", "side0")


def test_side_streams_are_redrawn_apart_from_the_caller_and_each_other(monkeypatch):
    """torch's streams come round-robin from a pool: a side stream that is the caller's stream (or another side
    stream) would serialise its part; Wavefront.side draws again until each is apart."""
    handles = iter([5, 7, 7, 9, 3])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: types.SimpleNamespace(cuda_stream=next(handles)))
    monkeypatch.setattr(torch.cuda, "Event", lambda: object())
    wavefront = S.Wavefront(torch.device("cuda", 0))
    streams, events = wavefront.side(2, types.SimpleNamespace(cuda_stream=5))
    assert [s.cuda_stream for s in streams] == [7, 9] and len(events) == 2
    assert [s.cuda_stream for s in wavefront.side(2, types.SimpleNamespace(cuda_stream=7))[0]] == [3, 9]
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: types.SimpleNamespace(cuda_stream=5))
    with pytest.raises(RuntimeError, match="no CUDA stream apart"):
        S.Wavefront(torch.device("cuda", 0)).side(1, types.SimpleNamespace(cuda_stream=5))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_engine_refuses_a_bad_prefill_split(bad):
    from mamba_deploy.native.engine import NativeEngine

    cfg = parse_config({"d_model": 64, "n_layer": 1, "vocab_size": 50})
    with pytest.raises(ParameterError, match="prefill_split must be an integer >= 1"):
        NativeEngine(cfg, {}, device="cpu", prefill_split=bad)
