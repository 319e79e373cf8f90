"""`export_model`: checkpoint (folder or Hub id) -> export folder (docs/architecture.md "Export artifact"), written atomically.

Everything is written into a temp folder beside the output and renamed at the end, so a failure
or Ctrl-C leaves no partial output (and, with `force`, the old output intact until the rename).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import onnx
import torch
from tqdm import tqdm

from ..checkpoint import TOKENIZER_FILES, resolve_checkpoint, weight_files
from ..config import load_config
from ..errors import MambaDeployError, ParameterError, is_integer
from ..ops import MIN_OPSET, register_onnx_schemas
from .artifact import DECODE_FILE, DTYPES, FORMAT_VERSION, PREFILL_FILE
from .graphs import GraphOptions, build_lm_graph
from .weights import TORCH_TO_ONNX, checkpoint_dtype, write_weights

FALLBACK_TOKENIZER = "EleutherAI/gpt-neox-20b"  # what state-spaces' mamba checkpoints were trained with


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    dtype: Optional[str] = None  # float32 | float16 | bfloat16; None: the checkpoint's dtype
    state_dtype: str = "float32"  # float32 | model
    logits: str = "last"  # last | all
    ops: str = "plugin"  # plugin | standard
    opset: int = MIN_OPSET
    force: bool = False
    revision: Optional[str] = None

    def validate(self) -> None:
        choices = {"dtype": (None, *DTYPES), "state_dtype": ("float32", "model"), "logits": ("last", "all"),
                   "ops": ("plugin", "standard")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ParameterError(name, f"must be one of {', '.join(a for a in allowed if a)}, "
                                           f"got {getattr(self, name)!r}")
        newest = onnx.defs.onnx_opset_version()
        if not (is_integer(self.opset) and MIN_OPSET <= self.opset <= newest):
            raise ParameterError("opset", f"must be between {MIN_OPSET} (LinearAttention) and {newest} "
                                          f"(this onnx), got {self.opset}")


def export_model(source: str | os.PathLike, output: str | os.PathLike, options: ExportOptions = ExportOptions(),
                 progress: bool = True) -> Path:
    """Export a Mamba1/Mamba2 checkpoint to `output`; returns the output folder."""
    from ..version import __version__

    options.validate()
    output = Path(output).expanduser()
    if output.exists() and not options.force:
        raise MambaDeployError(f"{output} already exists (use --force to overwrite)")
    folder = resolve_checkpoint(source, options.revision)
    cfg = load_config(folder)
    files = weight_files(folder)
    dtype = DTYPES[options.dtype] if options.dtype else checkpoint_dtype(files)
    state_dtype = torch.float32 if options.state_dtype == "float32" else dtype
    graph_opts = GraphOptions(TORCH_TO_ONNX[dtype], TORCH_TO_ONNX[state_dtype], options.ops == "plugin",
                              options.logits == "all", options.opset)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    steps = tqdm(total=5, desc="export", unit="step", disable=not progress, leave=False)
    try:
        steps.set_postfix_str("weights")
        weights = write_weights(cfg, files, tmp, dtype)
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
        meta = {"format_version": FORMAT_VERSION, "dtype": _dtype_name(dtype), "state_dtype": _dtype_name(state_dtype),
                "ops": options.ops, "opset": options.opset, "logits": options.logits,
                "tool": "mamba-deploy", "tool_version": __version__, "source": _source(source, folder),
                "tokenizer": tokenizer}
        (tmp / "config.json").write_text(json.dumps({**cfg.to_dict(), "export": meta}, indent=2))
        steps.update()
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return output


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def _source(source: str | os.PathLike, folder: Path) -> str:
    """A Hub id as given; a local folder as an absolute path."""
    return str(folder.resolve()) if Path(source).expanduser().exists() else str(source)


def _replace(tmp: Path, output: Path) -> None:
    """Move tmp into place; an existing output is moved aside first and removed only after."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def copy_tokenizer(folder: Path, dest: Path) -> Optional[list[str]]:
    """Copy the checkpoint's tokenizer files; else fetch GPT-NeoX's. Returns the copied names or None."""
    source = folder if (folder / "tokenizer.json").is_file() else _fetch_fallback_tokenizer()
    if source is None:
        return None
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (name == "generation_config.json" and source != folder):
            shutil.copyfile(source / name, dest / name)
            copied.append(name)
    return copied


def _fetch_fallback_tokenizer() -> Optional[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub import constants as hf_constants

    try:
        return Path(snapshot_download(FALLBACK_TOKENIZER, allow_patterns=TOKENIZER_FILES, etag_timeout=10,
                                      local_files_only=bool(hf_constants.HF_HUB_OFFLINE)))
    except Exception as exc:  # offline, no cache, network errors: the export is still usable with --ids
        warnings.warn(f"the checkpoint has no tokenizer and {FALLBACK_TOKENIZER}'s could not be fetched "
                      f"({type(exc).__name__}); the export has no tokenizer (config.json: \"tokenizer\": null), "
                      f"so 'run' needs --ids", stacklevel=2)
        return None
