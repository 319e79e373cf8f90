"""The Backend interface every engine backend implements, and the registry of backend loaders.

A backend runs one exported model (an export folder, docs/architecture.md "Export artifact") on one device:

    backend = load_backend("onnxruntime", export_info, **options)
    state = backend.new_state(batch_size)           # zeros; InferenceState on backend.device
    logits = backend.prefill(input_ids, state)      # input_ids: (batch, seq) int64 tensor
    logits = backend.decode(next_ids, state)        # next_ids:  (batch, 1)

Contract:
  * `new_state(batch_size)` -> `InferenceState` (mamba_deploy.models.state): `conv[i]` of shape
    (batch, conv_dim, d_conv - 1) in `dtype`, `ssm[i]` of shape (batch, d_inner, d_state) [Mamba1] or
    (batch, nheads, headdim, d_state) [Mamba2] in `state_dtype`, all zeros, on `device`.
  * `prefill(input_ids, state)`: input_ids (batch, seq) LongTensor (any device; the backend moves it),
    seq >= 1, starting from `state` (zeros or the state left by earlier calls: prompts may be fed
    in chunks). Updates `state` IN PLACE (the same tensor objects hold the new values, so a
    caller may keep references, e.g. CUDA-graph-captured buffers). Returns logits as a torch
    tensor (batch, 1, vocab_size_padded), or (batch, seq, vocab_size_padded) when the export has
    `logits: all` (`all_logits`), in `dtype`, on `device`. Columns >= config.vocab_size are padding.
  * `decode(input_ids, state)`: input_ids (batch, 1); one recurrent step; same in-place update;
    returns (batch, 1, vocab_size_padded).
  * The returned logits tensor may be a buffer the backend reuses on its next call: copy it if it
    must outlive that call.
  * Any number of threads may call one backend at once, each with its own state (one state is
    used by one call at a time), and every call gets the result it would get alone; each backend's
    docstring says how (its own scratch per call, or a lock). State tensors may be any strided
    views (transposes, slices of a larger buffer) of the right shape, dtype and device. (tensorrt
    does not meet this yet: one thread per backend, contiguous states.)
  * Slots (docs/architecture.md "Runtime: slots and scheduler"): `new_pool(max_slots)` -> StatePool;
    `prefill_slot(input_ids (1, L), pool, slot)` -> logits (1, 1|L, V) and `decode_slots(input_ids
    (n, 1), pool, slots (n,) int64 tensor)` -> logits (n, 1, V) run on pool rows, updated in place.
    The defaults gather the rows into a batch state (index_select), call prefill/decode and scatter them
    back (index_copy_): on CPU two extra copies of n rows of state per call (mamba-1.4b: ~14 MB of state
    per row, so ~28 MB of memcpy per row per step, small beside the weight read). A backend that can
    index slots in its kernels overrides them (no copy). `max_slots`: the most rows a state may have
    (None: no limit; the native engine's max_batch). `prefill_slots(input_ids (n, L), pool, slots)` prefills n
    slots in one batched call; `decode_sample_slots(pool, slots, sampler, vocab_limit)` decodes one step
    from the tokens the sampler holds per slot and samples the next ones, all on the device (the native
    backend replays decode + sampling as one CUDA graph).
  * Properties: `config` (ModelConfig), `dtype` and `state_dtype` (torch dtypes), `device`
    (torch.device), `name` (the registry name), `all_logits` (bool).

Backends register a loader by name; a new backend is one module that calls
`register_backend("name", loader)` where loader(info: ExportInfo, **options) -> Backend, plus one
line in names.BACKEND_MODULES so that it is imported on demand.
"""
from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch

from ..config import ModelConfig
from ..errors import MambaDeployError
from ..export.artifact import ExportInfo
from ..models.lm import check_prompt_lengths, check_room
from ..models.state import InferenceState
from ..ops._tensors import to_device_async
from .names import BACKEND_MODULES, backend_names
from .slots import StatePool

if TYPE_CHECKING:
    from .sampler import SamplerState


def prefill_rows_alone(prefill: Callable[[torch.Tensor, InferenceState], torch.Tensor], input_ids: torch.Tensor,
                       state: InferenceState, lengths: Sequence[int], all_logits: bool) -> torch.Tensor:
    """Backend.prefill_padded's semantics through `prefill` (ids (1, k), a one-row state view): row r's prompt,
    the last lengths[r] of input_ids (n, L), prefilled alone on row r of `state` -> logits (n, 1, V), or
    (n, L, V) with all_logits (zeros at the padding)."""
    n, width = input_ids.shape
    check_prompt_lengths(lengths, n, width)
    out = []
    for r, k in enumerate(lengths):
        logits = prefill(input_ids[r:r + 1, width - k:], state.with_tensors([t[r:r + 1] for t in state.tensors()]))
        out.append(torch.nn.functional.pad(logits, (0, 0, width - k, 0)) if all_logits else logits)
    return torch.cat(out)


class Backend(abc.ABC):
    """Runs the prefill and decode graphs of one export; see the module docstring for the contract."""

    name: str = "?"
    slots_option: Optional[str] = None  # the option that sizes a state pool fixed at load (Engine.load's slots)

    def __init__(self, info: ExportInfo):
        self.info = info

    @property
    def config(self) -> ModelConfig:
        return self.info.config

    @property
    def dtype(self) -> torch.dtype:
        return self.info.dtype

    @property
    def state_dtype(self) -> torch.dtype:
        return self.info.state_dtype

    @property
    def all_logits(self) -> bool:
        return self.info.all_logits

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    def max_seq_len(self) -> Optional[int]:
        """A hybrid's KV cache length per sequence, fixed at export (None without attention layers)."""
        return self.info.max_seq_len

    def new_state(self, batch_size: int) -> InferenceState:
        return InferenceState.zeros(self.config, batch_size, self.dtype, self.state_dtype, self.device,
                                    self.max_seq_len)

    @property
    def max_slots(self) -> Optional[int]:
        """The most rows one state may have on this backend (None: no limit of its own)."""
        return None

    def new_pool(self, max_slots: int) -> StatePool:
        """A StatePool of `max_slots` slots on this backend's device, allocated once (all zeros)."""
        return StatePool(self.config, self.new_state(max_slots))

    def prefill_slot(self, input_ids: torch.Tensor, pool: StatePool, slot: int) -> torch.Tensor:
        """input_ids (1, L) continuing from pool slot `slot` -> logits (1, 1|L, V); the slot is updated."""
        index = torch.tensor([slot], dtype=torch.int64, device=pool.device)
        rows = pool.gather(index)
        logits = self.prefill(input_ids, rows)
        pool.scatter(index, rows)
        return logits

    @property
    def pads_prompts(self) -> bool:
        """Whether prefill_slots takes `lengths`: prompts of different lengths right-aligned in one call, each
        into a fresh (reset) slot (prefill_padded). False unless a backend says otherwise."""
        return False

    def prefill_padded(self, input_ids: torch.Tensor, state: InferenceState, lengths: list[int]) -> torch.Tensor:
        """input_ids (n, L), row r's prompt its last lengths[r] ids, each row from a zero `state` row ->
        logits (n, 1|L, V) (those at padding mean nothing); `state` updated. Here each prompt is prefilled
        alone on its row (no saving: why pads_prompts is False); a backend that pads in one call overrides it."""
        return prefill_rows_alone(self.prefill, input_ids, state, lengths, self.all_logits)

    def prefill_slots(self, input_ids: torch.Tensor, pool: StatePool, slots: Sequence[int],
                      lengths: Optional[list[int]] = None) -> torch.Tensor:
        """input_ids (n, L): row r continues pool slot slots[r] (n distinct slots) -> logits (n, 1|L, V), in one
        batched prefill; the slots are updated. lengths: as in prefill_padded (fresh slots; pads_prompts)."""
        if len(slots) == 1 and lengths is None:
            return self.prefill_slot(input_ids, pool, int(slots[0]))
        index = to_device_async(torch.tensor(list(slots), dtype=torch.int64), pool.device)
        rows = pool.gather(index)
        logits = self.prefill(input_ids, rows) if lengths is None else self.prefill_padded(input_ids, rows, lengths)
        pool.scatter(index, rows)
        return logits

    def decode_sample_slots(self, pool: StatePool, slots: torch.Tensor, sampler: "SamplerState",
                            vocab_limit: int, all_greedy: bool = False) -> torch.Tensor:
        """One decode step and one sampled token for each of `slots` ((n,) distinct int64 on the sampler's
        device): row r feeds sampler.last_token[slots[r]] -> tokens (n,) int64 on that device, left in
        sampler.last_token for the next step (SamplerState.sample). The default decodes (decode_slots) then
        samples; a backend that captures both in one CUDA graph overrides it. all_greedy: as in sample."""
        ids = sampler.last_token.index_select(0, slots).unsqueeze(1)
        logits = self.decode_slots(ids, pool, slots)
        return sampler.sample(logits[:, -1], slots, vocab_limit, all_greedy)

    @property
    def prefill_budget(self) -> tuple[int, int]:
        """(prompt tokens of one request per prefill call, prompt tokens per scheduler iteration): the
        scheduler's defaults, sized for the device (small on the CPU so running requests are not stalled)."""
        return 512, 512

    def decode_slots(self, input_ids: torch.Tensor, pool: StatePool, slots: torch.Tensor) -> torch.Tensor:
        """input_ids (n, 1), slots (n,) distinct int64 (any device; the CPU costs a GPU backend no sync) ->
        logits (n, 1, V); the slots are updated."""
        self.check_slots(input_ids, slots)
        slots = slots.to(pool.device)
        rows = pool.gather(slots)
        logits = self.decode(input_ids, rows)
        pool.scatter(slots, rows)
        return logits

    @staticmethod
    def check_slots(input_ids: torch.Tensor, slots: torch.Tensor) -> None:
        """Raise MambaDeployError unless slots is an (n,) int64 tensor with n = the rows of input_ids."""
        if slots.dim() != 1 or slots.dtype != torch.int64 or slots.shape[0] != input_ids.shape[0]:
            raise MambaDeployError(f"slots must be an (n,) int64 tensor with n = {input_ids.shape[0]} rows of "
                                   f"input_ids, got {slots.dtype} {tuple(slots.shape)}")

    @abc.abstractmethod
    def prefill(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, input_ids: torch.Tensor, state: InferenceState) -> torch.Tensor: ...

    def check_inputs(self, input_ids: torch.Tensor, state: InferenceState, decode: bool) -> None:
        """Raise MambaDeployError for ids of the wrong rank/batch (all backends share these rules)."""
        if input_ids.dim() != 2 or input_ids.shape[1] < 1 or (decode and input_ids.shape[1] != 1):
            want = "(batch, 1)" if decode else "(batch, seq)"
            raise MambaDeployError(f"input_ids must have shape {want}, got {tuple(input_ids.shape)}")
        if input_ids.shape[0] != state.batch_size:
            raise MambaDeployError(f"input_ids batch {input_ids.shape[0]} != state batch {state.batch_size}")
        check_room(state, input_ids.shape[1])


BackendLoader = Callable[..., Backend]
BACKENDS: dict[str, BackendLoader] = {}
AUTO_ORDER = ["tensorrt", "native", "onnxruntime", "torch"]  # "auto" takes the first that is available


BACKEND_AVAILABLE: dict[str, Callable[[ExportInfo], bool]] = {}


def register_backend(name: str, loader: BackendLoader,
                     available: Callable[[ExportInfo], bool] = lambda info: True) -> None:
    """Make `name` loadable; `available(info)` says whether "auto" may pick it for that export."""
    BACKENDS[name] = loader
    BACKEND_AVAILABLE[name] = available


def _import(name: str) -> bool:
    if name not in BACKENDS and name in BACKEND_MODULES:
        try:
            importlib.import_module(BACKEND_MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name != BACKEND_MODULES[name]:
                raise
            return False
    return name in BACKENDS


def _probe(name: str, info: ExportInfo) -> bool:
    """Whether "auto" may use `name`; a backend whose probe fails counts as unavailable."""
    try:
        return _import(name) and BACKEND_AVAILABLE[name](info)
    except Exception:  # noqa: BLE001  (a broken optional backend must not break "auto")
        return name == "onnxruntime"


def resolve_backend(name: str, info: ExportInfo) -> str:
    """The registered backend that `name` means for this export: `name` itself, or for "auto" tensorrt if built,
    else native on a GPU, else onnxruntime, else torch (e.g. bfloat16 exports on CPU)."""
    if name == "auto":
        return next(n for n in AUTO_ORDER if _probe(n, info))
    if not _import(name):
        raise MambaDeployError(f"unknown or unavailable backend {name!r} (known: {', '.join(backend_names())})")
    return name


def load_backend(name: str, info: ExportInfo, **options) -> Backend:
    """`name` is a registered backend or "auto" (resolve_backend); `options` go to the backend."""
    return BACKENDS[resolve_backend(name, info)](info, **options)
