"""`inspect`: what an export folder holds — model, dtypes, ops, graph I/O, sizes."""
from __future__ import annotations

from pathlib import Path

import onnx

from .export.artifact import load_export
from .ops import DOMAIN


def _value_info(v) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}


def _graph_summary(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    custom = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    return {"file": path.name, "bytes": path.stat().st_size, "nodes": len(model.graph.node), "custom_ops": custom,
            "functions": [f.name for f in model.functions],
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": [_value_info(v) for v in model.graph.input], "outputs": [_value_info(v) for v in model.graph.output]}


def inspect_export(path: str | Path) -> dict:
    info = load_export(path)
    cfg = info.config
    weights = info.folder / "weights.data"
    return {"folder": str(info.folder), "model": cfg.to_dict(), "export": info.meta,
            "weights_bytes": weights.stat().st_size if weights.is_file() else None,
            "graphs": {kind: _graph_summary(info.graph(kind)) for kind in ("prefill", "decode")}}


def _io_lines(values: list[dict], limit: int = 4) -> list[str]:
    """The first entries, then '…' for the per-layer states."""
    shown = [f"      {v['name']}: {v['dtype']} {v['shape']}" for v in values[: limit + 1]]
    if len(values) > limit + 1:
        shown.append(f"      … ({len(values) - limit - 1} more, one conv and one ssm state per layer)")
    return shown


def format_inspect(report: dict) -> str:
    m, e = report["model"], report["export"]
    size = report["weights_bytes"]
    lines = [f"{report['folder']}",
             f"  model: {m['arch']}  d_model {m['d_model']}  layers {m['n_layer']}  d_state {m['d_state']}  "
             f"vocab {m['vocab_size']} (padded {m['vocab_size_padded']})",
             f"  export: format {e['format_version']}, dtype {e['dtype']}, state {e['state_dtype']}, ops {e['ops']}, "
             f"opset {e['opset']}, logits {e['logits']}, source {e.get('source')}",
             f"  tokenizer: {', '.join(e['tokenizer']) if e.get('tokenizer') else 'none'}",
             f"  weights.data: {size / 2**20:.1f} MiB" if size is not None else "  weights.data: MISSING"]
    for kind, g in report["graphs"].items():
        lines.append(f"  {g['file']}: {g['nodes']} nodes, {g['bytes'] / 1024:.0f} KiB, custom ops "
                     f"{', '.join(g['custom_ops']) or 'none'}")
        lines += ["    inputs:", *_io_lines(g["inputs"]), "    outputs:", *_io_lines(g["outputs"])]
    return "\n".join(lines)
