"""ops/philox.py: Philox4x32-10 against its published known answers, the uniforms' exact float32 form; the
CUDA kernel (md_philox_uniform_fwd through ops.cuda.philox_uniform_cuda) against it, bit for bit (gpu)."""
import numpy as np
import pytest
import torch

from mamba_deploy.ops.philox import philox4x32, philox_uniform


def test_philox_known_answers():
    """Known-answer vectors of Philox4x32-10 (Random123's kat_vectors: zeros, all ones, pi digits)."""
    ones = 0xFFFFFFFF
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((ones,) * 4, (ones, ones), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def test_philox_uniform_words_range_and_int64_bits():
    seeds = np.array([0, 1, 2**63, 2**64 - 1, 12345], dtype=np.uint64)
    steps = np.array([0, 0, 7, 2**40 + 3, 2**32], dtype=np.uint64)
    u = philox_uniform(seeds, steps)
    low, high = np.uint64(0xFFFFFFFF), np.uint64(32)
    words = philox4x32((steps & low, steps >> high, 0, 0), (seeds & low, seeds >> high))[0]
    assert u.dtype == np.float32
    assert np.array_equal(u, ((words >> np.uint64(9)).astype(np.float64) + 0.5) / 2**23)  # exact in float32
    assert np.array_equal(philox_uniform(seeds.view(np.int64), steps.view(np.int64)), u)
    many = philox_uniform(np.arange(100000, dtype=np.uint64), np.full(100000, 3, dtype=np.uint64))
    assert 0 < many.min() and many.max() < 1 and abs(many.mean() - 0.5) < 0.005
    extremes = ((np.array([0, 2**32 - 1], dtype=np.uint64) >> np.uint64(9)).astype(np.float32) + np.float32(0.5))
    assert np.array_equal(extremes * np.float32(2.0**-23), [2.0**-24, 1 - 2.0**-24])
    with pytest.raises(TypeError, match="uint64 or int64"):
        philox_uniform(np.array([1.5]), np.array([0], dtype=np.uint64))


@pytest.mark.gpu
def test_kernel_equals_numpy_bit_for_bit(cuda):
    rng = np.random.default_rng(0)
    n = 100000
    seeds = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    steps = np.concatenate([rng.integers(0, 2**64, n // 2, dtype=np.uint64), np.arange(n - n // 2, dtype=np.uint64)])
    expected = philox_uniform(seeds, steps)
    dev_seeds = torch.from_numpy(seeds.view(np.int64)).cuda()
    dev_steps = torch.from_numpy(steps.view(np.int64)).cuda()
    out = torch.full((n,), float("nan"), device="cuda")
    got = cuda.philox_uniform_cuda(dev_seeds, dev_steps, out=out)
    assert got is out
    assert np.array_equal(got.cpu().numpy(), expected)
    rows = torch.from_numpy(rng.integers(0, n, 777)).cuda()  # gathered through a row index
    assert np.array_equal(cuda.philox_uniform_cuda(dev_seeds, dev_steps, rows).cpu().numpy(),
                          expected[rows.cpu().numpy()])
    assert cuda.philox_uniform_cuda(dev_seeds[:0], dev_steps[:0]).shape == (0,)


@pytest.mark.gpu
def test_binding_checks_its_arguments(cuda):
    seeds = torch.zeros(4, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="seeds must be a CUDA tensor"):
        cuda.philox_uniform_cuda(seeds.cpu(), seeds)
    with pytest.raises(ValueError, match="steps: expected a 1-D int64"):
        cuda.philox_uniform_cuda(seeds, seeds.float())
    with pytest.raises(ValueError, match="steps: expected a contiguous tensor of length 4"):
        cuda.philox_uniform_cuda(seeds, seeds[:3])
    with pytest.raises(ValueError, match="rows: expected a contiguous"):
        cuda.philox_uniform_cuda(seeds, seeds, torch.zeros(4, 2, dtype=torch.int64, device="cuda")[:, 0])
    with pytest.raises(ValueError, match="out: shape"):
        cuda.philox_uniform_cuda(seeds, seeds, out=torch.empty(3, device="cuda"))
