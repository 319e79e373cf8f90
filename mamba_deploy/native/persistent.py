"""The persistent batch-1 decode (NativeEngine(persistent_decode=True)): every layer of one token in ONE cooperative
launch of the library's md_mamba1_decode / md_mamba2_decode (plugins/kernels/decode_mamba1.cu, decode_mamba2.cu,
decode_persistent.cuh; gemv.h), a block a multiprocessor, its producer warp streaming the block's weight rows of
layer after layer into shared memory while its consumer warps compute, the blocks meeting at grid barriers (four a
Mamba1 layer, three a Mamba2 layer). It replaces the layer loop of decode.step at batch 1; the embedding before it
and the final norm, LM head and argmax after it are decode.step's.

Each phase's arithmetic is the separate kernels' (row_norm, gemv's staged form at batch 1, mamba1_step /
mamba2_step), so the step equals, bit for bit, decode.step with every mixer projection staged
(NativeEngine(staged_gemv=("in_proj", "x_proj", "out_proj"))) wherever that step runs row_norm (d_model a multiple
of 256) and stages every projection (gemv.staged_ok).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import MAMBA2, ModelConfig
from ..ops import _lib
from ..ops._tensors import DTYPE_CODES, current_stream, data_ptr

SLOT_BYTES = 16 * 1024  # kSlotBytes: a weight row (d_model or d_inner elements) fits one ring slot
MAX_D_MODEL, MAX_K, MAX_CONV_WIDTH = 4096, 8192, 8  # decode_persistent.cuh's limits
MAMBA1_MAX_DSTATE, MAMBA1_MAX_DT_RANK, MAMBA1_MAX_CHANNELS = 16, 1024, 64  # decode_mamba1.cu's (channels a block)
MAMBA2_DSTATES = (32, 64, 128)  # decode_mamba2.cu's


def unsupported(cfg: ModelConfig, dtype: torch.dtype) -> Optional[str]:
    """Why the persistent decode cannot run this model in `dtype` (None: it can, on a 9.0+ GPU with enough
    multiprocessors: PersistentDecode checks those)."""
    size = torch.empty((), dtype=dtype).element_size()
    reasons = [
        (bool(cfg.attn_layer_idx or cfg.mlp_layer_idx), "hybrid models (attention or MLP layers)"),
        (bool(cfg.d_intermediate), "a gated MLP after the mixer"),
        (cfg.mixer_rms_eps is not None, "Falcon-Mamba's norms on dt, B and C"),
        (not cfg.rms_norm, "LayerNorm (RMS norm only)"),
        (not cfg.residual_in_fp32, "a residual in the model dtype (float32 only)"),
        (cfg.d_model % 8 or cfg.d_model > MAX_D_MODEL or cfg.d_model * size > SLOT_BYTES,
         f"d_model {cfg.d_model} (a multiple of 8, at most {MAX_D_MODEL}, rows of at most {SLOT_BYTES} bytes)"),
        (cfg.d_inner % 8 or cfg.d_inner > MAX_K or cfg.d_inner * size > SLOT_BYTES,
         f"d_inner {cfg.d_inner} (a multiple of 8, rows of at most {SLOT_BYTES} bytes)"),
        (not 2 <= cfg.d_conv <= MAX_CONV_WIDTH, f"d_conv {cfg.d_conv} (2..{MAX_CONV_WIDTH})"),
    ]
    if cfg.arch == MAMBA2:
        group = cfg.d_inner // cfg.ngroups  # the gated norm's
        reasons += [
            (bool(cfg.mamba2_mlp_dim), "Mamba2's MLP part inside in_proj (d_ssm < expand d_model)"),
            (cfg.d_state not in MAMBA2_DSTATES, f"d_state {cfg.d_state} (one of {MAMBA2_DSTATES})"),
            (group != cfg.d_inner and (group % 256 or 2048 % group),
             f"gated-norm groups of {group} (d_inner, or 256, 512, 1,024 or 2,048)"),
        ]
    else:
        reasons += [
            (cfg.d_state > MAMBA1_MAX_DSTATE, f"d_state {cfg.d_state} (at most {MAMBA1_MAX_DSTATE})"),
            (cfg.dt_rank > MAMBA1_MAX_DT_RANK, f"dt_rank {cfg.dt_rank} (at most {MAMBA1_MAX_DT_RANK})"),
        ]
    return next((why for bad, why in reasons if bad), None)


def decode_params(c: ModelConfig, dtype: torch.dtype, state_dtype: torch.dtype, conv_state_dtype: torch.dtype,
                  ssm_slot_stride: int, conv_slot_stride: int, pointers: dict):
    """The launch's params (_lib.Mamba1DecodeParams / Mamba2DecodeParams) for model `c`: its shapes and dtypes,
    the state pools' slot strides (elements) and `pointers` (layers, xz, y, hidden, sync; Mamba1's xdbl); residual,
    state_rows and trace are set per launch."""
    common = dict(n_layer=c.n_layer, d_model=c.d_model, d_inner=c.d_inner, dstate=c.d_state, conv_width=c.d_conv,
                  dtype=DTYPE_CODES[dtype], state_dtype=DTYPE_CODES[state_dtype],
                  conv_state_dtype=DTYPE_CODES[conv_state_dtype], norm_eps=float(c.norm_eps),
                  conv_state_slot_stride=conv_slot_stride, ssm_state_slot_stride=ssm_slot_stride,
                  **{k: pointers[k] for k in ("layers", "xz", "y", "hidden", "sync")})
    if c.arch == MAMBA2:
        lo, hi = c.dt_limit
        return _lib.Mamba2DecodeParams(nheads=c.nheads, headdim=c.headdim, ngroups=c.ngroups,
                                       norm_group=c.d_inner // c.ngroups, dt_min=float(lo), dt_max=float(hi), **common)
    return _lib.Mamba1DecodeParams(dt_rank=c.dt_rank, xdbl=pointers["xdbl"], **common)


_LAYER_ATTRS = {"wdt": "dt_packed", "dt_bias": "dt_b"}  # record fields named otherwise in weights.Layer


class PersistentDecode:
    """The layer table (md_mamba1_layer / md_mamba2_layer records in device memory) and barrier words of one engine,
    and the launch. The table holds the engine's weight and state-pool pointers: both live as long as the engine."""

    def __init__(self, eng):
        c = eng.config
        why = unsupported(c, eng.dtype)
        props = torch.cuda.get_device_properties(eng.device)
        if why is None and (props.major, props.minor) < (9, 0):
            why = "GPUs below compute capability 9.0"
        if why is None and c.arch != MAMBA2 and -(-c.d_inner // props.multi_processor_count) > MAMBA1_MAX_CHANNELS:
            why = f"d_inner {c.d_inner} on {props.multi_processor_count} multiprocessors (at most 64 channels each)"
        if why is not None:
            raise ValueError(f"the persistent decode does not support {why}")
        conv, ssm = eng.static.conv, eng.static.ssm
        if not all(pool[0].is_contiguous() for pool in (*conv, *ssm)):
            raise ValueError("the persistent decode needs contiguous state slots")
        records = [[data_ptr(t) or 0 for t in self._record(eng, L)] for L in eng.layers]  # 0: no bias
        if any(p % 16 for r in records for p in r):
            raise ValueError("the persistent decode needs 16-byte aligned weights and states")
        self.table = torch.tensor(records, dtype=torch.int64).to(eng.device)  # (n_layer, fields): the records
        # the barrier count, the launch's failure word, whether any launch failed (gemv.h: md_mamba1_decode_params)
        self.sync = torch.zeros(4, dtype=torch.int32, device=eng.device)
        self.blocks = props.multi_processor_count  # the launcher's grid: a block a multiprocessor
        self.kernel = _lib.MAMBA2_DECODE if c.arch == MAMBA2 else _lib.MAMBA1_DECODE
        self.params = decode_params(c, eng.dtype, ssm[0].dtype, conv[0].dtype, ssm[0].stride(0), conv[0].stride(0),
                                    dict(layers=data_ptr(self.table), xz=data_ptr(eng.xz), y=data_ptr(eng.y),
                                         hidden=data_ptr(eng.hidden), sync=data_ptr(self.sync),
                                         xdbl=data_ptr(eng.xdbl)))
        self._trace: Optional[torch.Tensor] = None

    @staticmethod
    def _record(eng, L) -> list:
        """The tensors of one layer's md_mamba1_layer / md_mamba2_layer record, in its field order (_lib's)."""
        pools = {"conv_state": eng.static.conv[L.index], "ssm_state": eng.static.ssm[L.index]}
        fields = _lib.MAMBA2_LAYER_FIELDS if eng.config.arch == MAMBA2 else _lib.MAMBA1_LAYER_FIELDS
        return [pools[f] if f in pools else getattr(L, _LAYER_ATTRS.get(f, f)) for f in fields]

    def layers(self, eng) -> None:
        """hidden[0] (the token's embedding) -> every layer -> hidden[0], and the residual entering the final norm
        into eng.residual[0]; the state of slot slot_ids[0] in place."""
        p = self.params
        p.residual, p.state_rows = data_ptr(eng.residual), data_ptr(eng.slot_ids)
        _lib.launch(self.kernel, p, current_stream(eng.device))

    def trace(self, enable: bool = True) -> Optional[torch.Tensor]:
        """Measurements: with `enable`, later launches (graphs captured after this call) write %globaltimer stamps
        into the returned (multiprocessors, 8 n_layer + 3) int64 buffer (gemv.h: md_mamba1_decode_params.trace);
        without, they stop (None)."""
        if not enable:
            self._trace, self.params.trace = None, 0
            return None
        self._trace = torch.zeros(self.blocks, 8 * self.params.n_layer + 3, dtype=torch.int64, device=self.table.device)
        self.params.trace = data_ptr(self._trace)
        return self._trace

    def failed(self) -> bool:
        """Whether a grid barrier of any launch so far gave up waiting (its outputs were then garbage). Syncs."""
        return bool(self.sync[2].item())
