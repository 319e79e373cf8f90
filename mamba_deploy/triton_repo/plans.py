"""Which TensorRT prefill plan the tensorrt Triton model serves (no TensorRT needed: build.json decides)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..checkpoint import resolve_inside
from ..errors import MambaDeployError
from ..export.artifact import ExportInfo
from ..tensorrt.metadata import PLAN_FILES, BuildRecord, export_fingerprint, find_engine_dirs, read_build_record


@dataclasses.dataclass(frozen=True)
class PlanChoice:
    name: str  # the engines/<name> folder
    plan: Path  # its prefill plan, resolved inside the export folder
    record: BuildRecord


def select_prefill_plan(info: ExportInfo, engines: Optional[str]) -> PlanChoice:
    """engines/<engines>/, else the one TensorRT build of the export; MambaDeployError when there is none,
    several (then --engines picks), or it does not match the export as it is now."""
    build = f"'mamba-deploy build {info.folder} --backend tensorrt'"
    if engines is not None:
        folder = resolve_inside(info.folder, Path("engines") / engines, "engines folder")
        if not folder.is_dir():
            raise MambaDeployError(f"{info.folder}: no engines/{engines} folder (build one with {build})")
        choice = _choice(info, folder, read_build_record(folder))
    else:
        builds = [(d, r) for d in find_engine_dirs(info.folder) if (r := _tensorrt_record(info, d)) is not None]
        if not builds:
            raise MambaDeployError(f"{info.folder} has no TensorRT engines: build them with {build}, or write an "
                                   f"onnxruntime model instead (--backend onnxruntime)")
        if len(builds) > 1:
            names = ", ".join(d.name for d, _ in builds)
            raise MambaDeployError(f"{info.folder} has several TensorRT builds ({names}): choose one with "
                                   f"--engines NAME")
        choice = _choice(info, *builds[0])
    _check_matches(info, choice, build)
    return choice


def _tensorrt_record(info: ExportInfo, folder: Path) -> Optional[BuildRecord]:
    """The build record of a TensorRT build inside the export folder; None for a native build or a folder
    whose build.json is not ours to read."""
    try:
        resolve_inside(info.folder, folder.relative_to(info.folder), "engines folder")
        return read_build_record(folder)
    except MambaDeployError:
        return None


def _choice(info: ExportInfo, folder: Path, record: BuildRecord) -> PlanChoice:
    file = record.plans.get("prefill", PLAN_FILES["prefill"])
    plan = resolve_inside(info.folder, Path("engines") / folder.name / file, "plan")
    if not plan.is_file():
        raise MambaDeployError(f"{folder}: {file} is missing; rebuild the engines with --force")
    return PlanChoice(folder.name, plan, record)


def _check_matches(info: ExportInfo, choice: PlanChoice, build: str) -> None:
    record, where = choice.record, f"{info.folder}/engines/{choice.name}"
    if (record.dtype, record.state_dtype) != (info.meta["dtype"], info.meta["state_dtype"]):
        raise MambaDeployError(f"{where}: built for {record.dtype}/{record.state_dtype}, the export is "
                               f"{info.meta['dtype']}/{info.meta['state_dtype']}; rebuild with {build[:-1]} --force'")
    if record.export_sha256 != export_fingerprint(info.folder):
        raise MambaDeployError(f"{where}: built from another version of this export (its graphs or config.json "
                               f"changed since); rebuild with {build[:-1]} --force'")
