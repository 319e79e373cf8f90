"""plugins/kernels/attention.cu (a hybrid's decode attention over per-slot KV caches) against rotary_ref +
attention_ref: dtypes, odd head sizes, grouped-query heads, rotary or none, slots through state_rows, lengths
from 0 to the cache's last position. Outputs are poisoned with NaN before every launch."""
import pytest
import torch

from mamba_deploy.ops import attention_ref, rotary_inv_freq, rotary_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _case(batch, heads, heads_kv, head_dim, slots, max_len, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    qkv = rnd(batch, (heads + 2 * heads_kv) * head_dim + 5)  # a wider buffer: q, k, v are row-strided slices
    key, value = rnd(slots, heads_kv, max_len, head_dim), rnd(slots, heads_kv, max_len, head_dim)
    return qkv, key, value


def _reference(q, k, v, key, value, length, rows, rotary_dim, base, scale):
    """The new tokens of slots `rows` through rotary_ref and attention_ref on copies of the caches."""
    batch = q.shape[0]
    heads_kv, head_dim = key.shape[1], key.shape[3]
    positions = length[rows][:, None]  # (batch, 1)
    qr = rotary_ref(q.reshape(batch, 1, -1, head_dim), positions, rotary_dim, base)
    kr = rotary_ref(k.reshape(batch, 1, heads_kv, head_dim), positions, rotary_dim, base)
    key_rows, value_rows = key[rows].clone(), value[rows].clone()
    index = positions[:, None, :, None].expand(batch, heads_kv, 1, head_dim)
    key_rows.scatter_(2, index, kr.transpose(1, 2))
    value_rows.scatter_(2, index, v.reshape(batch, 1, heads_kv, head_dim).transpose(1, 2))
    out = attention_ref(qr, key_rows, value_rows, positions, scale).reshape(batch, -1)
    return out, key_rows, value_rows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,heads_kv,head_dim,rotary_dim", [
    (4, 4, 64, 0), (8, 2, 40, 20), (6, 2, 10, 6), (30, 30, 128, 64), (32, 8, 128, 0), (4, 1, 256, 128),
    (8, 1, 128, 32), (3, 3, 33, 0)])
def test_decode_attention_matches_reference(rel_err, G, dtype, heads, heads_kv, head_dim, rotary_dim):
    batch, slots, max_len, base, scale = 5, 9, 300, 10000.0, head_dim ** -0.5
    qkv, key, value = _case(batch, heads, heads_kv, head_dim, slots, max_len, dtype, seed=heads + head_dim)
    q_dim, kv_dim = heads * head_dim, heads_kv * head_dim
    q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:q_dim + 2 * kv_dim]
    length = torch.tensor([0, 7, 299, 150, 1, 64, 3, 255, 2], dtype=torch.int64, device="cuda")
    rows = torch.tensor([2, 0, 5, 8, 7], dtype=torch.int64, device="cuda")  # lengths 299, 0, 64, 2, 255
    want, want_key, want_value = _reference(q, k, v, key, value, length, rows, rotary_dim, base, scale)
    inv_freq = rotary_inv_freq(rotary_dim, base).cuda() if rotary_dim else None
    out = torch.full((batch, q_dim), float("nan"), dtype=dtype, device="cuda")
    before = length.clone()
    G.attention_decode(q, k, v, key, value, length, inv_freq, rotary_dim, scale, out=out, state_rows=rows)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, want) <= TOL[dtype]
    assert torch.equal(length, before)  # the engine advances lengths once per step, not the kernel
    assert rel_err(key[rows], want_key) <= TOL[dtype] and torch.equal(value[rows], want_value)


@pytest.mark.parametrize("dtype", [torch.float16])
def test_rows_without_state_rows_and_a_full_cache(rel_err, G, dtype):
    """state_rows NULL: row b is slot b; a slot whose length reached max_seq_len writes nothing and attends over
    the whole cache (the engine refuses that step before it runs; the kernel stays in bounds)."""
    heads, head_dim, max_len = 4, 64, 16
    qkv, key, value = _case(2, heads, heads, head_dim, 2, max_len, dtype, seed=1)
    q, k, v = qkv[:, :256], qkv[:, 256:512], qkv[:, 512:768]
    length = torch.tensor([3, max_len], dtype=torch.int64, device="cuda")
    untouched = key[1].clone()
    want, _, _ = _reference(q[:1], k[:1], v[:1], key, value, length, torch.tensor([0], device="cuda"), 0, 1.0, 0.125)
    out = torch.full((2, 256), float("nan"), dtype=dtype, device="cuda")
    G.attention_decode(q, k, v, key, value, length, None, 0, 0.125, out=out)
    assert rel_err(out[:1], want) <= TOL[dtype]
    assert torch.isfinite(out.float()).all() and torch.equal(key[1], untouched)
    full = attention_ref(q[1:].reshape(1, 1, heads, head_dim), key[1:], value[1:],
                         torch.tensor([[max_len - 1]], device="cuda"), 0.125)
    assert rel_err(out[1:], full.reshape(1, -1)) <= TOL[dtype]


def test_unsupported_shapes_are_refused(G):
    qkv, key, value = _case(1, 32, 2, 64, 1, 8, torch.float16, seed=2)  # 16 query heads per kv head
    length = torch.zeros(1, dtype=torch.int64, device="cuda")
    out = torch.empty(1, 2048, dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="heads / heads_kv must be <= 8"):
        G.attention_decode(qkv[:, :2048], qkv[:, 2048:2176], qkv[:, 2176:2304], key, value, length, None, 0, 1.0,
                           out=out)
