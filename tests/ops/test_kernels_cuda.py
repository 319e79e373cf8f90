"""The CUDA kernels against their torch references (float32 on the GPU), over dtypes and odd sizes.

Outputs are poisoned with NaN before every launch; errors are ||out - ref|| / ||ref||. Mamba2's chunk scan:
test_chunk_scan_cuda.py.
"""
import pytest
import torch
from cuda_checks import DTYPES, SEQS, check, dt_inputs, f32, mamba2_inputs, nan_like, rnd

from mamba_deploy.ops import (add_norm_ref, causal_conv1d_ref, causal_conv1d_update_ref, gated_rms_norm_ref,
                              selective_scan_ref, selective_state_update_ref)

pytestmark = pytest.mark.gpu


# ---- causal conv1d ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("seqlen", SEQS)
def test_causal_conv1d(cuda, dtype, batch, seqlen):
    dim, width = 96, 4
    x, w, b, s = rnd(batch, dim, seqlen, dtype=dtype), rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype), \
        rnd(batch, dim, width - 1, dtype=dtype)
    y_ref, s_ref = causal_conv1d_ref(*f32(x, w, b, s))
    y, st = cuda.causal_conv1d(x, w, b, s, out=nan_like(x.shape, dtype), state_out=nan_like(s.shape, dtype))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [2, 3, 4])
def test_causal_conv1d_channel_last_no_state_no_act(cuda, dtype, width):
    batch, dim, seqlen = 3, 200, 37
    xbl = rnd(batch, seqlen, 2 * dim, dtype=dtype)
    x = xbl[:, :, :dim].transpose(1, 2)  # (batch, dim, seqlen) view, channel stride 1
    w = rnd(dim, width, dtype=torch.float32)
    y_ref, s_ref = causal_conv1d_ref(x.float(), w, None, None, None)
    y, st = cuda.causal_conv1d(x, w, None, None, None, out=nan_like(x.shape, dtype))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", [2, 7, 8, 9, 37, 300])
@pytest.mark.parametrize("with_state", [False, True, "float32"])
def test_causal_conv1d_channel_last_vectorised(cuda, dtype, seqlen, with_state):
    """x and y channel-last (GEMM-output layout), width 4, dim % 8 == 0: the 16-byte kernel (16-bit dtypes;
    float32 takes the generic kernel). Bit for bit the generic kernel's result (y written with another layout),
    and within tolerance of the reference; the state (x's dtype, or float32 as the engine keeps it) on a pool of
    rows, in place."""
    batch, dim, width, pool_size = 3, 264, 4, 7
    xbl = rnd(batch, seqlen, dim + 16, dtype=dtype)
    x = xbl[:, :, 8:8 + dim].transpose(1, 2)  # channel stride 1, 16-byte aligned rows
    w, b = rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    pool = rnd(pool_size, dim, width - 1, dtype=torch.float32 if with_state == "float32" else dtype)
    rows = torch.tensor([5, 0, 3], device="cuda")
    state = pool[rows] if with_state else None
    y_ref, s_ref = causal_conv1d_ref(*f32(x, w, b, state))
    y_last = nan_like((batch, seqlen, dim), dtype).transpose(1, 2)  # channel-last output: the vector kernel
    generic_state = state.clone() if with_state else None
    y_generic, s_generic = cuda.causal_conv1d(x, w, b, generic_state, out=nan_like(x.shape, dtype),
                                              state_out=generic_state)
    if with_state:
        _, st = cuda.causal_conv1d(x, w, b, pool, out=y_last, state_out=pool, state_rows=rows)
        st = pool[rows]
    else:
        _, st = cuda.causal_conv1d(x, w, b, None, out=y_last)
    assert torch.equal(y_last, y_generic) and torch.equal(st, s_generic)
    check("y", y_last, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_causal_conv1d_update_in_place(cuda, dtype, state_dtype, batch):
    """Width 4, in place, 16-bit x: the decode form (causal_conv1d_update4_kernel), else the generic one."""
    dim, width = 130, 4
    sdt = torch.float32 if state_dtype == "float32" else dtype
    x, w, b = rnd(batch, dim, dtype=dtype), rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    state = rnd(batch, dim, width - 1, dtype=torch.float32).to(sdt)
    y_ref, s_ref = causal_conv1d_update_ref(*f32(x, w, b, state))
    y, st = cuda.causal_conv1d_update(x, w, b, state, out=nan_like(x.shape, dtype), state_out=state)
    assert st.data_ptr() == state.data_ptr()
    check("y", y, y_ref, dtype)
    check("state", state, s_ref, torch.float32 if dtype == torch.float32 else dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch", [1, 64])
def test_causal_conv1d_update_forms_agree(cuda, dtype, state_dtype, batch):
    """The decode form's 4 channels a thread (dim % 4 == 0, aligned rows) equals its one channel a thread (x an
    odd column slice) bit for bit, and both match the reference."""
    dim = 264
    sdt = torch.float32 if state_dtype == "float32" else dtype
    w, b = rnd(dim, 4, dtype=dtype), rnd(dim, dtype=dtype)
    wide = rnd(batch, dim + 1, dtype=dtype)
    x_odd, x = wide[:, 1:], wide[:, 1:].clone()  # x_odd: rows 2 bytes off alignment
    state = rnd(batch, dim, 3, dtype=torch.float32).to(sdt)
    state_odd = state.clone()
    y_ref, s_ref = causal_conv1d_update_ref(*f32(x, w, b, state))
    y, _ = cuda.causal_conv1d_update(x, w, b, state, out=nan_like(x.shape, dtype), state_out=state)
    y_odd, _ = cuda.causal_conv1d_update(x_odd, w, b, state_odd, out=nan_like(x.shape, dtype), state_out=state_odd)
    assert torch.equal(y, y_odd) and torch.equal(state, state_odd)
    check("y", y, y_ref, dtype)
    check("state", state, s_ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_causal_conv1d_update_pool_rows(cuda, dtype, state_dtype):
    """The decode form on rows of a pool (state_rows): each row as on its gathered state; other rows untouched."""
    batch, dim, pool_size = 20, 264, 31
    sdt = torch.float32 if state_dtype == "float32" else dtype
    x, w, b = rnd(batch, dim, dtype=dtype), rnd(dim, 4, dtype=dtype), rnd(dim, dtype=dtype)
    pool = rnd(pool_size, dim, 3, dtype=torch.float32).to(sdt)
    rows = torch.randperm(pool_size, device="cuda")[:batch]
    before = pool.clone()
    gathered = pool[rows]
    y_ref, _ = cuda.causal_conv1d_update(x, w, b, gathered, out=nan_like(x.shape, dtype), state_out=gathered)
    y, _ = cuda.causal_conv1d_update(x, w, b, pool, out=nan_like(x.shape, dtype), state_out=pool, state_rows=rows)
    assert torch.equal(y, y_ref) and torch.equal(pool[rows], gathered)
    others = torch.ones(pool_size, dtype=torch.bool, device="cuda")
    others[rows] = False
    assert torch.equal(pool[others], before[others])


def test_causal_conv1d_state_carry(cuda):
    x, w, b = rnd(2, 64, 301), rnd(64, 4), rnd(64)
    y_all, s_all = cuda.causal_conv1d(x, w, b)
    y1, s1 = cuda.causal_conv1d(x[:, :, :150], w, b)
    y2, s2 = cuda.causal_conv1d(x[:, :, 150:], w, b, s1)
    check("y", torch.cat([y1, y2], -1), y_all, torch.float32)
    check("state", s2, s_all, torch.float32)


# ---- Mamba1 selective scan ---------------------------------------------------------------------------

def mamba1_inputs(batch, dim, seqlen, dstate, dtype):
    u, z = rnd(batch, dim, seqlen, dtype=dtype), rnd(batch, dim, seqlen, dtype=dtype)
    delta, bias = dt_inputs((batch, dim, seqlen), dim, dtype)
    A = -torch.empty(dim, dstate, device="cuda").uniform_(0.5, 16)
    B, C = rnd(batch, dstate, seqlen, dtype=dtype), rnd(batch, dstate, seqlen, dtype=dtype)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=rnd(dim), z=z, delta_bias=bias,
                ssm_state=rnd(batch, dim, dstate, scale=0.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("seqlen", SEQS)
@pytest.mark.parametrize("dstate", [16, 128])
def test_selective_scan(cuda, dtype, batch, seqlen, dstate):
    kw = mamba1_inputs(batch, 48, seqlen, dstate, dtype)
    y_ref, s_ref = selective_scan_ref(**{k: v.float() for k, v in kw.items()})
    y, st = cuda.selective_scan(**kw, out=nan_like(kw["u"].shape, dtype),
                                state_out=nan_like(kw["ssm_state"].shape, torch.float32))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("seqlen", [100, 700])
def test_selective_scan_channel_last_odd_sizes(cuda, dtype, gate, seqlen):
    """The native engine's layouts (channel-last views of (batch, seqlen, dim) buffers) through mamba1_split.cu's
    walk (too few channels for mamba1_walk.cu): 37 channels (a partial block), dstate 5, a partial last tile, no D
    / gate or both."""
    _channel_last_scan(cuda, 11, 37, seqlen, 5, dtype, gate)


def _mamba1_params(batch, dim, seqlen, dstate):
    """The shape fields of a Mamba1 scan's params: enough for the launcher's workspace and form queries."""
    from mamba_deploy.ops import _lib

    cfg = _lib.SsmParams()
    cfg.batch, cfg.seqlen, cfg.nheads, cfg.headdim, cfg.dstate, cfg.ngroups = batch, seqlen, dim, 1, dstate, 1
    return cfg


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate", [True, False])
def test_selective_scan_split_walk_every_lane_count(cuda, dtype, gate):
    """mamba1_split.cu at each of its forms (2, 4, 8 threads a channel: batch x channels pick it, for this
    GPU's multiprocessor count) in the native engine's layouts: a partial block of channels, dstate 5, a partial
    last tile of steps, no D / gate or both."""
    from mamba_deploy.ops import _lib

    seen = {}
    for batch, dim in [(1, 37)] + [(b, 4097) for b in range(1, 29)]:
        lanes = _lib.scan_split_lanes(_mamba1_params(batch, dim, 203, 5))
        if lanes and lanes not in seen:
            seen[lanes] = (batch, dim)
            _channel_last_scan(cuda, batch, dim, 203, 5, dtype, gate)
    assert set(seen) == {2, 4, 8}, seen


def _channel_last_scan(cuda, batch, dim, seqlen, dstate, dtype, gate):
    kw = mamba1_inputs(batch, dim, seqlen, dstate, dtype)
    for key in ("u", "delta", "z", "B", "C"):
        kw[key] = kw[key].transpose(1, 2).contiguous().transpose(1, 2)  # same values, unit channel / state stride
    if not gate:
        kw["z"], kw["D"] = None, None
    y_ref, s_ref = selective_scan_ref(**{k: (v.float() if v is not None else None) for k, v in kw.items()})
    y, st = cuda.selective_scan(**kw, out=nan_like((batch, seqlen, dim), dtype).transpose(1, 2),
                                state_out=nan_like(kw["ssm_state"].shape, torch.float32))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_selective_scan_one_pass_walk(cuda, dtype):
    """Batch x channels that fill the GPU (98k threads: over a wave of resident ones on an H200) walk in one pass,
    no workspace: the native engine's batched prefill of many prompts. Channel-last, a partial tile of steps."""
    from mamba_deploy.ops import _lib

    batch, dim, seqlen = 48, 2048, 75
    kw = mamba1_inputs(batch, dim, seqlen, 16, dtype)
    for key in ("u", "delta", "z", "B", "C"):
        kw[key] = kw[key].transpose(1, 2).contiguous().transpose(1, 2)
    y_ref, s_ref = selective_scan_ref(**{k: v.float() for k, v in kw.items()})
    y, st = cuda.selective_scan(**kw, out=nan_like((batch, seqlen, dim), dtype).transpose(1, 2),
                                state_out=nan_like(kw["ssm_state"].shape, torch.float32))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)
    assert _lib.scan_workspace_bytes(_mamba1_params(batch, dim, seqlen, 16)) == 0  # the launcher asks for none


def test_selective_scan_state_carry_half_state(cuda):
    kw = mamba1_inputs(3, 40, 257, 16, torch.float16)
    kw["ssm_state"] = kw["ssm_state"].half()
    y_all, s_all = cuda.selective_scan(**kw)
    first = {k: (v[..., :100] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    second = {k: (v[..., 100:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    y1, s1 = cuda.selective_scan(**first)
    second["ssm_state"] = s1
    y2, s2 = cuda.selective_scan(**second)
    assert s2.dtype == torch.float16  # the state passed between the calls is rounded to fp16
    check("y", torch.cat([y1, y2], -1), y_all, torch.float16)
    check("state", s2, s_all, torch.float16)


# ---- selective state update (decode) ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("dstate", [16, 128])
def test_state_update_mamba1_in_place(cuda, dtype, batch, dstate):
    kw = mamba1_inputs(batch, 200, 1, dstate, dtype)
    args = dict(x=kw["u"][..., 0], dt=kw["delta"][..., 0], A=kw["A"], B=kw["B"][..., 0], C=kw["C"][..., 0],
                D=kw["D"], z=kw["z"][..., 0], dt_bias=kw["delta_bias"])
    state = kw["ssm_state"]
    y_ref, s_ref = selective_state_update_ref(state.clone(), **{k: v.float() for k, v in args.items()})
    y, st = cuda.selective_state_update(state, **args, out=nan_like(args["x"].shape, dtype), state_out=state)
    check("y", y, y_ref, dtype)
    check("state", state, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("headdim", [32, 64, 128])
@pytest.mark.parametrize("ngroups,dstate", [(1, 16), (2, 128)])
def test_state_update_mamba2_in_place(cuda, dtype, batch, headdim, ngroups, dstate):
    kw = mamba2_inputs(batch, 1, 4, headdim, ngroups, dstate, dtype)
    state = kw.pop("initial_state")
    args = {k: (v[:, 0] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    fargs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in args.items()}
    y_ref, s_ref = selective_state_update_ref(state.clone(), **fargs)
    y, st = cuda.selective_state_update(state, **args, out=nan_like(args["x"].shape, dtype), state_out=state)
    check("y", y, y_ref, dtype)
    check("state", state, s_ref, dtype)


# ---- norms -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_rms", [True, False])
@pytest.mark.parametrize("rows,hidden", [(1, 2048), (7, 1000), (129, 4096)])
@pytest.mark.parametrize("first_layer", [True, False])
def test_add_norm(cuda, dtype, is_rms, rows, hidden, first_layer):
    x, w, b = rnd(rows, hidden, dtype=dtype), rnd(hidden, dtype=dtype), rnd(hidden, dtype=dtype)
    res = None if first_layer else rnd(rows, hidden, dtype=torch.float32)
    bias = None if is_rms else b
    o_ref, r_ref = add_norm_ref(*f32(x, res, w, bias), is_rms=is_rms)
    o, r = cuda.add_norm(x, res, w, bias, is_rms=is_rms, out=nan_like(x.shape, dtype),
                         residual_out=res if res is not None else nan_like(x.shape, torch.float32))
    check("out", o, o_ref, dtype)
    check("residual", r, r_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [None, 1024, 128])
@pytest.mark.parametrize("with_z", [True, False])
def test_gated_rms_norm(cuda, dtype, group_size, with_z):
    x, z, w = rnd(3, 5, 4096, dtype=dtype), rnd(3, 5, 4096, dtype=dtype), rnd(4096, dtype=dtype)
    zz = z if with_z else None
    ref = gated_rms_norm_ref(*f32(x, zz, w), group_size=group_size)
    out = cuda.gated_rms_norm(x, zz, w, group_size=group_size, out=nan_like(x.shape, dtype))
    check("out", out, ref, dtype)


def test_bad_inputs_raise(cuda):
    x, w = rnd(2, 8, 5), rnd(8, 4)
    with pytest.raises(ValueError, match="weight"):
        cuda.causal_conv1d(x, rnd(9, 4))
    with pytest.raises(ValueError, match="CUDA"):
        cuda.causal_conv1d(x.cpu(), w)
    with pytest.raises(ValueError, match="dtype"):
        cuda.causal_conv1d(x.to(torch.float64), w)
    kw = mamba2_inputs(1, 4, 4, 32, 1, 16, torch.float32)
    kw["initial_state"] = kw["initial_state"].half()
    with pytest.raises(ValueError, match="state"):
        cuda.chunk_scan(**kw)


@pytest.mark.parametrize("arch", ["mamba1", "mamba1_walk", "mamba2"])
def test_time_parallel_scan_equals_single_walk(cuda, arch, monkeypatch):
    """Long prompt at batch 1: the chunked (time-parallel) launch equals the launch without a workspace, in place
    too. Mamba1 with dstate 32: the state-parallel walk of ssm_scan.cu in chunks / whole; with dstate 16 (8,192
    steps: the two passes take them from 4,096): the two-pass walk of mamba1_walk.cu / mamba1_split.cu's walk."""
    from mamba_deploy.ops import _lib

    dstate, dim, seqlen = (16, 4096, 8192) if arch == "mamba1_walk" else (32, 256, 1500)
    fn, kw, state_key = ((cuda.selective_scan, mamba1_inputs(1, dim, seqlen, dstate, torch.float32), "ssm_state")
                         if arch.startswith("mamba1") else
                         (cuda.chunk_scan, mamba2_inputs(1, 1500, 8, 64, 1, 128, torch.float32), "initial_state"))
    run = lambda **o: fn(**kw, **o)  # noqa: E731
    p_bytes = []
    real = _lib.scan_workspace_bytes
    monkeypatch.setattr(_lib, "scan_workspace_bytes", lambda p: p_bytes.append(real(p)) or p_bytes[-1])
    y_par, s_par = run()
    assert p_bytes[-1] > 0, "the time-parallel form was not used"
    monkeypatch.setattr(_lib, "scan_workspace_bytes", lambda p: 0)
    y_seq, s_seq = run()
    check(f"{arch} y parallel vs single walk", y_par, y_seq, torch.float32)
    check(f"{arch} state parallel vs single walk", s_par, s_seq, torch.float32)
    monkeypatch.setattr(_lib, "scan_workspace_bytes", real)
    state = kw[state_key].clone()
    kw[state_key] = state
    y_in, s_in = run(state_out=state)  # state_out aliases the initial state
    assert s_in.data_ptr() == state.data_ptr()
    check(f"{arch} in-place state", s_in, s_par, torch.float32)
    check(f"{arch} in-place y", y_in, y_par, torch.float32)


# ---- state_rows: batch row b on row state_rows[b] of a state pool == the same launch on a gathered copy ----

def pool_rows(pool: int, batch: int, seed: int) -> torch.Tensor:
    """`batch` distinct rows of a pool of `pool`, unsorted and not contiguous (for batch >= 3), on the GPU."""
    rows = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:batch]
    assert batch < 3 or not (rows.diff() == 1).all()
    return rows.cuda()


def check_pool(pool, before, rows, gathered):
    """Bit for bit: pool[rows] == the gathered copy after its update (which changed it); other rows untouched."""
    assert torch.equal(pool[rows], gathered)
    assert not torch.equal(gathered, before[rows]), "the state was not updated: the test shows nothing"
    others = torch.ones(pool.shape[0], dtype=torch.bool, device="cuda")
    others[rows] = False
    assert torch.equal(pool[others], before[others])


def check_equal(name, out, ref):
    assert torch.isfinite(ref.float()).all(), f"{name}: non-finite reference"
    assert torch.equal(out, ref), f"{name}: differs from the launch on gathered state"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,seqlen", [(1, 1), (5, 1), (3, 37)])
def test_causal_conv1d_state_rows(cuda, dtype, batch, seqlen):
    dim, width, pool_size = 130, 4, batch + 6
    x, w, b = rnd(batch, dim, seqlen, dtype=dtype), rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    pool = rnd(pool_size, dim, width - 1, dtype=dtype)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch + seqlen)
    gathered = pool[rows]
    ref, _ = cuda.causal_conv1d(x, w, b, gathered, out=nan_like(x.shape, dtype), state_out=gathered)
    if seqlen == 1:
        y, st = cuda.causal_conv1d_update(x[..., 0], w, b, pool, out=nan_like(x.shape[:2], dtype), state_out=pool,
                                          state_rows=rows)
        y = y.unsqueeze(-1)
    else:
        y, st = cuda.causal_conv1d(x, w, b, pool, out=nan_like(x.shape, dtype), state_out=pool, state_rows=rows)
    assert st.data_ptr() == pool.data_ptr()
    check_equal("y", y, ref)
    check_pool(pool, before, rows, gathered)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_state_update_state_rows(cuda, dtype, batch, arch):
    pool_size = batch + 5
    if arch == "mamba1":
        kw = mamba1_inputs(batch, 200, 1, 16, dtype)
        args = dict(x=kw["u"][..., 0], dt=kw["delta"][..., 0], A=kw["A"], B=kw["B"][..., 0], C=kw["C"][..., 0],
                    D=kw["D"], z=kw["z"][..., 0], dt_bias=kw["delta_bias"])
        pool = rnd(pool_size, 200, 16, scale=0.5)
    else:
        kw = mamba2_inputs(batch, 1, 4, 64, 2, 128, dtype)
        kw.pop("initial_state")
        args = {k: (v[:, 0] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
        pool = rnd(pool_size, 4, 64, 128, scale=0.5)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch)
    gathered = pool[rows]
    ref, _ = cuda.selective_state_update(gathered, **args, out=nan_like(args["x"].shape, dtype), state_out=gathered)
    y, st = cuda.selective_state_update(pool, **args, out=nan_like(args["x"].shape, dtype), state_out=pool,
                                        state_rows=rows)
    assert st.data_ptr() == pool.data_ptr()
    check_equal("y", y, ref)
    check_pool(pool, before, rows, gathered)


# Mamba1: 1500 at batch 1 the time-parallel form (scratch); 9 x 129 with dstate 16 mamba1_split.cu's walk (none).
# Mamba2: from 32 steps the SSD form (scratch); 9 x 20 the recurrence (none).
@pytest.mark.parametrize("arch,batch,seqlen,scratch", [("mamba1", 9, 129, False), ("mamba1", 1, 1500, True),
                                                       ("mamba2", 9, 129, True), ("mamba2", 1, 1500, True),
                                                       ("mamba2", 9, 20, False)])
def test_scan_state_rows(cuda, arch, batch, seqlen, scratch, monkeypatch):
    from mamba_deploy.ops import _lib

    pool_size = batch + 4
    if arch == "mamba1":  # dstate 16: mamba1_split.cu's walk; 32: the state-parallel walk, time-parallel at 1500
        dstate = 16 if seqlen == 129 else 32
        fn, kw, key = cuda.selective_scan, mamba1_inputs(batch, 256, seqlen, dstate, torch.float16), "ssm_state"
    else:
        fn, kw, key = cuda.chunk_scan, mamba2_inputs(batch, seqlen, 8, 64, 1, 128, torch.float16), "initial_state"
    pool = rnd(pool_size, *kw[key].shape[1:], scale=0.5)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=seqlen)
    gathered = pool[rows]
    kw[key] = gathered
    sizes = []
    real = _lib.scan_workspace_bytes
    monkeypatch.setattr(_lib, "scan_workspace_bytes", lambda p: sizes.append(real(p)) or sizes[-1])
    ref, _ = fn(**kw, out=nan_like(kw["u" if arch == "mamba1" else "x"].shape, torch.float16), state_out=gathered)
    kw[key] = pool
    y, st = fn(**kw, out=nan_like(ref.shape, torch.float16), state_out=pool, state_rows=rows)
    assert (sizes[0] > 0) == scratch and sizes[0] == sizes[1]
    assert st.data_ptr() == pool.data_ptr()
    check_equal("y", y, ref)
    check_pool(pool, before, rows, gathered)


def test_state_rows_need_a_pool_and_state_out(cuda):
    x, w, pool = rnd(2, 8), rnd(8, 4), rnd(5, 8, 3)
    rows = torch.tensor([4, 1], device="cuda")
    with pytest.raises(ValueError, match="state_out"):
        cuda.causal_conv1d_update(x, w, None, pool, state_rows=rows)
    with pytest.raises(ValueError, match="int64"):
        cuda.causal_conv1d_update(x, w, None, pool, state_out=pool, state_rows=rows.int())
    with pytest.raises(ValueError, match="conv_state"):  # without state_rows: the batch's rows
        cuda.causal_conv1d_update(x, w, None, pool, state_out=pool)


@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_split_walk_paired_loads(cuda, dtype):
    """mamba1_split.cu's paired loads (even channels and dstate, rows aligned for two elements: the engine's
    layout; 2, 4 and 8 lanes a channel) against the reference, and the same bits as its one-element loads (the
    same values in rows one element off that alignment). dt spread wide: softplus above 20 and far below 0."""
    from mamba_deploy.ops import _lib

    seen = set()
    for batch in range(1, 29):
        lanes = _lib.scan_split_lanes(_mamba1_params(batch, 4096, 203, 16))
        if not lanes or lanes in seen:
            continue
        seen.add(lanes)
        kw = mamba1_inputs(batch, 4096, 203, 16, dtype)
        kw["delta"] = kw["delta"] * 80  # 0.1 -> 8: softplus(dt + bias) from about 1e-10 to past 20
        outs = [_offset_rows_scan(cuda, kw, dtype, offset) for offset in (0, 1)]
        y_ref, s_ref = selective_scan_ref(**{k: v.float() for k, v in kw.items()})
        check("y", outs[0][0], y_ref, dtype)
        check("state", outs[0][1], s_ref, dtype)
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), lanes
    assert seen == {2, 4, 8}, seen


def _offset_rows_scan(cuda, kw, dtype, offset):
    """The scan of kw's values with u, delta, z, B, C in channel-last rows that start `offset` elements into
    a wider buffer (offset 1: no two-element alignment)."""
    def rows(t):
        buf = torch.empty(t.shape[0], t.shape[2], t.shape[1] + offset, dtype=t.dtype, device="cuda")
        view = buf[..., offset:]
        view.copy_(t.transpose(1, 2))
        return view.transpose(1, 2)
    args = {k: rows(v) if k in ("u", "delta", "z", "B", "C") else v for k, v in kw.items()}
    return cuda.selective_scan(**args, out=nan_like(kw["u"].shape, dtype),
                               state_out=nan_like(kw["ssm_state"].shape, torch.float32))
