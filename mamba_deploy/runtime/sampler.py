"""Per-row sampling on the logits' device, CUDA-graph safe: `SamplerState`.

A `SamplerState` holds, for `max_slots` rows, each row's sampling parameters, its Philox seed and step,
and the tokens it has seen (prompt and output, for the repetition penalty). `sample(logits, slots,
vocab_limit)` picks one token for each given slot with torch ops on the logits' device (plus the
Philox kernel on CUDA): no host synchronisation and no data-dependent shapes, so a decode step that
samples can be captured in a CUDA graph; greedy and sampled rows mix in one call. On the CPU, where nothing
is captured, steps 3-8 sort only each row's top candidates when that provably gives the same token
(`pick_tokens_host`). On CUDA (from KERNEL_MIN_ROWS rows) the whole of it is one kernel
(`ops.cuda.sample_cuda`, a cluster of blocks per row) that never sorts: it finds each position below by radix
selection on (value, token id), with the same tokens as the torch form (`SamplerState.sample_torch`).

Per row, in this order (float32 unless said; `sampler_reference.sample_reference` is the same, written
plainly):
  1. columns >= vocab_limit -> -inf; repetition penalty on seen tokens (CTRL: divide positive logits,
     multiply negative ones);
  2. temperature 0: argmax (the first of equal maxima); the row's step still advances;
  3. else x / temperature; sort descending, equal values by lower token id (a stable sort: ties and the
     sampled token do not depend on the sort algorithm, so not on the batch); -0.0 is made +0.0 first,
     as CUDA's radix sort orders it below +0.0;
  4. p = exp(x - max), so the top token has p = 1; weights q = trunc(p * 2**S) as int64, S = 53 -
     ceil(log2(V)), so every sum of weights is an exact integer below 2**53 (exact as float64 too):
     the cumulative sums below do not depend on their summation order (CPU sequential, GPU parallel
     scans, batch of one or many). The price: each probability is truncated to a multiple of 2**-S of
     the top token's (S = 37 for a 50k vocabulary), tokens below that are never drawn;
  5. top-k (0 = off): keep the first k in that order (exactly k, ties by lower id);
  6. top-p (1 = off): keep a token while the weight of those before it < top_p * total (float64
     product), the smallest set reaching top_p, at least one;
  7. min-p (0 = off): keep p >= min_p (relative to the top token, whose p is 1);
  8. inverse CDF: u = philox(seed, step) in (0, 1); the token at the first position whose cumulative
     weight > u * total (float64 product).
Inverse CDF needs one uniform per row; Gumbel-max would need a vocabulary of uniforms and two logs
per element every step (a few hundred microseconds per step at batch 64), and the sort and cumulative
sum are needed for top-p anyway.

A row's tokens depend only on its logits, parameters, seed and step, never on the other rows or its
position in the batch, so a prompt gets the tokens it gets alone in any batch.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import MambaDeployError, ParameterError, is_integer
from ..ops._tensors import to_device_async
from ..ops.philox import philox_uniform
from .sampling import SamplingParams, apply_repetition_penalty, mask_padding


# The kernel spreads a row over a cluster of up to 8 blocks (compute capability 9.0+), so it is the faster form
# at every batch size: H200, 50k vocabulary, T=0.7 top-p 0.9 (benchmarks/sampler_gpu.py): 1 row 191 us torch /
# 30 us kernel; 16 rows 350 / 30; 64 rows 706 / 37. Both give the same tokens.
KERNEL_MIN_ROWS = 1


def weight_bits(vocab: int) -> int:
    """S of the docstring: weights are probabilities (top token 1) in units of 2**-S; vocab * 2**S <= 2**53."""
    return 53 - max(1, (vocab - 1).bit_length())


def seed_bits(seed: int) -> int:
    """A seed in [0, 2**64) as the int64 holding the same 64 bits."""
    if not is_integer(seed) or not 0 <= seed < 2**64:
        raise ParameterError("seed", f"must be an integer in [0, 2**64), got {seed!r}")
    return int(seed) - 2**64 if seed >= 2**63 else int(seed)


# A free row's values (SamplingParams() with seed 0, step 0, last token 0; nothing seen): (value, dtype) per tensor.
ROW_DEFAULTS = {"temperature": (1.0, torch.float32), "top_p": (1.0, torch.float32), "min_p": (0.0, torch.float32),
                "repetition_penalty": (1.0, torch.float32), "top_k": (0, torch.int64), "seed": (0, torch.int64),
                "step": (0, torch.int64), "last_token": (0, torch.int64)}


class SamplerState:
    """Sampling parameters, Philox seed and step, and seen tokens of `max_slots` rows on `device`.

    Tensors (row = slot): temperature, top_p, min_p, repetition_penalty (max_slots,) float32; top_k,
    seed, step (max_slots,) int64; seen (max_slots, vocab_size_padded) bool; last_token (max_slots,) int64,
    the slot's latest sampled token (what its next decode step feeds, read on the device: the token never
    has to visit the host between steps).
    """

    def __init__(self, max_slots: int, vocab_size_padded: int, device: Union[str, torch.device]):
        if not (is_integer(max_slots) and max_slots > 0 and is_integer(vocab_size_padded) and vocab_size_padded > 0):
            raise ValueError(f"max_slots and vocab_size_padded must be positive integers, got {max_slots}, "
                             f"{vocab_size_padded}")
        self.max_slots, self.vocab_size = int(max_slots), int(vocab_size_padded)
        self.seen = torch.zeros(self.max_slots, self.vocab_size, dtype=torch.bool, device=device)
        self.device = self.seen.device  # with its index ("cuda" -> "cuda:0"), as logits.device has

        for name, (value, dtype) in ROW_DEFAULTS.items():
            setattr(self, name, torch.full((self.max_slots,), value, dtype=dtype, device=self.device))
        self._scratch: Optional[torch.Tensor] = None  # the CUDA kernel's (max_slots, vocab) float32 rows
        self._true = torch.ones((), dtype=torch.bool, device=self.device)

    def _check_slot(self, slot: int) -> int:
        if not is_integer(slot) or not 0 <= slot < self.max_slots:
            raise ValueError(f"slot must be an integer in [0, {self.max_slots}), got {slot!r}")
        return int(slot)

    def assign(self, slot: int, params: SamplingParams, seed: int, prompt_ids: Sequence[int]) -> None:
        """Give `slot` to a new sequence (host side, between steps): its parameters, seed, step 0, and
        its prompt's tokens as seen."""
        self.assign_many([slot], [params], [seed], [prompt_ids])

    def assign_many(self, slots: Sequence[int], params: Sequence[SamplingParams], seeds: Sequence[int],
                    prompts: Sequence[Sequence[int]]) -> None:
        """`assign` for several distinct slots at once, in a fixed number of launches whatever their count
        (admitting 64 requests one by one cost 64 x 13 small launches)."""
        slots = [self._check_slot(s) for s in slots]
        if len(set(slots)) != len(slots) or not len(slots) == len(params) == len(seeds) == len(prompts):
            raise ValueError("assign_many: slots must be distinct, with one params, seed and prompt each")
        if not slots:
            return
        for distinct in {id(p): p for p in params}.values():  # a batch's rows usually share one params object
            distinct.validate()
        seeds = [seed_bits(s) for s in seeds]
        lengths = [len(p) for p in prompts]
        # numpy, not torch.tensor, turns the lists into arrays: 6x faster for 64 prompts of 100 ids (0.3 against
        # 1.7 ms on a CI core), and repeat_interleave on a CPU tensor cost 1.4 ms on the H200's host
        every_id = np.array(list(itertools.chain.from_iterable(prompts)), dtype=np.int64)
        if every_id.size and (int(every_id.min()) < 0 or int(every_id.max()) >= self.vocab_size):
            raise MambaDeployError(f"prompt token ids must be in [0, {self.vocab_size}), got "
                                   f"{int(every_id.min())}..{int(every_id.max())}")
        n = len(slots)
        floats = torch.from_numpy(np.array([[p.temperature, p.top_p, p.min_p, p.repetition_penalty] for p in params],
                                           dtype=np.float32))
        # one int64 transfer: slots, then per slot (top_k, seed, step 0, last_token 0), then the seen (row, id)s
        fields = np.array([[p.top_k, s, 0, 0] for p, s in zip(params, seeds)], dtype=np.int64).reshape(-1)
        slot_ids = np.array(slots, dtype=np.int64)
        ints = torch.from_numpy(np.concatenate([slot_ids, fields, np.repeat(slot_ids, lengths), every_id]))
        floats, ints = to_device_async(floats, self.device), to_device_async(ints, self.device)
        rows, per_slot = ints[:n], ints[n:5 * n].view(n, 4)
        for k, name in enumerate(("temperature", "top_p", "min_p", "repetition_penalty")):
            getattr(self, name).index_copy_(0, rows, floats[:, k])
        for k, name in enumerate(("top_k", "seed", "step", "last_token")):
            getattr(self, name).index_copy_(0, rows, per_slot[:, k])
        self.seen.index_fill_(0, rows, False)
        m = every_id.size
        self.seen.index_put_((ints[5 * n:5 * n + m], ints[5 * n + m:]), self._true)

    def release(self, slot: int) -> None:
        """Reset `slot` to the defaults (temperature 1, no filters, seed 0, nothing seen)."""
        self.release_many([slot])

    def release_many(self, slots: Sequence[int]) -> None:
        """`release` for several distinct slots at once: one fill per tensor (assign_many's host work, 3 ms for 64
        rows on the H200's host while a new generate call was starting, is not needed to write constants)."""
        slots = [self._check_slot(s) for s in slots]
        if len(set(slots)) != len(slots):
            raise ValueError("release_many: slots must be distinct")
        if not slots:
            return
        rows = to_device_async(torch.tensor(slots, dtype=torch.int64), self.device)
        for name, (value, _) in ROW_DEFAULTS.items():
            getattr(self, name).index_fill_(0, rows, value)
        self.seen.index_fill_(0, rows, False)

    def sample(self, logits: torch.Tensor, slots: torch.Tensor, vocab_limit: int, all_greedy: bool = False) -> torch.Tensor:
        """logits (n, vocab_size_padded), any float dtype; slots (n,) int64 distinct, on the logits'
        device -> tokens (n,) int64 < vocab_limit. Advances step[slots], marks the tokens seen and stores them in
        last_token[slots]. all_greedy: the caller knows every row has temperature 0 (the host skips the sampled
        rows' work). On CUDA, from KERNEL_MIN_ROWS rows on, this is one kernel (`ops.cuda.sample_cuda`, no sort);
        otherwise `sample_torch`."""
        if not logits.is_cuda or logits.dtype not in (torch.float32, torch.float16, torch.bfloat16) or \
                logits.shape[0] < KERNEL_MIN_ROWS:
            return self.sample_torch(logits, slots, vocab_limit, all_greedy)
        self._check_sample_args(logits, slots, vocab_limit)
        from ..ops.cuda import sample_cuda

        if self._scratch is None:  # allocated once: later calls (and graph replays) reuse it
            self._scratch = torch.empty(self.max_slots, self.vocab_size, dtype=torch.float32, device=self.device)
        return sample_cuda(logits if logits.stride(-1) == 1 else logits.contiguous(), slots.contiguous(), vocab_limit,
                           weight_bits(self.vocab_size), vars(self), self._scratch)  # its SAMPLER_ROWS tensors

    def sample_torch(self, logits: torch.Tensor, slots: torch.Tensor, vocab_limit: int,
                     all_greedy: bool = False) -> torch.Tensor:
        """`sample` as torch ops on any device (the CPU's path, and the reference of the CUDA kernel): the same
        tokens and state updates."""
        self._check_sample_args(logits, slots, vocab_limit)
        x = mask_padding(logits.float(), vocab_limit)
        penalty = self.repetition_penalty.index_select(0, slots)[:, None]
        host = not x.is_cuda  # on the host, steps that change nothing are skipped (checking them costs no sync)
        if not host or bool((penalty != 1).any()):  # a penalty of 1 leaves every logit as it is
            x = apply_repetition_penalty(x, self.seen.index_select(0, slots), penalty)
        if all_greedy:
            tokens = x.argmax(dim=-1)
        else:
            temperature = self.temperature.index_select(0, slots)
            greedy = temperature == 0
            scaled = x / torch.where(greedy, 1.0, temperature)[:, None] + 0.0  # + 0.0: -0.0 -> +0.0
            pick = pick_tokens_host if host else pick_tokens
            sampled = pick(scaled, self.top_k.index_select(0, slots), self.top_p.index_select(0, slots),
                           self.min_p.index_select(0, slots), self._uniforms(slots))
            tokens = torch.where(greedy, x.argmax(dim=-1), sampled) if not host or bool(greedy.any()) else sampled
        self.step.index_add_(0, slots, torch.ones_like(slots))
        self.seen.index_put_((slots, tokens), self._true)
        self.last_token.index_copy_(0, slots, tokens)
        return tokens

    def _check_sample_args(self, logits: torch.Tensor, slots: torch.Tensor, vocab_limit: int) -> None:
        """Shapes, dtypes and devices only: checking slot values would synchronise with the GPU."""
        if logits.dim() != 2 or logits.shape[1] != self.vocab_size or not logits.is_floating_point():
            raise ValueError(f"logits: expected float (n, {self.vocab_size}), got {logits.dtype} {tuple(logits.shape)}")
        if slots.dtype != torch.int64 or tuple(slots.shape) != (logits.shape[0],):
            raise ValueError(f"slots: expected int64 ({logits.shape[0]},), got {slots.dtype} {tuple(slots.shape)}")
        if logits.device != self.device or slots.device != self.device:
            raise ValueError(f"logits and slots must be on {self.device}, got {logits.device}, {slots.device}")
        if not (is_integer(vocab_limit) and 0 < vocab_limit <= self.vocab_size):
            raise ValueError(f"vocab_limit must be an integer in [1, {self.vocab_size}], got {vocab_limit!r}")

    def _uniforms(self, slots: torch.Tensor) -> torch.Tensor:
        """(n,) float32 Philox uniforms of the slots' (seed, step), on their device."""
        if slots.is_cuda:
            from ..ops.cuda import philox_uniform_cuda

            return philox_uniform_cuda(self.seed, self.step, slots.contiguous())
        seeds, steps = self.seed.index_select(0, slots).numpy(), self.step.index_select(0, slots).numpy()
        return torch.from_numpy(philox_uniform(seeds, steps))


def cumsum_rows(weights: torch.Tensor, block: int = 128) -> torch.Tensor:
    """weights.cumsum(-1) of (n, V) int64, as scans of `block`-long pieces plus a scan of their totals: on the
    GPU a cumsum along a few long rows runs about one block per row (~100 us for 64 x 50k); this fills the
    device. Integer sums are exact in any order, so the result is the same."""
    n, vocab = weights.shape
    pieces = torch.nn.functional.pad(weights, (0, (-vocab) % block)).view(n, -1, block).cumsum(dim=-1)
    totals = pieces[..., -1]
    offsets = totals.cumsum(dim=-1) - totals  # exclusive: the sum of the pieces before each one
    return (pieces + offsets[..., None]).view(n, -1)[:, :vocab]


def pick_tokens(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
                uniform: torch.Tensor) -> torch.Tensor:
    """Steps 3-8 of the module docstring. scaled: (n, V) float32 logits / temperature; top_k (n,) int64;
    top_p, min_p, uniform (n,) float32 -> (n,) int64 token ids."""
    ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    probs, weights, _ = _sorted_weights(ordered, top_k, scaled.shape[1])
    cumulative = cumsum_rows(weights)
    return _inverse_cdf(order, probs, weights, cumulative, cumulative[:, -1], top_p, min_p, uniform)


def _sorted_weights(ordered: torch.Tensor, top_k: torch.Tensor, vocab: int) -> tuple[torch.Tensor, ...]:
    """Steps 4-5 on `ordered` (n, m), the first m positions of the sorted rows of `vocab` values -> probs (n, m),
    int64 weights (n, m) zero past the row's top-k, and k (n,)."""
    probs = torch.exp(ordered - ordered[:, :1])
    weights = (probs * float(2 ** weight_bits(vocab))).to(torch.int64)  # exact scaling, then truncation
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    position = torch.arange(ordered.shape[1], device=ordered.device)
    return probs, torch.where(position < k[:, None], weights, 0), k


def _inverse_cdf(order: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor, cumulative: torch.Tensor,
                 total: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Steps 6-8 on a sorted prefix (n, m) that holds every kept token: order its token ids, cumulative its
    weights' running sum, total (n,) the weight of the row's top-k (all of the row's, not only the prefix's)."""
    before = (cumulative - weights).double()
    nucleus = before < top_p.double()[:, None] * total.double()[:, None]
    keep = (nucleus | (top_p >= 1)[:, None]) & (probs >= min_p[:, None])
    # Each filter keeps a prefix of the sorted order (before grows, probs shrink along it), so the kept
    # weights' running sum is `cumulative` itself up to the prefix's end (the top token is always kept):
    # no second cumulative sum. Positions past the prefix have cumulative >= its total > the threshold.
    kept_total = cumulative.gather(1, keep.sum(dim=-1, keepdim=True) - 1)
    threshold = uniform.to(order.device).double()[:, None] * kept_total.double()
    index = (cumulative.double() <= threshold).sum(dim=-1).clamp(max=order.shape[1] - 1)
    return order.gather(1, index[:, None]).squeeze(1)


HOST_CANDIDATES = (128, 1024)  # the sorted prefixes pick_tokens_host tries, in turn, before sorting a whole row


def pick_tokens_host(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
                     uniform: torch.Tensor, candidates: Union[int, Sequence[int]] = HOST_CANDIDATES) -> torch.Tensor:
    """pick_tokens, the same tokens, for the CPU (data-dependent, so not for CUDA graphs): sorting a 50k
    vocabulary is most of a sampled CPU step (28 of 48 ms at batch 16), and the kept tokens are a prefix of
    the sorted order, usually a short one. So each row first takes its top `candidates` values (ties at the
    cut: the row is not cut), which are exactly the first positions of the full stable sort, and is done there
    when a filter provably ends the kept prefix inside them: top-k <= candidates, or the candidates' weight
    reaching top_p of the total (summed over the whole row, as pick_tokens does), or min-p excluding the
    first value after them. Other rows try the next, larger count of `candidates` (an int, or increasing ints),
    then pick_tokens."""
    tiers = (candidates,) if isinstance(candidates, int) else tuple(candidates)
    n, vocab = scaled.shape
    m = min(tiers[0], vocab)
    if m == vocab or n == 0:
        return pick_tokens(scaled, top_k, top_p, min_p, uniform)
    values, index = torch.topk(scaled, m, dim=-1, sorted=False)
    index, by_id = index.sort(dim=-1)  # equal values by lower id, as pick_tokens' stable sort
    ordered, order = values.gather(1, by_id).sort(dim=-1, descending=True, stable=True)
    order = index.gather(1, order)
    closed = ((scaled >= ordered[:, -1:]).sum(dim=-1) == m) & ~scaled.isnan().any(dim=-1)  # no tie across the cut
    probs, weights, k = _sorted_weights(ordered, top_k, vocab)
    cumulative = weights.cumsum(dim=-1)
    total_all = (torch.exp(scaled - ordered[:, :1]) * float(2 ** weight_bits(vocab))).to(torch.int64).sum(dim=-1)
    total = torch.where(k >= vocab, total_all, cumulative[:, -1])  # top-k within the candidates: their sum
    ends_inside = (k <= m) | ((top_p < 1) & (cumulative[:, -1].double() >= top_p.double() * total.double())) | \
        (probs[:, -1] < min_p)
    ok = closed & ends_inside & ((k <= m) | (k >= vocab))
    tokens = _inverse_cdf(order, probs, weights, cumulative, total, top_p, min_p, uniform)
    rest = (~ok).nonzero().squeeze(1)
    if rest.numel():
        args = (scaled[rest], top_k[rest], top_p[rest], min_p[rest], uniform[rest])
        tokens[rest] = pick_tokens_host(*args, candidates=tiers[1:]) if len(tiers) > 1 else pick_tokens(*args)
    return tokens
