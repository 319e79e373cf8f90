"""The native GPU engine: our CUDA kernels + cuBLAS, static buffers, CUDA-graph decode (gpt-fast style).

    eng = NativeEngine(cfg, weights, dtype=torch.float16, max_batch=64)
    state = eng.new_state(4)                  # views of the engine's static state while it is claimed
    logits = eng.prefill(ids, state)          # ids (4, L): chunks of `chunk_len` tokens, eager
    logits = eng.decode(next_ids, state)      # (4, 1): one CUDA graph replay (captured per batch size)
    eng.reset_slot(7); eng.prefill_slot(ids, 7)   # state slots: the static state is a pool of max_batch slots
    logits = eng.decode_slots(next_ids, slots)    # (n, 1) on any n distinct slots, no state copies

Decode of one token for batch b, all on buffers allocated once for `max_batch` (rows [:b] used), is captured as
ONE graph: the launches of decode.py (its docstring lists them per layer). On compute capability 9.0+ the
library's decode kernels use programmatic dependent launch (ops._lib.set_programmatic_launch): each starts while
the previous one drains, its weights already on the way to L2. States are updated in place; logits are a reused
buffer. Every kernel that touches the recurrent state takes the state rows of its batch rows from the index buffer
`slot_ids` (state_rows in plugins/kernels), so one graph per batch size serves any set of slots: decode_slots
writes the slot ids there and replays.
With persistent_decode (Mamba1 and Mamba2 models, compute capability 9.0+; off by default) the batch-1 graph holds
one cooperative launch for all layers instead (persistent.py).
Prefill is eager, except chunks of at most prefill_graph_tokens (2,048) tokens and prefill_graph_batch (16) rows,
4,096 tokens in all (prefill_graphs.MAX_GRAPH_TOKENS), into consecutive slots of the pool: those replay captured
power-of-two pieces instead (at most three), or, for fresh prompts (`lengths`: left padding), one padded graph
(prefill_graphs.py: an eager prefill of that size is bound by the host). prefill_graph_tokens=0 keeps every prefill
eager. With prefill_split=k a chunk of pure Mamba layers runs as up to k parts along time, a wavefront on k streams
(prefill_split.py), in a graph or eager; by default (None) two in a batch-1 graph of an engine of at most 16
slots where the layers' width was measured to gain, else one (prefill_split.parts says which and why). With
fold_gated_norm (off by default) Mamba2 layers with one norm group fold the gated norm into the chunk scan
(prefill.py) and the decode step (decode.py). A float32 engine's cuBLAS
products are IEEE float32 whatever torch's setting, or TF32 with tf32=True (precision.py).
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch

from ..config import MAMBA2, ModelConfig
from ..errors import ParameterError, is_integer
from ..models.lm import check_room
from ..models.state import InferenceState
from ..ops import _lib
from . import decode as D, gemv as G, hybrid as Hy, prefill as P, prefill_split as S
from .persistent import PersistentDecode
from .precision import engine_matmuls
from .prefill_graphs import PrefillGraphs
from .weights import device_weights


class _GraphSwitch:
    """A boolean option of NativeEngine, held as `_<name>`: a change drops the graphs where changes_kernels(eng)."""

    def __init__(self, changes_kernels: Callable[["NativeEngine"], bool] = lambda eng: True):
        self.changes_kernels = changes_kernels

    def __set_name__(self, owner, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, eng, owner=None):
        return self if eng is None else getattr(eng, self.attr)

    def __set__(self, eng, on) -> None:
        if bool(on) != getattr(eng, self.attr) and self.changes_kernels(eng):
            eng.drop_graphs()
        setattr(eng, self.attr, bool(on))


class NativeEngine:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16,
                 state_dtype: torch.dtype = torch.float32, device: torch.device | str = "cuda", max_batch: int = 64,
                 chunk_len: int = 2048, gemv_max_batch: int = 2, use_graphs: bool = True, dt_gemm_min_batch: int = 8,
                 programmatic_launch: bool = True, max_seq_len: Optional[int] = None, tc_max_batch: int = 16,
                 prefill_graph_tokens: int = 2048, prefill_graph_batch: int = 16,
                 norm_in_gemv: tuple[str, ...] = (), staged_gemv: tuple[str, ...] = ("out_proj",),
                 staged_max_batch: Optional[int] = None, persistent_decode: bool = False,
                 prefill_split: Optional[int] = None,
                 fold_gated_norm: bool = False, tf32: bool = False, step_dt_tc: bool = False,
                 wgmma_min_batch: int = 17):
        for option, names, allowed in (("norm_in_gemv", norm_in_gemv, D.NORMED_PROJECTIONS),
                                       ("staged_gemv", staged_gemv, D.STAGED_PROJECTIONS)):
            if not set(names) <= allowed:
                raise ParameterError(option, f"must name projections of {sorted(allowed)}, got {sorted(names)}")
        S.check_parts(prefill_split)
        self.config, self.dtype, self.state_dtype = cfg, dtype, state_dtype
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError("the native engine runs on a CUDA device")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch, self.chunk_len, self.use_graphs = max_batch, chunk_len, use_graphs
        self.gemv_max_batch = min(gemv_max_batch, G.MAX_BATCH)
        self.tc_max_batch = min(tc_max_batch, G.TC_MAX_BATCH)  # 0: cuBLAS for every batch > gemv_max_batch
        # ... in gemm_tc.cu's wgmma form from this batch on (17: where the library switches from mma.sync by itself)
        self.wgmma_min_batch = wgmma_min_batch
        self.dt_gemm_min_batch = dt_gemm_min_batch  # Mamba1: from this batch on, dt_proj is a projection of its own
        # ... or, with step_dt_tc (16-bit), runs on tensor cores inside the step kernel (decode.mamba1_mixer; one
        # launch less a layer). Off: on an H100 level to 1.2% faster at batch 8-16, 9% slower at 64 (session 33)
        self._step_dt_tc = bool(step_dt_tc)
        # projections ("in_proj", Mamba2's gated "out_proj", the LM "head") whose norm runs inside the GEMV at
        # batch 1: one launch less each. None by default: Mamba1's in_proj gained in session 11 but lost by session
        # 20 (H200, mamba-1.4b b1 1.328 ms without, 1.390 with; mamba-2.8b 2.368 against 2.569; docs/performance.md)
        self.norm_in_gemv = frozenset(norm_in_gemv)
        # Mamba mixer projections ("in_proj", "x_proj", "out_proj") that take gemv's staged form where it applies
        # (gemv.staged_ok): weights stream into shared memory while the kernels before them run. Default out_proj,
        # the one that gained (session 20: mamba-1.4b b1 1.417 -> 1.328 ms, mamba2-1.3b 1.425 -> 1.279)
        self.staged_gemv = frozenset(staged_gemv)
        # ... up to this batch (3-16 on tensor cores, fp16 / bf16). None: 8 for Mamba1, 4 for Mamba2, where the staged
        # out_proj gained (H200, session 21: Mamba1 b8 1.683 -> 1.541 ms; Mamba2 b3-4 1-2%, b8 lost; both at 16)
        if staged_max_batch is None:
            staged_max_batch = 4 if cfg.arch == MAMBA2 else 8
        self.staged_max_batch = min(staged_max_batch, G.STAGED_MAX_BATCH)
        # Mamba1's x_proj (n = dt_rank + 2 d_state): on a 9.0 GPU the tensor-core GEMV (its skinny form since session
        # 18) beats cuBLAS's split-K GEMM + reduce kernel up to batch 64 (docs/performance.md, sessions 9 and 18)
        capability = torch.cuda.get_device_capability(self.device)
        self.x_proj_tc_max_batch = G.TC_MAX_BATCH if capability == (9, 0) and self.tc_max_batch else self.tc_max_batch
        # the Mamba mixers' out_proj on the tensor-core GEMV up to this batch (None: tc_max_batch); at 64 it lost to
        # cuBLAS's split-K GEMM + reduce (H100, session 33: mamba-1.4b 2.701 -> 2.813 ms; docs/performance.md)
        self.out_proj_tc_max_batch: Optional[int] = None
        Hy.check_supported(cfg)
        if programmatic_launch and capability >= (9, 0):
            _lib.set_programmatic_launch(True)
        self._load(weights)
        c, B, f = cfg, max_batch, dict(device=self.device)
        res_dtype = torch.float32 if c.residual_in_fp32 else dtype
        self.ids = torch.zeros(B, dtype=torch.int64, **f)
        self.hidden = torch.zeros(B, c.d_model, dtype=dtype, **f)
        # two residual buffers: a GEMV's norm prologue reads one and writes the other (decode.normed_proj)
        self.residuals = tuple(torch.zeros(B, c.d_model, dtype=res_dtype, **f) for _ in range(2))
        self.residual = self.residuals[0]
        self.normed = torch.zeros(B, c.d_model, dtype=dtype, **f)
        self.xz = torch.zeros(B, c.in_proj_dim, dtype=dtype, **f)
        self.y = torch.zeros(B, c.d_inner, dtype=dtype, **f)
        self.xdbl = torch.zeros(B, c.dt_rank + 2 * c.d_state, dtype=dtype, **f) if c.arch != MAMBA2 else None
        self.dt = torch.zeros(B, c.d_inner, dtype=dtype, **f) if c.arch != MAMBA2 else None
        self.unit = None if c.mixer_rms_eps is None else torch.ones(c.dt_rank + 2 * c.d_state, dtype=dtype, **f)
        self.mlp_h = torch.zeros(B, 2 * c.d_intermediate, dtype=dtype, **f) if c.d_intermediate else None
        self.mlp_y = torch.zeros(B, c.d_intermediate, dtype=dtype, **f) if c.d_intermediate else None
        # out_proj's input: [silu(z0) * x0, gated-normed y] (mamba-ssm's d_ssm < d_inner), else y alone
        self.ynorm = torch.zeros(B, c.mixer_out_dim, dtype=dtype, **f) if c.arch == MAMBA2 else None
        # a decode step's folded gated norm: each row's partial sums of squares (decode.mamba2_mixer)
        self.fold_sumsq = torch.zeros(B, G.fold_sumsq_count(c.d_inner), dtype=torch.float32, **f) \
            if c.arch == MAMBA2 else None
        # out_proj's k slices (0: off), their float32 partial sums written for the next norm (decode.out_proj)
        self.out_proj_slices = D.OUT_PROJ_SLICES if D.split_sums_ok(self) else 0
        self.out_parts = torch.zeros(D.OUT_PROJ_SLICES, B, c.d_model, dtype=torch.float32, **f) \
            if self.out_proj_slices else None
        self.logits = torch.zeros(B, c.vocab_size_padded, dtype=dtype, **f)
        self.tokens = torch.zeros(B, dtype=torch.int64, **f)  # decode_sample's output
        # the pool of max_batch slots; a hybrid's holds a KV cache of max_seq_len positions per slot and layer
        self.static = InferenceState.zeros(c, B, dtype, state_dtype, self.device, Hy.optional_max_seq_len(c, max_seq_len))
        self.hybrid = Hy.HybridBuffers(c, B, dtype, self.device) if c.other_layers else None
        self.slot_ids = torch.arange(B, dtype=torch.int64, **f)  # batch row r of a step uses slot slot_ids[r]
        self._slot_iota = self.slot_ids.clone()
        self._slot_range: Optional[tuple[int, int]] = (0, B)  # slot_ids[:n] == first .. first + n - 1, or None
        self._claim: Optional[weakref.ref] = None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.sample_graphs: dict[tuple, torch.cuda.CUDAGraph] = {}  # (batch, vocab_limit, all_greedy), one sampler
        self._sampler = None
        # One memory pool for every graph (they replay one at a time on one stream), kept alive by the first
        # graph captured: a pool whose graphs were all freed cannot be captured into again.
        self._pool_keeper: Optional[torch.cuda.CUDAGraph] = None
        # Every capture (and its warm-up runs) on ONE side stream of the engine, not a new one each time: decode
        # graphs of a process that had run kernels on more streams lose part of programmatic launch's overlap
        # (mamba-1.4b b64 2.567 -> 2.661 ms on the H200; docs/performance.md, sessions 16 and 35).
        self._capture_stream: Optional[torch.cuda.Stream] = None
        # chunks of <= prefill_graph_tokens tokens and <= prefill_graph_batch rows (<= 4,096 tokens in all) replay
        # captured pieces (0: all eager). On by default: an eager 100-token prefill is bound by the host, ~500
        # launches (H200, mamba-1.4b batch 1 in Engine.generate: 12-55 ms eager against 7 ms as one padded replay;
        # docs/performance.md, session 13), and so was a 2,048-token one (26.0 ms wall, 17.9 ms of kernels)
        self.prefill_graphs = PrefillGraphs(self, prefill_graph_tokens, prefill_graph_batch)
        # prefill chunks cut along time into up to this many parts, run as a wavefront on as many streams
        # (native/prefill_split.py; 1: off; None: prefill_split.parts decides, where it was measured to gain and
        # cost no decode speed); a graph captures the parts' streams too
        # (both are properties: setting one drops the prefill graphs captured under the other value)
        self._prefill_split, self._wavefront = prefill_split, S.Wavefront(self.device)
        # Mamba2 layers with one norm group: the gated norm folded into the chunk scan (prefill) and into the step
        # kernel (decode, batch > 1 or without norm_in_gemv), its factor applied by the next norm (prefill.py,
        # decode.py; off by default until measured)
        self._fold_gated_norm = bool(fold_gated_norm)
        # float32 engines: their cuBLAS products in TF32 (faster, ~1e-3 off) only when asked, whatever the
        # process's torch setting says (native/precision.py)
        self._tf32 = bool(tf32)
        # batch-1 decode steps as one cooperative launch for all layers (native/persistent.py). Off by default: on
        # the H200 only mamba-1.4b gains (1.346 -> 1.285 ms), the other published shapes lose 14-27%
        # (docs/performance.md, session 28)
        self.persistent = None
        if persistent_decode:
            try:
                self.persistent = PersistentDecode(self)
            except ValueError as e:
                raise ParameterError("persistent_decode", f"cannot be used: {e}") from None

    @property
    def prefill_split(self) -> Optional[int]:
        return self._prefill_split

    @prefill_split.setter
    def prefill_split(self, parts: Optional[int]) -> None:
        S.check_parts(parts)
        if parts != self._prefill_split:
            self.prefill_graphs.graphs.clear()  # captured with the other split
        self._prefill_split = parts

    # switches whose change drops the captured graphs (they hold the kernels of the old value); tf32 only changes
    # a float32 engine's kernels
    fold_gated_norm = _GraphSwitch()
    tf32 = _GraphSwitch(lambda eng: eng.dtype == torch.float32)
    step_dt_tc = _GraphSwitch()

    def drop_graphs(self) -> None:
        """Forget every graph (decode, sampled decode, prefill): they are captured again when next needed, under
        the options as they are then (the setters of fold_gated_norm, tf32 and step_dt_tc call it; a benchmark that
        sets a placement attribute between runs does)."""
        self.prefill_graphs.graphs.clear()
        self.graphs.clear()
        self.sample_graphs = {}

    # ---- weights ------------------------------------------------------------------------------
    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        self.emb, self.head, self.norm_f, self.layers = device_weights(self.config, weights, self.dtype, self.device)

    def weight_bytes(self) -> int:
        """Bytes one decode step reads from weights: every matrix and vector once (the embedding only
        as the tied LM head; dt_proj through its packed copy, its plain copy serves prefill)."""
        tensors = [self.head, *self.norm_f]
        for L in self.layers:
            tensors += [t for t in L.tensors() if t is not L.dt_w or L.dt_packed is None]
        unique = {t.data_ptr(): t for t in tensors if t is not None}
        return sum(t.numel() * t.element_size() for t in unique.values())

    def state_bytes(self, batch: int) -> int:
        """Bytes of the recurrent state of `batch` rows (conv + ssm, all layers): read and written per step (a
        hybrid's KV caches are read up to each row's length on top: hybrid.kv_bytes)."""
        return sum(t[:batch].numel() * t.element_size() for t in self.static.conv + self.static.ssm +
                   self.static.attn_conv)

    @property
    def max_seq_len(self) -> Optional[int]:
        """The KV cache length of a hybrid's slots (None without attention layers)."""
        return self.static.max_seq_len

    def _rows_of_pool(self, first: int, count: int) -> InferenceState:
        return self.static.with_tensors([t[first:first + count] for t in self.static.tensors()])

    # ---- state -----------------------------------------------------------------------------------
    def new_state(self, batch_size: int) -> InferenceState:
        """Zero state. While no other state holds them, its tensors are views of slots 0 .. batch_size-1 of the
        static pool the decode graphs run on (decode is then a bare replay); otherwise fresh tensors, which
        decode copies in and out of those slots, putting back what they held."""
        if not 1 <= batch_size <= self.max_batch:
            raise ValueError(f"batch_size must be in 1..{self.max_batch} (the engine's max_batch)")
        if self._claim is None or self._claim() is None:
            st = self._rows_of_pool(0, batch_size)
            st.zero_()
            self._claim = weakref.ref(st)
            return st
        return InferenceState.zeros(self.config, batch_size, self.dtype, self.state_dtype, self.device,
                                    self.max_seq_len)

    def is_pool_view(self, state: InferenceState) -> bool:
        """Whether `state` is consecutive slots of the static pool (the claimed state, a prefill_slot view):
        decode then runs on those slots in place."""
        return self._first_slot(state) is not None

    def _first_slot(self, state: InferenceState) -> Optional[int]:
        """k when `state` holds views of slots [k, k + batch) of the pool (checked on its first conv and last
        ssm tensor and a hybrid's lengths, as InferenceState builds them all alike), else None."""
        first = None
        pairs = [(state.conv[0], self.static.conv[0]), (state.ssm[-1], self.static.ssm[-1])]
        if self.static.length is not None:
            if state.length is None:
                return None
            pairs.append((state.length, self.static.length))
        for mine, pool in pairs:
            row_bytes = pool.stride(0) * pool.element_size()
            offset = mine.data_ptr() - pool.data_ptr()
            k = offset // row_bytes
            same_pool = mine.untyped_storage().data_ptr() == pool.untyped_storage().data_ptr()
            if not same_pool or mine.stride() != pool.stride() or mine.shape[1:] != pool.shape[1:] or \
                    offset % row_bytes or not 0 <= k <= self.max_batch - mine.shape[0] or first not in (None, k):
                return None
            first = k
        return first

    # ---- state slots -------------------------------------------------------------------------------
    def _check_slot(self, slot) -> int:
        if not is_integer(slot) or not 0 <= slot < self.max_batch:
            raise ParameterError("slot", f"must be an int in 0..{self.max_batch - 1} (the engine's max_batch "
                                         f"slots), got {slot!r}")
        return int(slot)

    def slot_state(self, slot: int, count: int = 1) -> InferenceState:
        """Slots slot .. slot + count - 1 of the pool as a batch-`count` state: views, no copy (prefill / decode
        update it in place)."""
        k = self._check_slot(slot)
        if not (is_integer(count) and 1 <= count <= self.max_batch - k):
            raise ParameterError("count", f"must be an int in 1..{self.max_batch - k}, got {count!r}")
        return self._rows_of_pool(k, count)

    def reset_slot(self, slot: int) -> None:
        """Zero the state of slot `slot` (a fresh sequence starts there)."""
        self.slot_state(slot).zero_()

    @torch.no_grad()
    def prefill_slot(self, input_ids: torch.Tensor, slot: int, all_logits: bool = False) -> torch.Tensor:
        """input_ids (1, L) prefilled straight into slot `slot`, continuing from its state (reset_slot first for
        a new sequence); returns logits (1, 1, V), or (1, L, V) with all_logits."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise ParameterError("input_ids", f"must be (1, length >= 1), got {tuple(input_ids.shape)}")
        return self.prefill(input_ids, self.slot_state(slot), all_logits=all_logits)

    def _slots_on_host(self, slots, n: int) -> torch.Tensor:
        """slots (n,) of distinct ints in 0..max_batch-1, as a CPU int64 tensor (a CUDA tensor costs a sync)."""
        t = torch.as_tensor(slots)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or tuple(t.shape) != (n,):
            raise ParameterError("slots", f"must be ({n},) integers (one slot per row of input_ids), got "
                                          f"{t.dtype} {tuple(t.shape)}")
        host = t.to("cpu", torch.int64)
        if n and (int(host.min()) < 0 or int(host.max()) >= self.max_batch):
            raise ParameterError("slots", f"must lie in 0..{self.max_batch - 1}, got {host.tolist()}")
        if host.unique().numel() != n:
            raise ParameterError("slots", f"must be distinct, got {host.tolist()}")
        return host

    @torch.no_grad()
    def decode_slots(self, input_ids: torch.Tensor, slots) -> torch.Tensor:
        """input_ids (n, 1) -> logits (n, 1, vocab_padded) (a reused buffer); row r continues the sequence in
        slot slots[r] and updates it in place: the slot ids go to the device index buffer and the graph of
        batch n replays on them, with no state copy. slots: (n,) distinct ints, any device."""
        n = input_ids.shape[0] if input_ids.dim() == 2 else 0
        if input_ids.dim() != 2 or input_ids.shape[1] != 1 or not 1 <= n <= self.max_batch:
            raise ParameterError("input_ids", f"must be (n, 1) with n in 1..{self.max_batch}, got "
                                              f"{tuple(input_ids.shape)}")
        given = torch.as_tensor(slots)
        host = self._slots_on_host(given, n)
        self.ids[:n].copy_(input_ids.reshape(n), non_blocking=True)
        self.slot_ids[:n].copy_(given if given.device == self.device else host)
        self._slot_range = None
        self._replay(n)
        return self.logits[:n].unsqueeze(1)

    @torch.no_grad()
    @engine_matmuls
    def decode_sample(self, slots: torch.Tensor, sampler, vocab_limit: int, all_greedy: bool = False) -> torch.Tensor:
        """One decode step and one sampled token for each of `slots` ((n,) distinct int64 on this device; not
        checked, as that would synchronise): row r feeds sampler.last_token[slots[r]], and the step and the
        sampler (runtime.sampler.SamplerState on this device) replay as ONE graph per (n, vocab_limit,
        all_greedy), so the tokens never leave the device. -> tokens (n,) (a reused buffer), also in
        sampler.last_token."""
        n = slots.shape[0] if slots.dim() == 1 else 0
        if slots.dtype != torch.int64 or slots.device != self.device or not 1 <= n <= self.max_batch:
            raise ParameterError("slots", f"must be (n,) int64 on {self.device} with n in 1..{self.max_batch}, got "
                                          f"{slots.dtype} {tuple(slots.shape)} on {slots.device}")
        if sampler is not self._sampler:  # graphs hold the sampler's buffers: one sampler at a time
            self._sampler, self.sample_graphs = sampler, {}
        self.slot_ids[:n].copy_(slots, non_blocking=True)
        self._slot_range = None
        if not self.use_graphs:
            self._sample_step(n, sampler, vocab_limit, all_greedy)
        else:
            key = (n, int(vocab_limit), bool(all_greedy))
            if key not in self.sample_graphs:
                kept = [sampler.step, sampler.seen, sampler.last_token, self.tokens]
                self.sample_graphs[key] = self._capture(
                    lambda: self._sample_step(n, sampler, vocab_limit, all_greedy), kept)
            self.sample_graphs[key].replay()
        return self.tokens[:n]

    def _sample_step(self, b: int, sampler, vocab_limit: int, all_greedy: bool) -> None:
        torch.index_select(sampler.last_token, 0, self.slot_ids[:b], out=self.ids[:b])
        D.step(self, b, greedy=False)
        self.tokens[:b].copy_(sampler.sample(self.logits[:b], self.slot_ids[:b], vocab_limit, all_greedy))

    def _use_slot_range(self, first: int, n: int) -> None:
        """slot_ids[:n] <- first .. first + n - 1 (skipped when it already holds them)."""
        held = self._slot_range
        if held is None or held[0] != first or held[1] < n:
            self.slot_ids[:n].copy_(self._slot_iota[first:first + n])
            self._slot_range = (first, n)

    def _graph(self, b: int) -> torch.cuda.CUDAGraph:
        """The greedy decode graph of batch b, captured once."""
        if b not in self.graphs:
            self.graphs[b] = self._capture(lambda: D.step(self, b), [])
        return self.graphs[b]

    def _capture(self, step: Callable[[], None], kept: list[torch.Tensor]) -> torch.cuda.CUDAGraph:
        """`step` captured as a graph; the two warm-up runs change nothing: the state, ids, residual and `kept`
        are saved before and restored after. A hybrid's KV caches are not: the runs write them only at each
        slot's length and beyond, which no step reads before writing it again; its lengths are restored."""
        st = self.static
        kept = st.conv + st.ssm + st.attn_conv + ([st.length] if st.length is not None else []) + \
            [self.ids, *self.residuals] + kept
        saved = [t.clone() for t in kept]
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        side = self._capture_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=None if self._pool_keeper is None else self._pool_keeper.pool(), stream=side):
            step()
        self._pool_keeper = self._pool_keeper or graph
        torch._foreach_copy_(kept, saved)
        return graph

    @torch.no_grad()
    @engine_matmuls
    def _replay(self, b: int) -> None:
        """Decode rows [:b] of the static buffers from self.ids, on slots slot_ids[:b] (graph replay, or eager
        without graphs)."""
        if self.use_graphs:
            self._graph(b).replay()
        else:
            D.step(self, b)

    def greedy_replay(self, state: InferenceState, next_ids: torch.Tensor) -> Callable[[int], None]:
        """The bare decode step, for benchmarks and profiles: returns run(n), which decodes n greedy steps of
        `state` from next_ids (batch,), each step's argmax feeding the next, as graph replays with no copy.
        `state` must be the engine's static state (the first state new_state() handed out, still alive, or
        consecutive slots of it); another decode between the runs re-points the slots."""
        b, first = state.batch_size, self._first_slot(state)
        if first is None:
            raise ValueError("greedy_replay needs the engine's static state (another state from new_state() "
                             "is alive)")
        self.ids[:b].copy_(next_ids.reshape(b))
        self._use_slot_range(first, b)

        def run(steps: int) -> None:
            for _ in range(steps):
                self._replay(b)
        return run

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """input_ids (b, 1) -> logits (b, 1, vocab_padded) (a reused buffer); state updated in place."""
        b = input_ids.shape[0]
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"batch {b} is over the engine's max_batch {self.max_batch}")
        self.ids[:b].copy_(input_ids.reshape(b), non_blocking=True)
        first = self._first_slot(state)
        static = first is not None
        self._use_slot_range(first or 0, b)
        if not static:  # slots 0 .. b-1 lend their rows, then get back what they held (the claimed state's)
            lent = self._rows_of_pool(0, b).tensors()
            held = [t.clone() for t in lent]
            torch._foreach_copy_(lent, state.tensors())
        self._replay(b)
        if not static:
            torch._foreach_copy_(state.tensors(), lent)
            torch._foreach_copy_(lent, held)
        return self.logits[:b].unsqueeze(1)

    # ---- prefill ---------------------------------------------------------------------------------
    @torch.no_grad()
    @engine_matmuls
    def prefill(self, input_ids: torch.Tensor, state: InferenceState, all_logits: bool = False,
                lengths: Optional[list[int]] = None) -> torch.Tensor:
        """input_ids (b, L) from `state` (updated in place), in chunks of chunk_len tokens, so memory does
        not grow with L; returns logits (b, 1, V) of the last position, or (b, L, V) with all_logits.
        lengths: None, or each row's prompt length (1..L): prompts of different lengths in one call, each
        right-aligned in its row (left padding, any ids); those rows must start from a zero state (fresh
        sequences), and the logits at pad positions mean nothing. Pure Mamba (and MLP) layers only."""
        ids = input_ids.to(self.device, torch.int64, non_blocking=True)
        check_room(state, ids.shape[1])
        graphs = self.prefill_graphs
        first = self._first_slot(state) if graphs.max_tokens else None
        if lengths is not None:  # fresh prompts: one padded graph, or eager chunks with the padding masked
            if first is not None and ids.shape[1] <= self.chunk_len and graphs.applies_padded(*ids.shape, all_logits):
                P.check_lengths(self.config, ids.shape, lengths)
                return graphs.run_padded(ids, list(lengths), first)
            first = None
        pad, padded_to = P.left_padding(self.config, ids.shape, lengths, self.device)
        outs = []
        for s in range(0, ids.shape[1], self.chunk_len):
            chunk = ids[:, s:s + self.chunk_len]
            if first is not None and graphs.applies(*chunk.shape, all_logits):
                outs.append(graphs.run(chunk, first))
            else:
                chunk_pad = pad[:, s:s + self.chunk_len] if s < padded_to else None
                outs.append(self._prefill_chunk(chunk, state, all_logits, pad=chunk_pad))
        return outs[-1] if not all_logits else torch.cat(outs, dim=1)

    def _prefill_chunk(self, ids: torch.Tensor, state: InferenceState, all_logits: bool,
                       rows: Optional[torch.Tensor] = None, pad: Optional[torch.Tensor] = None,
                       graphed: bool = False) -> torch.Tensor:
        """ids (b, n) -> logits (b, 1 or n, vocab_padded); `state` (or its rows rows[r]) in place. pad: None or
        (b, n) bool, True at left padding (prefill.mamba_mixer). graphed: a prefill graph's piece (prefill_split)."""
        c = self.config
        if S.applies(self, ids.shape[1], ids.shape[0], graphed):
            return S.run(self, self._wavefront, ids, state, all_logits, rows, pad, graphed)
        hidden, residual, factor = self.emb[ids], None, None
        attention = Hy.chunk_positions(state, ids.shape[1]) if c.attn_layer_idx else ()
        for L in self.layers:
            hidden, residual, factor = P.layer(self, L, hidden, residual, state, rows, pad, attention, factor=factor)
        if state.length is not None:
            state.length += ids.shape[1]
        return P.head_logits(self, hidden, residual, all_logits, factor)
