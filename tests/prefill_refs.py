"""The native engine's prefill on the CPU: the library kernels it launches replaced by their references, and
stand-in CUDA streams for the split prefill (CPU tests of native/prefill.py and native/prefill_split.py)."""
import contextlib
from collections import Counter

import torch

from mamba_deploy.config import parse_config
from mamba_deploy.ops import add_norm_ref, causal_conv1d_ref, chunk_scan_ref, gated_rms_norm_ref, selective_scan_ref
from mamba_deploy.native import prefill_split as S
from mamba_deploy.ops import cuda as K

# one-layer models small enough for the references' loops over time
PREFILL = {"mamba1": {"d_model": 32, "n_layer": 1, "vocab_size": 50, "ssm_cfg": {"d_state": 8}},
           "mamba2": {"d_model": 32, "n_layer": 1, "vocab_size": 50,
                      "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 4}}}


def kernel_reference(x, z, weight, eps=1e-5, group_size=None, *, out=None):
    """K.gated_rms_norm's checks of its views (shared code, CPU-safe) and its reference math, into `out`."""
    d = x.shape[-1]
    assert weight.shape == (d,) and out is not None and out.shape == x.shape
    K._rows(x, "x", d), K._rows(out, "out", d)  # the kernel's row view of strided slices must exist
    out.copy_(gated_rms_norm_ref(x, z, weight, eps, group_size))
    return out


def add_norm_reference(x, residual, weight, bias=None, eps=1e-5, is_rms=True, residual_in_fp32=True, out_dtype=None,
                       *, out=None, residual_out=None):
    """K.add_norm's semantics (its reference), into `out` / `residual_out` where given."""
    o, r = add_norm_ref(x, residual, weight, bias, eps, is_rms, residual_in_fp32, out_dtype)
    return (o if out is None else out.copy_(o)), (r if residual_out is None else residual_out.copy_(r))


def kernel_on_rows(ref, state_arg):
    """A kernel's semantics through its reference (`state_arg`: the position of its state argument):
    y into `out`, the final state into `state_out`; with state_rows, batch row r reads and writes row
    state_rows[r] of the state pool."""
    def run(*args, out=None, state_out=None, state_rows=None):
        args = list(args)
        if state_rows is not None:
            args[state_arg] = args[state_arg][state_rows]
        y, new_state = ref(*args)
        out.copy_(y)
        if state_rows is None:
            state_out.copy_(new_state)
        else:
            state_out[state_rows] = new_state
        return out, state_out
    return run


def chunk_scan_folding(*args, out=None, state_out=None, state_rows=None, norm_weight=None, norm_sumsq=None):
    """K.chunk_scan's semantics through its reference, the folded gated norm included (ops.cuda.chunk_scan): the
    gated y times norm_weight into `out`, each head's sum of its square into norm_sumsq."""
    kernel_on_rows(chunk_scan_ref, 9)(*args, out=out, state_out=state_out, state_rows=state_rows)
    if norm_weight is not None:
        norm_sumsq.copy_(out.float().square().sum(-1))
        out.mul_(norm_weight.view(out.shape[-2:]))
    return out, state_out


def patch_prefill_kernels(monkeypatch) -> None:
    """The prefill's library kernels (conv, both scans, the gated and the residual norms) as their references."""
    monkeypatch.setattr(K, "causal_conv1d", kernel_on_rows(causal_conv1d_ref, 3))
    monkeypatch.setattr(K, "selective_scan", kernel_on_rows(selective_scan_ref, 8))
    monkeypatch.setattr(K, "chunk_scan", chunk_scan_folding)
    monkeypatch.setattr(K, "gated_rms_norm", kernel_reference)
    monkeypatch.setattr(K, "add_norm", add_norm_reference)


def prefill_weights(raw: dict, seed: int = 3):
    """(cfg, native.weights.device_weights of random float32 weights on the CPU: embedding, head, norm_f, layers)."""
    from mamba_deploy.export.weights import export_name_and_tensor
    from mamba_deploy.models import MambaLM
    from mamba_deploy.native import weights as native_weights
    from mamba_deploy.random_init import init_weights_

    cfg = parse_config(raw)
    model = MambaLM(cfg, torch.float32)
    init_weights_(model, seed=seed)
    weights = dict(export_name_and_tensor(k, p, torch.float32) for k, p in model.named_parameters())
    return cfg, native_weights.device_weights(cfg, weights, torch.float32, torch.device("cpu"))


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_event(self, event):
        self.log.append(("wait", self.name, event.kind, event.tag))

    def wait_stream(self, other):
        self.log.append(("join", self.name, other.name))


class FakeEvent:
    def __init__(self, kind, wavefront):
        self.kind, self.wavefront, self.tag = kind, wavefront, None

    def record(self, stream):  # the tag: which launch of its kind, on which stream, it follows
        self.tag = (stream.name, self.kind, self.wavefront.launches[stream.name, self.kind] - 1)


class FakeWavefront:
    """S.Wavefront's interface on the host alone: every kernel launch, wait, fork and join into `log`."""

    def __init__(self):
        self.log, self.launches = [], Counter()
        self.now = self.caller = FakeStream("caller", self.log)
        self.streams, self.events = [], []

    def current(self):
        return self.now

    def side(self, count, caller):
        while len(self.streams) < count:
            self.streams.append(FakeStream(f"side{len(self.streams)}", self.log))
            self.events.append({kind: FakeEvent(kind, self) for kind in S.KINDS})
        return self.streams[:count], self.events[:count]

    @contextlib.contextmanager
    def use(self, stream):
        before, self.now = self.now, stream
        try:
            yield
        finally:
            self.now = before

    def keep(self, tensor, stream):
        self.log.append(("keep", stream.name))

    def logged(self, kernel, kind):
        def launch(*args, **kwargs):
            self.log.append(("launch", self.now.name, kind))
            self.launches[self.now.name, kind] += 1
            return kernel(*args, **kwargs)
        return launch
