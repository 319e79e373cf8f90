"""The one C ABI (plugins/capi/mamba_capi.cpp) against its one ctypes loader (mamba_deploy/ops/_lib.py),
read from the sources (no GPU, no built library): the same entry points both ways with the same arity and
return type, the same params structs field for field, the same ABI version; every md_* symbol the package
names is bound; the kernels export nothing themselves."""
import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mamba_deploy.ops import _lib

ROOT = Path(__file__).resolve().parents[2]
CAPI = ROOT / "plugins" / "capi" / "mamba_capi.cpp"
KERNELS = ROOT / "plugins" / "kernels"
C_RETURN_TYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "const char*": ctypes.c_char_p}


def c_entry_points(source: str) -> dict[str, tuple[str, int]]:
    """The MD_API functions of a C++ source: name -> (return type, number of parameters)."""
    found = {}
    for ret, name, args in re.findall(r"^MD_API\s+([\w\s*]+?)\s*\b(md_\w+)\s*\(([^)]*)\)", source, re.M):
        args = " ".join(args.split())
        found[name] = (re.sub(r"\s*\*", "*", ret.strip()), 0 if args in ("", "void") else args.count(",") + 1)
    return found


def c_struct_fields(header: str, name: str) -> list[tuple[str, type]]:
    """The fields of `typedef struct NAME {...} NAME;` as (field, ctypes type of its 8-byte slot)."""
    body = re.search(rf"typedef struct {name} \{{(.*?)\}} {name};", header, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        ctype, names = re.fullmatch(r"((?:const\s+)?\w+\s*\**)\s*(.+)", decl, re.S).groups()
        slot = ctypes.c_void_p if "*" in ctype else ctypes.c_double if ctype.strip() == "double" else ctypes.c_int64
        fields += [(n.strip(), slot) for n in names.split(",")]
    return fields


def test_every_c_entry_point_is_bound_with_its_signature_and_back():
    c_side = c_entry_points(CAPI.read_text())
    bound = {**_lib.SIGNATURES, **_lib.DIAGNOSTIC_SIGNATURES}  # the latter exported by diagnostic builds alone
    assert len(c_side) >= 15, "the MD_API parser found too few entry points"
    assert sorted(set(c_side) - set(bound)) == [], "exported by the C ABI but not bound by _lib"
    assert sorted(set(bound) - set(c_side)) == [], "bound by _lib but not exported by the C ABI"
    for name, (ret, nargs) in c_side.items():
        restype, argtypes = bound[name]
        assert C_RETURN_TYPES[ret] is restype, name
        assert len(argtypes) == nargs, name


def test_the_package_names_only_bound_symbols():
    named = {m for path in (ROOT / "mamba_deploy").rglob("*.py")
             for m in re.findall(r"[\"'](md_\w+)[\"']", path.read_text())}
    assert {"md_gemv_fwd", "md_causal_conv1d_fwd"} <= named
    assert sorted(named - set(_lib.SIGNATURES) - set(_lib.DIAGNOSTIC_SIGNATURES)) == []


def test_params_kinds_and_layouts_match_the_c_structs():
    kinds = dict(re.findall(r"case (\d+): return sizeof\((md_\w+)\);", CAPI.read_text()))
    c_names = {**{name: f"md_{name}_params" for name in _lib.PARAMS}, **{name: f"md_{name}" for name in _lib.RECORDS}}
    structs = {**_lib.PARAMS, **_lib.RECORDS}
    assert {int(k): v for k, v in kinds.items()} == {kind: c_names[name] for name, (kind, _) in structs.items()}
    headers = "".join((KERNELS / h).read_text() for h in ("mamba_kernels.h", "gemv.h", "sampling.h"))
    for name, (_, struct) in structs.items():
        assert [(f, t) for f, t in struct._fields_] == c_struct_fields(headers, c_names[name]), name


def test_abi_version_is_the_kernels_version():
    version = re.search(r"#define MD_KERNELS_VERSION (\d+)", (KERNELS / "mamba_kernels.h").read_text()).group(1)
    assert int(version) == _lib.EXPECTED_VERSION
    assert "md_version(void) { return MD_KERNELS_VERSION; }" in CAPI.read_text()


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.cu*")) + sorted(KERNELS.glob("*.h")), ids=lambda p: p.name)
def test_kernels_export_no_c_abi(path):
    """plugins/kernels/ holds framework-free launchers only; plugins/capi/ is the one place that exports."""
    source = path.read_text()
    assert "MD_API" not in source
    assert not re.search(r"visibility\s*\(\s*\"default\"", source)


# ---- a built library (MAMBA_DEPLOY_KERNEL_LIB or mamba_deploy/_lib/): loads and checks without a GPU ----

def _no_library_expected() -> bool:
    """Only where no library can have been built (no nvcc, or MAMBA_DEPLOY_BUILD_KERNELS=0); CI builds it, so a
    missing library there fails these tests instead of skipping them."""
    if _lib.library_path() is not None:
        return False
    if shutil.which("nvcc") and os.environ.get("MAMBA_DEPLOY_BUILD_KERNELS", "1").lower() not in ("0", "off"):
        pytest.fail("nvcc is present but no kernel library was found: the install did not build it")
    return True


needs_built_library = pytest.mark.skipif("_no_library_expected()", reason="no kernel library can be built here")


@needs_built_library
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_built_library_exports_exactly_the_bound_symbols():
    table = subprocess.run(["nm", "-D", "--defined-only", str(_lib.library_path())], capture_output=True,
                           text=True, check=True).stdout
    exported = {line.split()[-1] for line in table.splitlines() if line.split()[-1].startswith("md_")}
    assert exported - set(_lib.DIAGNOSTIC_SIGNATURES) == set(_lib.SIGNATURES)


# Shapes the persistent decode takes, with (unread) 16-byte aligned pointers: one field changed is the error.
_DECODE_SHAPES = dict(n_layer=2, d_model=256, d_inner=512, dt_rank=16, dstate=16, conv_width=4, dtype=1, state_dtype=0,
                      conv_state_dtype=1, layers=16, hidden=16, residual=16, xz=16, xdbl=16, y=16, sync=16)


def _decode_params(**changes) -> _lib.Mamba1DecodeParams:
    return _lib.Mamba1DecodeParams(**{**_DECODE_SHAPES, **changes})


def _mamba2_decode_params(**changes) -> _lib.Mamba2DecodeParams:
    shapes = {k: v for k, v in _DECODE_SHAPES.items() if k not in ("dt_rank", "xdbl")}
    shapes.update(dstate=64, nheads=8, headdim=64, ngroups=1, norm_group=512)
    return _lib.Mamba2DecodeParams(**{**shapes, **changes})


def _row_norm_params(**changes) -> _lib.RowNormParams:
    """Two fp16 rows of 256 with a float32 residual, (unread) 16-byte aligned: one field changed is the error."""
    shapes = dict(rows=2, hidden=256, group_size=256, dtype=1, residual_dtype=0, x=16, x_row_stride=256, residual=16,
                  residual_row_stride=256, weight=16, out=16, out_row_stride=256, residual_out=16,
                  residual_out_row_stride=256)
    return _lib.RowNormParams(**{**shapes, **changes})


_MISALIGNED_ROWS = "md_row_norm_fwd: row_norm: pointers and row strides must be whole 16-byte vectors"


@needs_built_library
@pytest.mark.parametrize("symbol,params,why", [
    ("md_gemv_fwd", _lib.GemvParams(batch=65), "md_gemv_fwd: gemv: batch must be in 0..64"),
    ("md_gemv_fwd", _lib.GemvParams(batch=1, algo=6), "md_gemv_fwd: gemv: algo must be 0..5"),
    ("md_mamba1_step_fwd", _lib.Mamba1StepParams(dstate=17), "md_mamba1_step_fwd: mamba1_step: dstate must be"),
    ("md_mamba2_step_fwd", _lib.Mamba2StepParams(dstate=48), "md_mamba2_step_fwd: mamba2_step: dstate must be"),
    ("md_row_norm_fwd", _lib.RowNormParams(hidden=100, group_size=100), "md_row_norm_fwd: row_norm: group_size"),
    ("md_row_norm_fwd", _row_norm_params(out=24), _MISALIGNED_ROWS),
    ("md_row_norm_fwd", _row_norm_params(residual_out_row_stride=258), _MISALIGNED_ROWS),
    ("md_row_norm_fwd", _row_norm_params(x_row_stride=260), _MISALIGNED_ROWS),
    ("md_add_norm_fwd", _lib.AddNormParams(rows=1, hidden=0), "md_add_norm_fwd: add_norm: hidden must be"),
    ("md_philox_uniform_fwd", _lib.PhiloxParams(n=-1), "md_philox_uniform_fwd: philox_uniform: n must be"),
    ("md_philox_uniform_fwd", _lib.PhiloxParams(n=3), "md_philox_uniform_fwd: philox_uniform: missing pointer"),
    ("md_mamba1_decode_fwd", _lib.Mamba1DecodeParams(n_layer=1),
     "md_mamba1_decode_fwd: mamba1_decode: missing pointer"),
    ("md_mamba1_decode_fwd", _decode_params(d_model=100),
     "md_mamba1_decode_fwd: mamba1_decode: d_model must be a multiple of 8"),
    ("md_mamba1_decode_fwd", _decode_params(dstate=17),
     "md_mamba1_decode_fwd: mamba1_decode: dstate must be 1..16"),
    ("md_mamba1_decode_fwd", _decode_params(state_dtype=2),
     "md_mamba1_decode_fwd: mamba1_decode: bad dtype"),
    ("md_mamba1_decode_fwd", _decode_params(n_layer=65537), "md_mamba1_decode_fwd: mamba1_decode: bad n_layer"),
    ("md_mamba2_decode_fwd", _mamba2_decode_params(norm_group=0),
     "md_mamba2_decode_fwd: mamba2_decode: norm_group must be d_inner"),
    ("md_mamba2_decode_fwd", _mamba2_decode_params(nheads=7),
     "md_mamba2_decode_fwd: mamba2_decode: nheads x headdim must be d_inner"),
])
def test_bad_params_are_reported_through_the_one_error_path(symbol, params, why):
    """The launchers check params on the host before any CUDA call: this runs without a GPU (the library
    loads, and its ABI version and struct sizes are checked, with cudart linked statically)."""
    _lib.load()
    with pytest.raises(RuntimeError, match=f"{symbol} failed \\(cudaError 1\\): {re.escape(why)}"):
        _lib.launch(_lib.KERNELS[symbol], params, 0)


@needs_built_library
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the launch would run on stand-in pointers")
@pytest.mark.parametrize("preset,dtype", [("mamba-130m", "float32"), ("mamba-1.4b", "float16"),
                                          ("mamba-2.8b", "bfloat16"), ("mamba2-1.3b", "float16"),
                                          ("mamba2-2.7b", "float16")])
def test_persistent_decode_host_checks_pass_the_published_models(preset, dtype):
    """native.persistent.decode_params of a published model's shapes (state pools of its own shapes, aligned stand-in
    pointers) clears every shape check of md_mamba*_decode_fwd; here, without a GPU, the launch then stops at the
    device check that follows them (a shape refused would name itself instead)."""
    import math

    from mamba_deploy.config import parse_config
    from mamba_deploy.native.persistent import decode_params
    from mamba_deploy.random_init import preset_config

    cfg, t = parse_config(preset_config(preset)), getattr(torch, dtype)
    pointers = {name: 4096 * (i + 1) for i, name in enumerate(("layers", "xz", "y", "hidden", "sync", "xdbl"))}
    params = decode_params(cfg, t, torch.float32, t, math.prod(cfg.ssm_state_shape(1)),
                           math.prod(cfg.conv_state_shape(1)), pointers)
    params.residual = 4096 * 7  # set per launch (PersistentDecode.layers), as state_rows (NULL: slot 0)
    symbol = "md_mamba2_decode_fwd" if cfg.arch == "mamba2" else "md_mamba1_decode_fwd"
    _lib.load()
    with pytest.raises(RuntimeError, match="needs compute capability 9.0\\+ and cooperative launch"):
        _lib.launch(_lib.KERNELS[symbol], params, 0)
