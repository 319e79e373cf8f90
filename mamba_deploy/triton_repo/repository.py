"""`write_triton_repository`: an export folder -> a Triton Inference Server model repository.

    REPO/
      mamba-deploy-triton.json   what wrote it (only such a folder is replaced, and only with force)
      NAME/config.pbtxt          sequence batcher + implicit state (model_config.py)
      NAME/1/model.onnx          onnxruntime: the rewritten prefill graph (model.py) ...
      NAME/1/weights.data        ... and its weights: a hard link to the export's, else a copy
      NAME/1/model.plan          tensorrt: the prefill plan of engines/<target>/ (link or copy)

Written like an export (export/target.py): into a temp folder beside REPO under a lock, renamed at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from ..errors import MambaDeployError, ParameterError
from ..export.artifact import ExportInfo, check_export, load_export
from ..export.target import ExportTarget, OutputKind, absolute_output, check_output
from ..version import __version__
from .files import link_or_copy
from .model import place_external_data, triton_graph
from .model_config import model_config, to_pbtxt
from .names import StateEntry, check_state_order, graph_states, renamed_states
from .options import DEFAULT_MAX_BATCH, TritonOptions
from .plans import PlanChoice, select_prefill_plan

MARKER = "mamba-deploy-triton.json"
MARKER_FORMAT = 1
MODEL_VERSION = "1"


def is_triton_repository(path: Path) -> bool:
    """A folder this command wrote: it holds our marker file."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "mamba-deploy"


REPOSITORY = OutputKind("Triton model repository", "'mamba-deploy triton'", is_triton_repository,
                        f"no {MARKER} in it", "the export folder")


@dataclasses.dataclass(frozen=True)
class TritonRepository:
    """What was written: the repository (as given), the model's name, backend and batch size, how the large
    file got there ("linked" | "copied") and, for tensorrt, which engines/<name> build."""

    folder: Path
    model: str
    backend: str
    max_batch: int
    large_file: str
    engines: Optional[str] = None


def write_triton_repository(export_dir: str | os.PathLike, repository: str | os.PathLike,
                            options: TritonOptions = TritonOptions(), progress: bool = True) -> TritonRepository:
    """Write the model repository for `export_dir` to `repository`; MambaDeployError on bad input."""
    options.validate()
    given = Path(repository).expanduser()
    output = absolute_output(given)
    info = check_export(load_export(export_dir))
    if info.config.other_layers:
        raise MambaDeployError(f"{info.config.other_layers} are not supported by the Triton repository yet (its "
                               "sequence batcher holds every layer's SSM states); serve this export with "
                               "'mamba-deploy serve'")
    check_output(output, options.force, [info.folder], REPOSITORY)  # fail fast
    name = options.name or _default_name(info.folder)
    plan = select_prefill_plan(info, options.engines) if options.backend == "tensorrt" else None
    if plan is None and "bfloat16" in (info.meta["dtype"], info.meta["state_dtype"]):
        raise MambaDeployError(f"{info.folder} is a bfloat16 export; ONNX Runtime has no bfloat16 kernels for its "
                               f"graphs: export with --dtype float16 or float32, or use --backend tensorrt")
    max_batch = _max_batch(options, plan)
    states = renamed_states(info.config.n_layer) if plan is None else graph_states(info.config.n_layer)
    check_state_order(states)
    config = model_config(info, name, options.backend, max_batch, options.instances, options.instance_kind,
                          max(1, round(options.idle_timeout * 1e6)), states, controls=plan is None)
    with ExportTarget(output, options.force, [info.folder], REPOSITORY) as target:
        assert target.tmp is not None
        version = target.tmp / name / MODEL_VERSION
        version.mkdir(parents=True)
        if plan is None:
            large_file = _write_onnx_model(info, states, version, progress, options.copy)
        else:
            large_file = link_or_copy(plan.plan, version / "model.plan", progress, options.copy)
        (target.tmp / name / "config.pbtxt").write_text(to_pbtxt(config))
        marker = _marker(info, name, options.backend, max_batch, large_file, plan)
        (target.tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        target.commit()
    return TritonRepository(given, name, options.backend, max_batch, large_file, plan and plan.name)


def _default_name(folder: Path) -> str:
    """The export folder's name as a Triton model name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name).lstrip(".-")
    return name or "mamba"


def _max_batch(options: TritonOptions, plan: Optional[PlanChoice]) -> int:
    if plan is None:
        return options.max_batch or DEFAULT_MAX_BATCH
    limit = int(plan.record.limits["max_batch"])
    if options.max_batch is not None and options.max_batch > limit:
        raise ParameterError("max_batch", f"{options.max_batch} is above the {limit} the engines in "
                                          f"engines/{plan.name} were built for (rebuild with a larger --max-batch)")
    return options.max_batch or limit


def _write_onnx_model(info: ExportInfo, states: list[StateEntry], version: Path, progress: bool, copy: bool) -> str:
    """version/model.onnx (the prefill graph under Triton's names) and its weights beside it."""
    model = triton_graph(info.load_graph("prefill"), states)
    how = place_external_data(info, model, version, progress, copy)
    # No onnx.checker here: it refuses external data with more than one hard link. check_export has checked the
    # graph's I/O, which is all the rewrite relies on; the tests run the result in ONNX Runtime.
    (version / "model.onnx").write_bytes(model.SerializeToString())
    return how


def _marker(info: ExportInfo, name: str, backend: str, max_batch: int, large_file: str,
            plan: Optional[PlanChoice]) -> dict[str, Any]:
    served = f"engines/{plan.name}/{plan.plan.name}" if plan else "prefill.onnx"
    return {"tool": "mamba-deploy", "tool_version": __version__, "format": MARKER_FORMAT, "model": name,
            "backend": backend, "export": str(info.folder.resolve()), "serves": served,
            "max_batch_size": max_batch, "large_file": large_file}
