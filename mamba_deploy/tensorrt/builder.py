"""`mamba-deploy build --backend tensorrt`: TensorRT engines for an export folder.

    build_engines("out/mamba-1.4b", max_batch=8, max_seq=2048)  # -> out/mamba-1.4b/engines/h100-...-float16/

For each of prefill.onnx and decode.onnx: load the plugin library into TensorRT's registry, parse
the graph with the plugins taking the custom nodes (see prepare.py), one optimisation profile over
input_ids and every state input (planning.py), a strongly typed network (the export fixes every
dtype), the plugin library serialized into the plan, then the plans and build.json written
atomically (metadata.py). Everything TensorRT-free lives in those modules and is unit-tested.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..version import __version__ as TOOL_VERSION
from ..errors import MambaDeployError
from ..export.artifact import ExportInfo, check_export, load_export
from ._loader import find_plugin_library, import_tensorrt
from .metadata import (BUILD_FILE, PLAN_FILES, BuildRecord, atomic_write, engine_dir, export_fingerprint,
                       file_sha256, find_engine_dirs, read_build_record)
from .options import BuildOptions
from .planning import binding_map, check_state_shapes, plan_profile, read_graph_io
from .prepare import prepare_model

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._loader import lazy_tensorrt as trt

PLUGIN_NAMES = ("MambaCausalConv1d", "MambaCausalConv1dUpdate", "MambaSelectiveScan", "MambaSelectiveStateUpdate",
                "Mamba2ChunkScan")


def build_engines(export_dir: Union[str, Path], max_batch: int = 8, max_seq: int = 2048, opt_seq: int = 512,
                  workspace: Union[int, str, None] = None, hardware_compatible: bool = False,
                  version_compatible: bool = False, timing_cache: Union[str, Path, None] = None,
                  plugin_lib: Union[str, Path, None] = None, *, options: Optional[BuildOptions] = None,
                  verbose: bool = False) -> Path:
    """Build (or reuse, when build.json matches) the engines; returns their folder.

    `options` overrides the keyword arguments when given. MambaDeployError for anything a user can
    fix (no TensorRT, no GPU, no plugin library, bad limits, a graph TensorRT rejects)."""
    opts = options or BuildOptions(max_batch=max_batch, max_seq=max_seq, opt_seq=opt_seq, workspace=workspace,
                                   hardware_compatible=hardware_compatible, version_compatible=version_compatible,
                                   timing_cache=timing_cache, plugin_lib=plugin_lib)
    opts = dataclasses.replace(opts).validate()
    info = check_export(load_export(export_dir))  # TensorRT's parser would follow any external-data path
    if info.config.other_layers:
        raise MambaDeployError(f"{info.config.other_layers} are not supported by the tensorrt backend yet; use "
                               "onnxruntime or torch")
    plugin = find_plugin_library(opts.plugin_lib)
    import_tensorrt()  # the install / version check, with its message
    gpu, capability = _current_gpu()
    target = engine_dir(info.folder, gpu, info.meta["dtype"], opts.hardware_compatible)
    record = BuildRecord(
        gpu=gpu, compute_capability=capability, tensorrt=str(trt.__version__), dtype=info.meta["dtype"],
        state_dtype=info.meta["state_dtype"], limits=opts.limits(), plugin_sha256=file_sha256(plugin),
        export_sha256=export_fingerprint(info.folder), hardware_compatible=opts.hardware_compatible,
        version_compatible=opts.version_compatible, aliased_state_io=opts.aliased_state_io,
        tool=f"mamba-deploy {TOOL_VERSION}")
    if not opts.force and _is_current(target, record):
        _say(f"engines in {target} are up to date (use --force to rebuild)")
        return target

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    load_plugins(plugin)
    cache = _load_timing_cache(logger, opts.timing_cache)
    for kind in ("prefill", "decode"):
        _say(f"building the {kind} engine for {gpu} (TensorRT {trt.__version__}) ...")
        plan = _build_one(logger, info, kind, opts, plugin, cache)
        atomic_write(target / PLAN_FILES[kind], plan)
    if opts.timing_cache is not None and cache is not None:
        atomic_write(Path(opts.timing_cache), bytes(memoryview(cache.serialize())))
    atomic_write(target / BUILD_FILE, record.to_json())  # last: its presence means the plans are complete
    _say(f"engines written to {target}")
    return target


def load_plugins(plugin: Path) -> None:
    """Register the plugin library's creators (getCreators) with TensorRT's global registry."""
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(plugin))
    missing = [n for n in PLUGIN_NAMES if registry.get_creator(n, "1", "mamba_deploy") is None]
    if missing:
        how = "it did not load" if handle is None else "it lacks them"
        raise MambaDeployError(f"TensorRT has no plugin {', '.join(missing)} after loading {plugin} ({how}); "
                               f"rebuild the plugin library against this TensorRT")


def _build_one(logger: trt.ILogger, info: ExportInfo, kind: str, opts: BuildOptions, plugin: Path,
               cache: Optional[trt.ITimingCache]) -> bytes:
    onnx_path = info.graph(kind)
    io = read_graph_io(onnx_path, kind)
    cfg = info.config
    binding_map([t.name for t in io.inputs], [t.name for t in io.outputs], cfg.n_layer)
    check_state_shapes(io, cfg.conv_state_shape(1), cfg.ssm_state_shape(1))
    model, _ = prepare_model(onnx_path)

    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 11: always strongly typed, flag kept but ignored
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    override = getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)
    if override is not None:
        parser.set_flag(override)
    if not parser.parse(model, str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise MambaDeployError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors[:10]))

    config = builder.create_builder_config()
    if opts.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace))
    if opts.optimization_level is not None:
        config.builder_optimization_level = opts.optimization_level
    if opts.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts.aliased_state_io:
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    config.plugins_to_serialize = [str(plugin)]
    if cache is not None:
        config.set_timing_cache(cache, False)

    profile = builder.create_optimization_profile()
    seq = 1 if kind == "decode" else opts.max_seq
    for name, shapes in plan_profile(io, opts.max_batch, seq, min(opts.opt_seq, seq), opts.opt_batch).items():
        profile.set_shape(name, *(trt.Dims(list(s)) for s in (shapes.min, shapes.opt, shapes.max)))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MambaDeployError(f"TensorRT could not build the {kind} engine (see its log above); try a smaller "
                               f"--max-batch/--max-seq or a larger --workspace")
    return bytes(memoryview(serialized))


def _load_timing_cache(logger: trt.ILogger, path: Optional[Union[str, Path]]) -> Optional[trt.ITimingCache]:
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    config = trt.Builder(logger).create_builder_config()
    return config.create_timing_cache(data)


def _is_current(target: Path, record: BuildRecord) -> bool:
    if not all((target / f).is_file() for f in PLAN_FILES.values()) or not (target / BUILD_FILE).is_file():
        return False
    try:
        old = read_build_record(target)
    except MambaDeployError:
        return False
    return dataclasses.replace(old, tool=record.tool) == record


def _current_gpu() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise MambaDeployError("building TensorRT engines needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def _say(message: str) -> None:
    print(f"[mamba-deploy] {message}", file=sys.stderr)


__all__ = ["BuildOptions", "build_engines", "find_engine_dirs", "load_plugins"]
