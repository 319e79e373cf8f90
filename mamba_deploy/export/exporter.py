"""`export_model`: checkpoint (folder or Hub id) -> export folder (docs/architecture.md "Export artifact"), written atomically.

Everything is written into a temp folder beside the output and renamed at the end, so a failure
or Ctrl-C leaves no partial output (and, with `force`, the old output intact until the rename);
`target.ExportTarget` holds the output's lock meanwhile and decides what `force` may replace.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import onnx
import torch
from tqdm import tqdm

from ..checkpoint import checkpoint_config, resolve_checkpoint, weight_files
from ..errors import ParameterError, is_integer
from ..models.lm import DEFAULT_MAX_SEQ_LEN
from ..ops import MIN_OPSET, register_onnx_schemas
from .artifact import DECODE_FILE, DTYPES, FORMAT_VERSION, PREFILL_FILE, dtype_name
from .graphs import GraphOptions, build_lm_graph
from .quantize import check_quantize
from .target import ExportTarget, absolute_output, check_output
from .tokenizer import copy_tokenizer
from .weights import TORCH_TO_ONNX, checkpoint_dtype, write_weights

@dataclasses.dataclass(frozen=True)
class ExportOptions:
    dtype: Optional[str] = None  # float32 | float16 | bfloat16; None: the checkpoint's dtype
    state_dtype: str = "float32"  # float32 | model
    logits: str = "last"  # last | all
    ops: str = "plugin"  # plugin | standard
    opset: int = MIN_OPSET
    force: bool = False
    revision: Optional[str] = None
    max_seq_len: Optional[int] = None  # KV cache length of a hybrid's attention layers; None: DEFAULT_MAX_SEQ_LEN
    quantize: Optional[str] = None  # None | int8: projection weights for MatMulNBits (export.quantize)

    def validate(self) -> None:
        choices = {"dtype": (None, *DTYPES), "state_dtype": ("float32", "model"), "logits": ("last", "all"),
                   "ops": ("plugin", "standard")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ParameterError(name, f"must be one of {', '.join(a for a in allowed if a)}, "
                                           f"got {getattr(self, name)!r}")
        if check_quantize(self.quantize):
            if self.ops != "plugin":
                raise ParameterError("quantize", "uses ONNX Runtime's com.microsoft MatMulNBits: not with --ops "
                                                 "standard (standard ONNX ops only)")
            if self.dtype not in (None, "float32"):
                raise ParameterError("quantize", f"needs float32 activations (--dtype float32), got {self.dtype}")
        newest = onnx.defs.onnx_opset_version()
        if not (is_integer(self.opset) and MIN_OPSET <= self.opset <= newest):
            raise ParameterError("opset", f"must be between {MIN_OPSET} and {newest} "
                                          f"(this onnx), got {self.opset}")
        if self.max_seq_len is not None and not (is_integer(self.max_seq_len) and 1 <= self.max_seq_len <= 2**20):
            raise ParameterError("max_seq_len", f"must be an integer from 1 to {2**20}, got {self.max_seq_len!r}")


def export_model(source: str | os.PathLike, output: str | os.PathLike, options: ExportOptions = ExportOptions(),
                 progress: bool = True) -> Path:
    """Export a Mamba1/Mamba2 checkpoint to `output`; returns the output folder (as given, `~` expanded).
    progress: a progress bar on stderr when it is a terminal."""
    options.validate()
    given = Path(output).expanduser()
    output = absolute_output(given)
    local = Path(source).expanduser()
    check_output(output, options.force, [local] if local.exists() else [])  # fail fast, before any download
    folder = resolve_checkpoint(source, options.revision)
    cfg = checkpoint_config(folder)
    if options.max_seq_len is not None and not cfg.attn_layer_idx:
        raise ParameterError("max_seq_len", "applies to models with attention layers only (this one has none)")
    max_seq_len = (options.max_seq_len or DEFAULT_MAX_SEQ_LEN) if cfg.attn_layer_idx else 0
    files = weight_files(folder)
    dtype = DTYPES[options.dtype] if options.dtype else checkpoint_dtype(files)
    if options.quantize:
        dtype = torch.float32
    state_dtype = torch.float32 if options.state_dtype == "float32" else dtype
    graph_opts = GraphOptions(TORCH_TO_ONNX[dtype], TORCH_TO_ONNX[state_dtype], options.ops == "plugin",
                              options.logits == "all", options.opset, max_seq_len, check_quantize(options.quantize))
    # disable=None: tqdm draws only on a terminal (piped or logged output gets no carriage-return lines)
    bar = dict(total=5, desc="export", unit="step", disable=None if progress else True, leave=False)
    with ExportTarget(output, options.force, [folder, *files]) as target, tqdm(**bar) as steps:
        tmp = target.tmp
        assert tmp is not None
        steps.set_postfix_str("weights")
        weights, weights_meta = write_weights(cfg, files, tmp, dtype, options.quantize)
        steps.update()
        for name, decode in ((PREFILL_FILE, False), (DECODE_FILE, True)):
            steps.set_postfix_str(name)
            model = build_lm_graph(cfg, weights, graph_opts, decode)
            (tmp / name).write_bytes(model.SerializeToString())
            register_onnx_schemas()
            onnx.checker.check_model(str(tmp / name))
            steps.update()
        steps.set_postfix_str("tokenizer")
        tokenizer = copy_tokenizer(folder, tmp)
        steps.update()
        meta = {**_metadata(options, dtype, state_dtype, _source(source, folder), tokenizer), **weights_meta}
        if max_seq_len:
            meta["max_seq_len"] = max_seq_len
        (tmp / "config.json").write_text(json.dumps({**cfg.to_dict(), "export": meta}, indent=2))
        steps.update()
        target.commit()
    return given


def _metadata(options: ExportOptions, dtype: torch.dtype, state_dtype: torch.dtype, source: str,
              tokenizer: Optional[list[str]]) -> dict:
    from ..version import __version__

    return {"format_version": FORMAT_VERSION, "dtype": dtype_name(dtype), "state_dtype": dtype_name(state_dtype),
            "ops": options.ops, "opset": options.opset, "logits": options.logits,
            "tool": "mamba-deploy", "tool_version": __version__, "source": source, "tokenizer": tokenizer,
            **({"quantize": options.quantize} if options.quantize else {})}


def _source(source: str | os.PathLike, folder: Path) -> str:
    """A Hub id as given; a local folder as an absolute path."""
    return str(folder.resolve()) if Path(source).expanduser().exists() else str(source)
