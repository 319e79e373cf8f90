"""runtime/sampler.py on the GPU: a captured CUDA graph == eager, bit for bit; GPU tokens == CPU tokens on
the same float32 logits; a row's tokens do not depend on its batch."""
import pytest
import torch

from mamba_deploy.runtime.sampler import SamplerState
from mamba_deploy.runtime.sampling import SamplingParams as P

pytestmark = pytest.mark.gpu

PARAMS = [P(0.0), P(1.0), P(0.7, top_k=20), P(1.1, top_p=0.9), P(1.0, min_p=0.05), P(0.0, repetition_penalty=1.5),
          P(0.8, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.2), P(1.5, top_p=0.5)]
VOCAB, LIMIT = 50288, 50277  # a padded vocabulary


@pytest.fixture(scope="module", autouse=True)
def kernels():
    from mamba_deploy.ops import cuda

    if not cuda.is_available():
        pytest.fail(f"kernel library unavailable: {cuda.unavailable_reason()}")


def make_state(device, params=PARAMS, vocab=VOCAB):
    state = SamplerState(len(params), vocab, device)
    gen = torch.Generator().manual_seed(0)
    for slot, p in enumerate(params):
        prompt = torch.randint(0, vocab, (20,), generator=gen).tolist()
        state.assign(slot, p, (slot + 1) * (2**62 + 12345) % 2**64, prompt)
    return state


def logits_for(step, n, vocab=VOCAB):
    gen = torch.Generator().manual_seed(100 + step)
    return (torch.randn(n, vocab, generator=gen) * 4).to(torch.float16).float()


def assert_same_rows(a, b):
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "step", "seen"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


def test_graph_replay_equals_eager():
    eager, graphed = make_state("cuda"), make_state("cuda")
    slots = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4], device="cuda")
    static_logits = logits_for(0, len(slots)).cuda()
    warm = make_state("cuda")  # warm-up on a side stream (allocator, sort and scan workspaces)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm.sample(static_logits, slots, LIMIT)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_tokens = graphed.sample(static_logits, slots, LIMIT)
    for step in range(12):
        logits = logits_for(step, len(slots)).cuda()
        static_logits.copy_(logits)
        graph.replay()
        expected = eager.sample(logits, slots, LIMIT)
        assert torch.equal(static_tokens, expected), step
    assert_same_rows(eager, graphed)
    assert graphed.step.tolist() == [12] * len(PARAMS)


def test_gpu_tokens_equal_cpu_tokens():
    """The arithmetic is the same up to float32 exp (CUDA's expf and the CPU's may differ by an ulp or two), so
    a token may differ only when u * total lies within such a change of a cumulative boundary: about 1e-9 per
    draw. Asserted: >= 99.9% agreement (expected: all)."""
    cpu, gpu = make_state("cpu"), make_state("cuda")
    slots = torch.arange(len(PARAMS))
    agree = total = 0
    for step in range(100):
        logits = logits_for(step, len(slots))
        a = cpu.sample(logits, slots, LIMIT)
        b = gpu.sample(logits.cuda(), slots.cuda(), LIMIT).cpu()
        agree += int((a == b).sum())
        total += len(slots)
        cpu.seen.copy_(gpu.seen.cpu())  # keep the penalties in step after a rare mismatch
    assert agree >= 0.999 * total, (agree, total)


def test_a_row_gets_the_same_tokens_alone_or_in_a_batch_on_the_gpu():
    alone = make_state("cuda", [PARAMS[6]])
    batch = make_state("cuda")
    batch.assign(5, PARAMS[6], 1 * (2**62 + 12345), [])
    alone.assign(0, PARAMS[6], 1 * (2**62 + 12345), [])
    order = torch.tensor([2, 5, 0, 7, 1, 3, 6, 4], device="cuda")
    for step in range(10):
        logits = logits_for(step, 8).cuda()
        together = batch.sample(logits, order, LIMIT)
        single = alone.sample(logits[1:2].clone(), torch.tensor([0], device="cuda"), LIMIT)
        assert together[1].item() == single.item(), step



def mixed_params(gen, n, vocab):
    """n parameter sets that exercise every option: greedy, top-k around the vocabulary's size, top-p from tiny
    to off, min-p from off to 1, penalties above and below 1."""
    def pick(values, i):
        return values[(i * 7 + int(torch.randint(0, 1000, (1,), generator=gen))) % len(values)]

    out = []
    for i in range(n):
        out.append(P(temperature=pick([0.0, 0.3, 0.7, 1.0, 1.7], i), top_k=pick([0, 1, 2, 5, 40, vocab - 1, vocab, vocab + 3], i),
                     top_p=pick([1.0, 0.9, 0.5, 0.99, 1e-6, 0.2], i), min_p=pick([0.0, 0.05, 0.5, 1.0, 1e-4], i),
                     repetition_penalty=pick([1.0, 1.3, 0.8], i)))
    return out


def hard_logits(gen, n, vocab, dtype):
    """Peaked, flat and tied rows, a whole row of equal values, in `dtype`."""
    scales = torch.tensor([0.3, 3.0, 12.0])[torch.arange(n) % 3][:, None]
    logits = torch.randn(n, vocab, generator=gen) * scales
    logits[1::4] = (logits[1::4] * 2).round() / 2
    logits[3::7] = 0.5
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("rows,vocab,limit", [(1, 1, 1), (3, 7, 5), (77, 129, 129), (64, 1000, 997), (9, 1024, 1000),
                                              (8, 1025, 1025), (5, VOCAB, LIMIT), (2, 151_936, 151_665),
                                              (70, VOCAB, LIMIT), (1, 400_000, 399_999)])
def test_sample_kernel_takes_the_tokens_of_the_torch_sampler(rows, vocab, limit, dtype, monkeypatch):
    """SamplerState.sample on CUDA (the kernel: a cluster of blocks per row, no sort) == sample_torch (the torch ops,
    stable sort) on the same device, token for token and in every state tensor, over several steps: every
    option alone and mixed, the penalty on seen tokens, padded columns, vocabularies below and above the block.
    On the H200 these take clusters of 1 to 8 blocks per row, values in shared memory (70 rows: pairs, as a whole
    row does not fit) and in the scratch (400k: a slice of an 8-block cluster does not fit either)."""
    from mamba_deploy.runtime import sampler

    monkeypatch.setattr(sampler, "KERNEL_MIN_ROWS", 1)  # the kernel for every batch size here
    gen = torch.Generator().manual_seed(rows * 1009 + vocab)
    params = mixed_params(gen, rows + 3, vocab)
    kernel, torch_ops = make_state("cuda", params, vocab), make_state("cuda", params, vocab)
    slots = torch.randperm(len(params), generator=gen)[:rows].cuda()
    for step in range(3):
        logits = hard_logits(gen, rows, vocab, dtype).cuda()
        got = kernel.sample(logits, slots, limit)
        expected = torch_ops.sample_torch(logits, slots, limit)
        assert torch.equal(got, expected), step
        assert int(got.max()) < limit
        assert_same_rows(kernel, torch_ops)
        assert torch.equal(kernel.last_token, torch_ops.last_token)


@pytest.mark.parametrize("tied", [1023, 1024, 1025, 3000])
def test_sample_kernel_at_its_bucket_limit(tied, monkeypatch):
    """`tied` tokens share the top value, the rest lie far below: the top bucket holds `tied` tokens, ranked
    among themselves up to 1,024 (sample_buckets.cuh) and by the radix selection above, for the drawn token,
    top-p's end and top-k's k-th token; the same tokens."""
    from mamba_deploy.runtime import sampler

    monkeypatch.setattr(sampler, "KERNEL_MIN_ROWS", 1)
    gen = torch.Generator().manual_seed(tied)
    params = [P(1.0), P(1.0, top_p=0.9), P(0.7, top_p=0.5, repetition_penalty=1.3), P(1.0, min_p=0.5),
              P(1.0, top_k=1000), P(0.7, top_k=1500, top_p=0.9), P(1.0, top_k=5)]
    kernel, torch_ops = make_state("cuda", params), make_state("cuda", params)
    slots = torch.arange(len(params), device="cuda")
    for step in range(4):
        logits = torch.randn(len(params), VOCAB, generator=gen) * 0.3
        for row in range(len(params)):
            logits[row, torch.randperm(LIMIT, generator=gen)[:tied]] = 6.0  # most of the mass: draws land there
        got = kernel.sample(logits.cuda(), slots, LIMIT)
        assert torch.equal(got, torch_ops.sample_torch(logits.cuda(), slots, LIMIT)), step
        assert_same_rows(kernel, torch_ops)


def test_sample_kernel_refuses_bad_arguments():
    from mamba_deploy.ops.cuda import SAMPLER_ROWS, sample_cuda

    state = make_state("cuda", PARAMS[:2], 8)
    rows = {name: getattr(state, name) for name in SAMPLER_ROWS}
    logits, slots = torch.zeros(2, 8, device="cuda"), torch.arange(2, device="cuda")
    scratch = torch.empty(2, 8, device="cuda")
    with pytest.raises(ValueError, match="slots"):
        sample_cuda(logits, slots.int(), 8, 40, rows, scratch)
    with pytest.raises(ValueError, match="scratch"):
        sample_cuda(logits, slots, 8, 40, rows, scratch[:1])
    with pytest.raises(ValueError, match="top_k"):
        sample_cuda(logits, slots, 8, 40, {**rows, "top_k": rows["top_k"].float()}, scratch)
    with pytest.raises(RuntimeError, match="weight_bits"):
        sample_cuda(logits, slots, 8, 51, rows, scratch)  # 8 * 2**51 > 2**53
    with pytest.raises(RuntimeError, match="vocab_limit"):
        sample_cuda(logits, slots, 9, 40, rows, scratch)
