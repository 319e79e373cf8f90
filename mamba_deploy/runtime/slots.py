"""State slots: a fixed pool of per-sequence states allocated once, and their snapshots.

A `StatePool` holds `max_slots` rows of recurrent state on a backend's device; a sequence holds one
row (a slot) from `acquire()` to `release()`. Decode runs on any set of slots (`Backend.decode_slots`),
so sequences join and leave a running batch without moving anyone else's state
(docs/architecture.md "Runtime: slots and scheduler").

The pool is a list of named buffers whose first dimension is the slot: `conv.{i}` and `ssm.{i}` per Mamba
layer i (shapes from `ModelConfig.conv_state_shape` / `ssm_state_shape`, the one place they live), and for a
hybrid `key.{i}` and `value.{i}` per attention layer i (`ModelConfig.kv_cache_shape`: a KV cache of the
export's max_seq_len per slot) plus `length` (each slot's token count). reset / save / restore walk that list
and nothing else. `pool.state` is the same memory as an `InferenceState` of `max_slots` rows.

A `SlotSnapshot` is one slot copied to host tensors; `to_bytes()` / `from_bytes()` frame it with a
small JSON header (model fingerprint, per-buffer dtype and shape) so that it can be stored or moved to
another process; restoring a snapshot of another model (or other dtypes) is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import struct
import threading
from typing import Optional, Sequence

import torch

from ..config import ModelConfig
from ..errors import MambaDeployError
from ..models.state import InferenceState, io_name, layers_view

_MAGIC = b"MDSLOT1\n"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                                      torch.int32)}


def consecutive_start(slots: Sequence[int]) -> Optional[int]:
    """k when `slots` are k, k + 1, ..., k + n - 1 (n >= 1): rows a backend can take as one view of the pool;
    else None."""
    listed = [int(s) for s in slots]
    return listed[0] if listed and listed == list(range(listed[0], listed[0] + len(listed))) else None


def config_fingerprint(config: ModelConfig) -> str:
    """A short hash of the model's architecture: equal for two exports of the same model shape."""
    canonical = json.dumps(config.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclasses.dataclass
class SlotSnapshot:
    """One slot's buffers on the host: name -> tensor of the per-slot shape (no slot dimension)."""

    fingerprint: str
    tensors: dict[str, torch.Tensor]

    def to_bytes(self) -> bytes:
        """MAGIC, header length (u64 little-endian), JSON header, then each buffer's raw bytes in order."""
        entries = [{"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                   for name, t in self.tensors.items()]
        header = json.dumps({"fingerprint": self.fingerprint, "buffers": entries}).encode()
        body = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in self.tensors.values())
        return _MAGIC + struct.pack("<Q", len(header)) + header + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "SlotSnapshot":
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
            raise MambaDeployError("not a mamba-deploy slot snapshot (bad magic)")
        (size,) = struct.unpack_from("<Q", data, len(_MAGIC))
        start = len(_MAGIC) + 8
        try:
            header = json.loads(data[start:start + size])
            entries = [(e["name"], _DTYPES[e["dtype"]], [int(s) for s in e["shape"]]) for e in header["buffers"]]
            fingerprint = str(header["fingerprint"])
        except (ValueError, KeyError, TypeError):
            raise MambaDeployError("corrupt slot snapshot header") from None
        offset, tensors = start + size, {}
        for name, dtype, shape in entries:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            raw = bytearray(data[offset:offset + nbytes])
            if len(raw) != nbytes:
                raise MambaDeployError(f"truncated slot snapshot (buffer {name!r} is cut short)")
            tensors[name] = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape) if nbytes else \
                torch.empty(shape, dtype=dtype)
            offset += nbytes
        if offset != len(data):
            raise MambaDeployError(f"slot snapshot has {len(data) - offset} trailing bytes")
        return cls(fingerprint, tensors)


class StatePool:
    """`max_slots` rows of state on one device; see the module docstring.

    acquire/release are thread-safe; reset/save/restore/gather/scatter touch only the given slots' rows
    and must not run concurrently with a backend call on the same slot (the scheduler's loop thread
    owns them)."""

    def __init__(self, config: ModelConfig, state: InferenceState):
        """`state`: the pool's memory, an InferenceState of max_slots rows (e.g. backend.new_state(n))."""
        self.config, self.state = config, state
        self.max_slots = state.batch_size
        n_mamba, n_attn = len(config.mamba_layers), len(config.attn_layer_idx)
        kv = config.kv_cache_shape(self.max_slots, state.max_seq_len or 0)
        for kind, tensors, count, shape in (("conv", state.conv, n_mamba, config.conv_state_shape(self.max_slots)),
                                            ("ssm", state.ssm, n_mamba, config.ssm_state_shape(self.max_slots)),
                                            ("key", state.key, n_attn, kv), ("value", state.value, n_attn, kv),
                                            ("attn_conv", state.attn_conv, n_attn if config.attn_d_conv else 0,
                                             config.attn_conv_state_shape(self.max_slots))):
            if len(tensors) != count or any(tuple(t.shape) != shape for t in tensors):
                raise MambaDeployError(f"pool {kind} state does not match the model: need {count} x {shape}")
        order = ("conv", "ssm", "key", "value", "attn_conv", "length")  # by kind, as snapshots of Mamba models always were
        self.buffers: list[tuple[str, torch.Tensor]] = [
            (io_name(kind, layer).replace("_state", ""), t)
            for kind, layer, t in sorted(state.named(config), key=lambda e: order.index(e[0]))]
        self.fingerprint = config_fingerprint(config)
        # reset_many zeroes these: per kind, every layer's tensor as one (layers, slots, ...) view where the state
        # is a layer_block (one strided view for a range of slots), else each tensor as a view of one layer
        self._zero_views = []
        for kind in (state.conv, state.ssm, state.key, state.value, state.attn_conv,
                     [state.length] if state.length is not None else []):
            block = layers_view(kind)
            self._zero_views += [block] if block is not None else [t.unsqueeze(0) for t in kind]
        # a heap: the lowest free slot is handed out first, so running sequences tend to hold consecutive slots,
        # which backends run as one view of the pool (no gather / scatter)
        self._free = list(range(self.max_slots))
        self._held: set[int] = set()
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.state.conv[0].device

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def held(self) -> list[int]:
        """The slots acquired and not released, sorted (empty when nothing leaked)."""
        with self._lock:
            return sorted(self._held)

    def acquire(self) -> int:
        """A free slot, now held by the caller; its contents are whatever its last holder left (reset it)."""
        with self._lock:
            if not self._free:
                raise MambaDeployError(f"no free state slot (all {self.max_slots} are held)")
            slot = heapq.heappop(self._free)
            self._held.add(slot)
            return slot

    def release(self, slot: int) -> None:
        with self._lock:
            if slot not in self._held:
                raise MambaDeployError(f"state slot {slot!r} is not held (released twice?)")
            self._held.remove(slot)
            heapq.heappush(self._free, slot)

    def check_no_leaks(self) -> None:
        """MambaDeployError naming the slots still held (for tests and shutdown checks)."""
        held = self.held
        if held:
            raise MambaDeployError(f"{len(held)} state slot(s) still held: {held[:8]}")

    def reset(self, slot: int) -> None:
        """Zero every buffer of `slot` (the start of a fresh sequence)."""
        self.reset_many([slot])

    def reset_many(self, slots: Sequence[int]) -> None:
        """Zero every buffer of each of `slots`: one foreach call over the per-kind views of all layers (a view
        per kind, not per layer, slot and buffer); consecutive slots as one range of rows."""
        first = consecutive_start(slots)
        if first is not None:
            torch._foreach_zero_([view[:, first:first + len(slots)] for view in self._zero_views])
        elif slots:
            torch._foreach_zero_([view[:, int(slot)] for slot in slots for view in self._zero_views])

    def save(self, slot: int) -> SlotSnapshot:
        """`slot`'s buffers copied to host tensors."""
        return SlotSnapshot(self.fingerprint, {name: t[slot].to("cpu", copy=True) for name, t in self.buffers})

    def restore(self, slot: int, snapshot: SlotSnapshot) -> None:
        """Copy `snapshot` into `slot`; refused (nothing written) if it is of another model or layout."""
        if snapshot.fingerprint != self.fingerprint:
            raise MambaDeployError(f"slot snapshot is of another model (fingerprint {snapshot.fingerprint}, "
                                   f"this pool's model is {self.fingerprint})")
        names = [name for name, _ in self.buffers]
        if list(snapshot.tensors) != names:
            raise MambaDeployError(f"slot snapshot holds buffers {list(snapshot.tensors)[:4]}..., this pool "
                                   f"needs {names[:4]}...")
        for name, tensor in self.buffers:
            got = snapshot.tensors[name]
            if got.dtype != tensor.dtype or got.shape != tensor.shape[1:]:
                raise MambaDeployError(f"slot snapshot buffer {name} is {got.dtype} {tuple(got.shape)}, this pool "
                                       f"needs {tensor.dtype} {tuple(tensor.shape[1:])}")
        for name, tensor in self.buffers:
            tensor[slot].copy_(snapshot.tensors[name])

    def gather(self, slots: torch.Tensor) -> InferenceState:
        """The rows `slots` ((n,) int64 on the pool's device) copied into a new batch state of n rows."""
        return self.state.with_tensors([t.index_select(0, slots) for t in self.state.tensors()])

    def scatter(self, slots: torch.Tensor, rows: InferenceState) -> None:
        """Write the batch state `rows` back into the rows `slots` (the inverse of gather)."""
        for dst, src in zip(self.state.tensors(), rows.tensors()):
            dst.index_copy_(0, slots, src)
