"""Reading an export folder (docs/architecture.md "Export artifact"): its config.json with export metadata, and its files."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from ..checkpoint import resolve_inside
from ..config import ModelConfig
from ..errors import ConfigError, MambaDeployError
from ..models.state import io_name, state_layout

if TYPE_CHECKING:
    import onnx

FORMAT_VERSION = 1
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """The export's name of `dtype` ("float16"), the inverse of DTYPES."""
    return next(name for name, d in DTYPES.items() if d == dtype)


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """An export folder: model config + export metadata (`meta`, the "export" object of config.json)."""

    folder: Path
    config: ModelConfig
    meta: dict[str, Any]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]

    @property
    def state_dtype(self) -> torch.dtype:
        return DTYPES[self.meta["state_dtype"]]

    @property
    def all_logits(self) -> bool:
        return self.meta.get("logits") == "all"

    @property
    def max_seq_len(self) -> Optional[int]:
        """The KV cache length fixed at export (hybrids only; None otherwise)."""
        return self.meta.get("max_seq_len") if self.config.attn_layer_idx else None

    @property
    def quantize(self) -> Optional[str]:
        """None, or how the projection weights are quantized ("int8": export.quantize)."""
        return self.meta.get("quantize")

    @property
    def tokenizer_file(self) -> Optional[Path]:
        path = self.folder / "tokenizer.json"
        return path if path.is_file() else None

    def graph(self, name: str) -> Path:
        file = {"prefill": PREFILL_FILE, "decode": DECODE_FILE}[name]
        path = resolve_inside(self.folder, file, "graph")
        if not path.is_file():
            raise MambaDeployError(f"{self.folder}: {file} is missing (not a complete export folder)")
        return path

    def load_graph(self, name: str) -> "onnx.ModelProto":
        """The prefill or decode graph without its weights (small: they stay in weights.data)."""
        import onnx

        path = self.graph(name)
        try:
            return onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # DecodeError, OSError, ValueError for corrupt files
            raise MambaDeployError(f"{path}: cannot read the ONNX graph ({type(exc).__name__}: {exc})"
                                   .splitlines()[0]) from None


def is_export_folder(path: str | Path) -> bool:
    file = Path(path) / "config.json"
    try:
        return file.is_file() and "export" in json.loads(file.read_text())
    except (OSError, ValueError):
        return False


def load_export(path: str | Path) -> ExportInfo:
    """Parse and check an export folder; MambaDeployError on anything a user could get wrong."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise MambaDeployError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise MambaDeployError(f"{folder} is not a folder (expected an export folder from 'mamba-deploy export')")
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(f"{folder}: no config.json (not an export folder from 'mamba-deploy export')")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("export"), dict):
        raise ConfigError(f"{file}: no export metadata (is this a checkpoint? export it first with "
                          f"'mamba-deploy export')")
    meta = data.pop("export")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{file}: bad export format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{file}: export format version {version} is newer than this mamba-deploy supports "
                          f"({FORMAT_VERSION}); upgrade mamba-deploy")
    for key in ("dtype", "state_dtype"):
        if meta.get(key) not in DTYPES:
            raise ConfigError(f"{file}: export field '{key}' must be one of {', '.join(DTYPES)}, got {meta.get(key)!r}")
    try:
        config = ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    limit = meta.get("max_seq_len")
    if config.attn_layer_idx and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise ConfigError(f"{file}: export field 'max_seq_len' must be an integer >= 1 for a model with attention "
                          f"layers, got {limit!r}")
    return ExportInfo(folder, config, meta)


def check_export(info: ExportInfo) -> ExportInfo:
    """The cheap checks every backend runs when it loads an export, before any weight is read: both graphs
    parse; their inputs, outputs and initializers (names, dtypes, shapes) are those config.json implies;
    every external-data location lies inside the folder and its bytes are present. Returns `info`;
    MambaDeployError on the first problem."""
    from .weights import export_initializer_specs, external_tensors

    expected = {name: _describe(dtype, shape) for name, (dtype, shape)
                in export_initializer_specs(info.config, info.dtype, info.quantize).items()}
    for kind in ("prefill", "decode"):
        model = info.load_graph(kind)
        _check_same(info, kind, "input/output", _graph_io(model), _expected_io(info))
        found = {t.name: _describe(t.dtype, t.shape) for t in external_tensors(info.folder, model)}
        _check_same(info, kind, "initializer", found, expected)
    return info


def _describe(dtype: torch.dtype | int, shape: tuple[Optional[int], ...]) -> str:
    """'float32[?, 64, 3]': a torch dtype or ONNX element type and a shape (None: a dynamic axis)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        import onnx

        try:
            name = onnx.helper.tensor_dtype_to_np_dtype(dtype).name
        except (KeyError, ValueError):
            name = f"onnx type {dtype}"
    return f"{name}[{', '.join('?' if d is None else str(d) for d in shape)}]"


def _expected_io(info: ExportInfo) -> dict[str, str]:
    """name -> description of every graph input and output config.json implies (batch/seq axes: '?')."""
    from .graphs import GraphOptions, state_io_type
    from .weights import TORCH_TO_ONNX

    cfg = info.config
    opts = GraphOptions(TORCH_TO_ONNX[info.dtype], TORCH_TO_ONNX[info.state_dtype], False, False, 0,
                        info.max_seq_len or 0)
    io = {"input_ids": _describe(torch.int64, (None, None)),
          "logits": _describe(info.dtype, (None, None, cfg.vocab_size_padded))}
    for kind, layer, _ in state_layout(cfg):
        elem, shape = state_io_type(cfg, opts, kind)
        for direction in ("past", "present"):
            io[f"{direction}_{io_name(kind, layer)}"] = _describe(elem, (None, *shape[1:]))
    return io


def _graph_io(model: "onnx.ModelProto") -> dict[str, str]:
    """name -> description of the graph's inputs and outputs; the (batch, seq) axes are shown as '?'."""
    found = {}
    for value in [*model.graph.input, *model.graph.output]:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        leading = 2 if value.name in ("input_ids", "logits") else 1  # batch [, seq or the decode graph's 1]
        found[value.name] = _describe(t.elem_type, (*[None] * min(leading, len(dims)), *dims[leading:]))
    return found


def _check_same(info: ExportInfo, kind: str, what: str, found: dict[str, str], expected: dict[str, str]) -> None:
    """MambaDeployError naming the first difference between the graph's `found` and config.json's `expected`."""
    extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    mismatched = [name for name in sorted(found) if name in expected and found[name] != expected[name]]
    if extra:
        problem = f"{what} {extra[0]!r} is in the graph only"
    elif missing:
        problem = f"{what} {missing[0]!r} is missing from the graph"
    elif mismatched:
        name = mismatched[0]
        problem = f"{what} {name!r} is {found[name]} in the graph, config.json implies {expected[name]}"
    else:
        return
    raise MambaDeployError(f"{info.folder}: config.json does not match {kind}.onnx ({problem}); the folder was "
                           f"edited or mixes two exports: re-export the model")
