"""`inspect`: what an export folder holds — model, dtypes, ops, graph I/O, sizes — after checking that
it is whole (the load-time checks of every backend, plus weights.data's recorded size and sha256)."""
from __future__ import annotations

from pathlib import Path

import onnx

from .checkpoint import resolve_inside
from .errors import MambaDeployError
from .export.artifact import ExportInfo, check_export, load_export
from .export.weights import WEIGHTS_FILE
from .ops import DOMAIN
from .tensorrt.metadata import file_sha256  # plain hashlib; no TensorRT import


def _value_info(v) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}


def _graph_summary(info: ExportInfo, kind: str) -> dict:
    path, model = info.graph(kind), info.load_graph(kind)
    custom = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    return {"file": path.name, "bytes": path.stat().st_size, "nodes": len(model.graph.node), "custom_ops": custom,
            "functions": [f.name for f in model.functions],
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": [_value_info(v) for v in model.graph.input], "outputs": [_value_info(v) for v in model.graph.output]}


def check_weights_file(info: ExportInfo) -> tuple[int, str]:
    """weights.data's size and sha256 status ("ok", or "not recorded" for exports older than the record);
    MambaDeployError when they differ from what the exporter recorded."""
    weights = resolve_inside(info.folder, WEIGHTS_FILE, "weights file")
    if not weights.is_file():
        raise MambaDeployError(f"{info.folder}: {WEIGHTS_FILE} is missing (the export is incomplete)")
    size, recorded = weights.stat().st_size, info.meta.get("weights_bytes")
    if recorded is not None and size != recorded:
        raise MambaDeployError(f"{weights}: {size} bytes, the export recorded {recorded}: the file is truncated "
                               f"or was replaced; re-export the model")
    if "weights_sha256" not in info.meta:
        return size, "not recorded"
    if file_sha256(weights) != info.meta["weights_sha256"]:
        raise MambaDeployError(f"{weights}: sha256 differs from the one recorded at export: the weights are "
                               f"corrupt or were replaced; re-export the model")
    return size, "ok"


def inspect_export(path: str | Path) -> dict:
    """The report `format_inspect` prints; MambaDeployError for any broken part of the export."""
    info = check_export(load_export(path))
    size, sha256 = check_weights_file(info)
    return {"folder": str(info.folder), "model": info.config.to_dict(), "export": info.meta,
            "weights_bytes": size, "weights_sha256": sha256,
            "graphs": {kind: _graph_summary(info, kind) for kind in ("prefill", "decode")}}


def _io_lines(values: list[dict], limit: int = 4) -> list[str]:
    """The first entries, then '…' for the per-layer states."""
    shown = [f"      {v['name']}: {v['dtype']} {v['shape']}" for v in values[: limit + 1]]
    if len(values) > limit + 1:
        shown.append(f"      … ({len(values) - limit - 1} more: conv + ssm per Mamba layer, key + value per "
                     "attention layer, length)" if any(v["name"].endswith("length") for v in values) else
                     f"      … ({len(values) - limit - 1} more, one conv and one ssm state per layer)")
    return shown


def _family(model: dict) -> str:
    """What sets a model apart from its architecture's plain form (Falcon-Mamba's norms), for the model line."""
    eps, attn, mlp = model.get("mixer_rms_eps"), model.get("attn_layer_idx"), model.get("mlp_layer_idx")
    if attn or mlp:
        return f" hybrid (attention layers {list(attn or [])}, MLP layers {list(mlp or [])})"
    return "" if eps is None else f" (Falcon-Mamba: dt/B/C RMS norms, eps {eps:g})"


def format_inspect(report: dict) -> str:
    m, e = report["model"], report["export"]
    lines = [f"{report['folder']}",
             f"  model: {m['arch']}{_family(m)}  d_model {m['d_model']}  layers {m['n_layer']}  d_state {m['d_state']}  "
             f"vocab {m['vocab_size']} (padded {m['vocab_size_padded']})",
             f"  export: format {e['format_version']}, dtype {e['dtype']}, state {e['state_dtype']}, ops {e['ops']}, "
             f"opset {e['opset']}, logits {e['logits']}"
             f"{', quantize ' + e['quantize'] if e.get('quantize') else ''}, source {e.get('source')}",
             f"  tokenizer: {', '.join(e['tokenizer']) if e.get('tokenizer') else 'none'}",
             f"  weights.data: {report['weights_bytes'] / 2**20:.1f} MiB, sha256 {report['weights_sha256']}"]
    for kind, g in report["graphs"].items():
        lines.append(f"  {g['file']}: {g['nodes']} nodes, {g['bytes'] / 1024:.0f} KiB, custom ops "
                     f"{', '.join(g['custom_ops']) or 'none'}")
        lines += ["    inputs:", *_io_lines(g["inputs"]), "    outputs:", *_io_lines(g["outputs"])]
    return "\n".join(lines)
