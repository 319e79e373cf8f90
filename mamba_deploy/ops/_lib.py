"""Loader of the native kernel library (libmamba_deploy_kernels.so, built from plugins/ by CMake).

The library is looked up (once, lazily) at $MAMBA_DEPLOY_KERNEL_LIB, then in mamba_deploy/_lib/
(where `pip install .` puts it). It is the one way into the library: the ctypes structures below
mirror plugins/kernels/mamba_kernels.h, gemv.h and sampling.h field for field (every field 8 bytes wide), `load()`
checks the ABI version and their sizes against md_params_size(), and SIGNATURES types every entry
point of plugins/capi/mamba_capi.cpp.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
import sysconfig
import threading
from typing import Optional

LIB_NAME = "libmamba_deploy_kernels.so"
ENV_VAR = "MAMBA_DEPLOY_KERNEL_LIB"
EXPECTED_VERSION = 18  # MD_KERNELS_VERSION

_I, _P, _D = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double


def _fields(spec: str) -> list[tuple[str, type]]:
    """'i:a b c; p:x; d:eps' -> [(a, int64), (b, int64), (c, int64), (x, void*), (eps, double)]."""
    types = {"i": _I, "p": _P, "d": _D}
    out = []
    for part in spec.split(";"):
        kind, names = part.strip().split(":")
        out += [(n, types[kind]) for n in names.split()]
    return out


class CausalConv1dParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch dim seqlen width silu x_dtype weight_dtype state_dtype; p: x;"
        "i: x_batch_stride x_dim_stride x_seq_stride; p: weight; i: weight_dim_stride weight_width_stride;"
        "p: bias; i: bias_stride; p: state_in;"
        "i: state_in_batch_stride state_in_dim_stride state_in_width_stride; p: state_out;"
        "i: state_out_batch_stride state_out_dim_stride state_out_width_stride; p: y;"
        "i: y_batch_stride y_dim_stride y_seq_stride; p: state_rows")


class SsmParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch seqlen nheads headdim dstate ngroups x_dtype param_dtype state_dtype dt_softplus;"
        "d: dt_min dt_max; p: x; i: x_batch_stride x_seq_stride x_head_stride x_dim_stride; p: dt;"
        "i: dt_batch_stride dt_seq_stride dt_head_stride dt_dim_stride; p: A; i: A_head_stride A_state_stride;"
        "p: B; i: B_batch_stride B_seq_stride B_group_stride B_state_stride;"
        "p: C; i: C_batch_stride C_seq_stride C_group_stride C_state_stride; p: D; i: D_head_stride;"
        "p: z; i: z_batch_stride z_seq_stride z_head_stride z_dim_stride; p: dt_bias; i: dt_bias_head_stride;"
        "p: state_in; i: state_in_batch_stride state_in_head_stride state_in_dim_stride state_in_state_stride;"
        "p: state_out;"
        "i: state_out_batch_stride state_out_head_stride state_out_dim_stride state_out_state_stride;"
        "p: y; i: y_batch_stride y_seq_stride y_head_stride y_dim_stride; p: state_rows;"
        "p: norm_weight norm_sumsq; i: norm_sumsq_batch_stride norm_sumsq_seq_stride")


class AddNormParams(ctypes.Structure):
    _fields_ = _fields(
        "i: rows hidden is_rms; d: eps; i: x_dtype residual_dtype residual_out_dtype out_dtype weight_dtype;"
        "p: x; i: x_row_stride; p: residual; i: residual_row_stride; p: weight bias out; i: out_row_stride;"
        "p: residual_out; i: residual_out_row_stride")


class GatedRmsNormParams(ctypes.Structure):
    _fields_ = _fields(
        "i: rows hidden group_size; d: eps; i: x_dtype out_dtype weight_dtype; p: x; i: x_row_stride;"
        "p: z; i: z_row_stride; p: weight out; i: out_row_stride")


# The native engine's decode kernels (plugins/kernels/gemv.h).
class GemvParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch n k dtype split_k; p: x; i: x_row_stride; p: w; i: w_row_stride; p: bias out; i: out_row_stride;"
        "i: conv_lo conv_dim conv_width conv_silu conv_state_dtype; p: conv_w conv_b conv_state;"
        "i: conv_state_batch_stride conv_state_dim_stride conv_state_width_stride; p: state_rows; i: algo;"
        "p: norm_w norm_residual norm_residual_out norm_gate;"
        "i: norm_residual_dtype norm_residual_row_stride norm_residual_out_row_stride norm_gate_row_stride; d: norm_eps")


class Mamba1StepParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch dim dstate dt_rank dtype state_dtype; p: x; i: x_row_stride; p: z; i: z_row_stride;"
        "p: xdbl; i: xdbl_row_stride; p: wdt dt_bias A D state; i: state_batch_stride state_dim_stride;"
        "p: y; i: y_row_stride; p: state_rows dt; i: dt_row_stride dt_tc")


class Mamba2StepParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch nheads headdim dstate ngroups dtype state_dtype; d: dt_min dt_max; p: x; i: x_row_stride;"
        "p: B; i: B_row_stride; p: C; i: C_row_stride; p: dt; i: dt_row_stride; p: A D dt_bias state;"
        "i: state_batch_stride state_head_stride state_dim_stride; p: y; i: y_row_stride; p: state_rows z;"
        "i: z_row_stride; p: norm_weight norm_sumsq; i: norm_sumsq_row_stride")


class RowNormParams(ctypes.Structure):
    _fields_ = _fields(
        "i: rows hidden group_size gate; d: eps; i: dtype residual_dtype; p: x; i: x_row_stride;"
        "p: residual; i: residual_row_stride; p: weight out; i: out_row_stride;"
        "p: residual_out; i: residual_out_row_stride; p: x_sumsq;"
        "i: x_sumsq_row_stride x_sumsq_count x_sumsq_dim; d: x_sumsq_eps; i: x_parts x_part_stride")


class AttentionDecodeParams(ctypes.Structure):
    _fields_ = _fields(
        "i: batch heads heads_kv head_dim max_seq_len rotary_dim dtype; d: scale; p: q; i: q_row_stride;"
        "p: k; i: k_row_stride; p: v; i: v_row_stride; p: inv_freq key value;"
        "i: cache_slot_stride cache_head_stride cache_pos_stride; p: length out; i: out_row_stride; p: state_rows")


# md_mamba1_layer: one row of the persistent decode's layer table (native/persistent.py builds it on the device).
MAMBA1_LAYER_FIELDS = ("norm_w in_w in_b conv_w conv_b conv_state x_w wdt dt_bias A D ssm_state out_w "
                       "out_b").split()


class Mamba1Layer(ctypes.Structure):
    _fields_ = _fields("p: " + " ".join(MAMBA1_LAYER_FIELDS))


# md_mamba2_layer: the same for Mamba2.
MAMBA2_LAYER_FIELDS = "norm_w in_w in_b conv_w conv_b conv_state dt_bias A D ssm_state gnorm_w out_w out_b".split()


class Mamba2Layer(ctypes.Structure):
    _fields_ = _fields("p: " + " ".join(MAMBA2_LAYER_FIELDS))


class Mamba2DecodeParams(ctypes.Structure):
    _fields_ = _fields(
        "i: n_layer d_model d_inner nheads headdim dstate ngroups norm_group conv_width dtype state_dtype "
        "conv_state_dtype; d: norm_eps dt_min dt_max; p: layers; i: conv_state_slot_stride ssm_state_slot_stride;"
        "p: state_rows hidden residual xz y sync trace")


class Mamba1DecodeParams(ctypes.Structure):
    _fields_ = _fields(
        "i: n_layer d_model d_inner dt_rank dstate conv_width dtype state_dtype conv_state_dtype; d: norm_eps;"
        "p: layers; i: conv_state_slot_stride ssm_state_slot_stride; p: state_rows hidden residual xz xdbl y sync trace")


# The sampler's kernels (plugins/kernels/sampling.h).
class PhiloxParams(ctypes.Structure):
    _fields_ = _fields("i: n; p: seeds steps rows out")


class SampleParams(ctypes.Structure):
    _fields_ = _fields("i: rows vocab vocab_limit weight_bits logits_dtype; p: logits; i: logits_row_stride;"
                       "p: slots temperature top_k top_p min_p repetition_penalty seed step seen; i: seen_row_stride;"
                       "p: last_token scratch; i: scratch_row_stride; p: out")


# name -> (kind of md_params_size, structure)
PARAMS = {"causal_conv1d": (0, CausalConv1dParams), "ssm": (1, SsmParams),
          "add_norm": (2, AddNormParams), "gated_rms_norm": (3, GatedRmsNormParams),
          "gemv": (4, GemvParams), "mamba1_step": (5, Mamba1StepParams),
          "mamba2_step": (6, Mamba2StepParams), "row_norm": (7, RowNormParams), "philox": (8, PhiloxParams),
          "attention_decode": (9, AttentionDecodeParams), "sample": (10, SampleParams),
          "mamba1_decode": (11, Mamba1DecodeParams), "mamba2_decode": (13, Mamba2DecodeParams)}
# name -> (kind of md_params_size, structure) of the records a params struct points to (C: md_<name>)
RECORDS = {"mamba1_layer": (12, Mamba1Layer), "mamba2_layer": (14, Mamba2Layer)}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One C entry point: `int symbol(const params*, [void* workspace, int64 bytes,] void* stream)`.
    `workspace`: it takes caller-allocated scratch (the prefill scans' time-parallel form)."""

    symbol: str
    params: type
    workspace: bool = False

    def signature(self) -> tuple[type, list[type]]:
        return ctypes.c_int, [ctypes.POINTER(self.params), *([_P, _I] if self.workspace else []), _P]


# Entry points that are not ops of the registry; the registry declares each op's kernel (`declare`).
ADD_NORM = Kernel("md_add_norm_fwd", AddNormParams)
GATED_RMS_NORM = Kernel("md_gated_rms_norm_fwd", GatedRmsNormParams)
GEMV = Kernel("md_gemv_fwd", GemvParams)  # the native engine's decode launches (native/gemv.py)
MAMBA1_STEP = Kernel("md_mamba1_step_fwd", Mamba1StepParams)
MAMBA2_STEP = Kernel("md_mamba2_step_fwd", Mamba2StepParams)
ROW_NORM = Kernel("md_row_norm_fwd", RowNormParams)
ATTENTION_DECODE = Kernel("md_attention_decode_fwd", AttentionDecodeParams)
MAMBA1_DECODE = Kernel("md_mamba1_decode_fwd", Mamba1DecodeParams)  # native/persistent.py
MAMBA2_DECODE = Kernel("md_mamba2_decode_fwd", Mamba2DecodeParams)
PHILOX_UNIFORM = Kernel("md_philox_uniform_fwd", PhiloxParams)  # the sampler's uniforms (runtime/sampler.py)
SAMPLE = Kernel("md_sample_fwd", SampleParams)  # the whole sampler on the GPU (runtime/sampler.py)
KERNELS: dict[str, Kernel] = {k.symbol: k for k in (ADD_NORM, GATED_RMS_NORM, GEMV, MAMBA1_STEP, MAMBA2_STEP, ROW_NORM,
                                                    ATTENTION_DECODE, MAMBA1_DECODE, MAMBA2_DECODE, PHILOX_UNIFORM,
                                                    SAMPLE)}
_OP_KERNELS: dict[str, Kernel] = {}

# Every entry point of the C ABI: name -> (restype, argtypes); kernels are added as they are declared.
SIGNATURES: dict[str, tuple[type, list[type]]] = {
    "md_version": (ctypes.c_int, []), "md_get_last_error_string": (ctypes.c_char_p, []),
    "md_params_size": (_I, [_I]), "md_ssm_scan_workspace_bytes": (_I, [ctypes.POINTER(SsmParams)]),
    "md_selective_scan_split_lanes": (ctypes.c_int, [ctypes.POINTER(SsmParams)]),
    "md_set_programmatic_launch": (ctypes.c_int, [_I]),
    **{k.symbol: k.signature() for k in KERNELS.values()}}
# ... and those of diagnostic builds alone (CMake MAMBA_DEPLOY_KERNEL_TRACE: benchmarks/gemv_timeline.py), bound
# where the library has them
DIAGNOSTIC_SIGNATURES: dict[str, tuple[type, list[type]]] = {
    "md_tc_trace_read": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)])}


def declare(kernel: Kernel, op: str) -> None:
    """Make `kernel` the entry point of registry op `op` (ops.registry calls this for each entry, on import,
    before anything can launch)."""
    KERNELS[kernel.symbol] = _OP_KERNELS[op] = kernel
    SIGNATURES[kernel.symbol] = kernel.signature()


def op_kernel(op: str) -> Kernel:
    """The kernel the registry entry of `op` names."""
    return _OP_KERNELS[op]

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_reason: Optional[str] = None
_tried = False


def library_path() -> Optional[pathlib.Path]:
    """Where the library would be loaded from (None if nowhere): $MAMBA_DEPLOY_KERNEL_LIB, else the package's
    _lib/ folder (a wheel install), else site-packages' mamba_deploy/_lib/ (an editable install)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return pathlib.Path(env)
    package = pathlib.Path(__file__).resolve().parent.parent
    for root in (package, *(pathlib.Path(p) / "mamba_deploy" for p in sysconfig.get_paths().values())):
        candidate = root / "_lib" / LIB_NAME
        if candidate.is_file():
            return candidate
    return None


def _open() -> ctypes.CDLL:
    path = library_path()
    if path is None:
        raise OSError(f"{LIB_NAME} not found: the package was installed without its CUDA kernels "
                      f"(no nvcc at build time, or MAMBA_DEPLOY_BUILD_KERNELS=0); reinstall with nvcc on "
                      f"PATH, or point {ENV_VAR} at a built library")
    lib = ctypes.CDLL(str(path))
    lib.md_version.restype, lib.md_version.argtypes = SIGNATURES["md_version"]
    if lib.md_version() != EXPECTED_VERSION:  # before the other symbols: an old library may lack some
        raise OSError(f"{path}: kernel ABI version {lib.md_version()}, expected {EXPECTED_VERSION}: "
                      f"library and package do not match (rebuild the library)")
    for sym, (restype, argtypes) in {**SIGNATURES, **DIAGNOSTIC_SIGNATURES}.items():
        if sym in DIAGNOSTIC_SIGNATURES and not hasattr(lib, sym):
            continue  # a normal build: the diagnostic entry points are absent
        fn = getattr(lib, sym)
        fn.restype, fn.argtypes = restype, argtypes
    for name, (kind, struct) in {**PARAMS, **RECORDS}.items():
        if lib.md_params_size(kind) != ctypes.sizeof(struct):
            raise OSError(f"{path}: {name} params are {lib.md_params_size(kind)} bytes in C, "
                          f"{ctypes.sizeof(struct)} in Python: library and package do not match")
    return lib


def load() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError with the reason if it cannot be loaded."""
    global _lib, _reason, _tried
    if _lib is not None:  # every launch comes here: no lock once loaded
        return _lib
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _open()
            except (OSError, AttributeError) as e:
                _reason = str(e)
    if _lib is None:
        raise RuntimeError(f"mamba-deploy CUDA kernels unavailable: {_reason}")
    return _lib


def is_available() -> bool:
    try:
        load()
    except RuntimeError:
        return False
    return True


def unavailable_reason() -> Optional[str]:
    """None when the library loads, else why not."""
    return None if is_available() else _reason


def scan_workspace_bytes(params: ctypes.Structure) -> int:
    """Scratch bytes a prefill scan with these params wants (0: none)."""
    return int(load().md_ssm_scan_workspace_bytes(ctypes.byref(params)))


def scan_split_lanes(params: ctypes.Structure) -> int:
    """Threads a channel of the Mamba1 scan that splits states over lanes, for these params (0: another kernel)."""
    return int(load().md_selective_scan_split_lanes(ctypes.byref(params)))


def set_programmatic_launch(enable: bool) -> bool:
    """Programmatic dependent launch of the decode kernels, process-wide (each may start while the previous kernel
    on its stream finishes; compute capability 9.0+, same results); returns the previous setting."""
    return bool(load().md_set_programmatic_launch(1 if enable else 0))


def launch(kernel: Kernel, params: ctypes.Structure, stream: int, workspace: tuple[int, int] | None = None) -> None:
    """Launch `kernel` on `stream` (a cudaStream_t as int); raises RuntimeError if it fails.
    `workspace` = (device pointer, bytes) for kernels that take scratch."""
    lib = load()
    if not isinstance(params, kernel.params):
        raise TypeError(f"{kernel.symbol} takes {kernel.params.__name__}, got {type(params).__name__}")
    scratch = workspace or (0, 0)
    extra = (ctypes.c_void_p(scratch[0]), ctypes.c_int64(scratch[1])) if kernel.workspace else ()
    rc = getattr(lib, kernel.symbol)(ctypes.byref(params), *extra, ctypes.c_void_p(stream))
    if rc != 0:
        msg = lib.md_get_last_error_string().decode(errors="replace")
        raise RuntimeError(f"{kernel.symbol} failed (cudaError {rc}): {msg}")
