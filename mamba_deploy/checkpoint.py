"""Resolve a checkpoint (folder or Hub id), read its weights safely, normalise key names.

Weights are streamed tensor by tensor into preallocated parameters in the requested dtype, so
peak memory is about one model plus the largest tensor (`.bin` files are memory-mapped).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import torch

from .config import ModelConfig, load_config
from .errors import CheckpointError

CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json"]
SAFETENSORS_PATTERNS = ["model*.safetensors", "model.safetensors.index.json"]
BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_inside(folder: Path, relative: str | os.PathLike, what: str) -> Path:
    """`folder/relative` with symlinks resolved; CheckpointError if that leaves `folder` (absolute paths,
    `..` escapes, links pointing out). A Hugging Face cache snapshot's links into its repo's blobs/ stay inside."""
    name = os.fspath(relative)
    outside = CheckpointError(f"{what} {name!r} resolves outside {folder}")
    if os.path.isabs(name):
        raise outside
    root = Path(folder).resolve()
    try:
        path = (root / name).resolve()
    except (OSError, ValueError):  # a link loop, a NUL byte
        raise outside from None
    roots = [root]
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        roots.append(root.parent.parent / "blobs")
    if not any(path.is_relative_to(r) for r in roots):
        raise outside
    return path


def resolve_checkpoint(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub id fetched (or found in the cache) with only the files we need."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a folder (expected a checkpoint folder with config.json)")
        return path
    name = str(path_or_id)
    if not _HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}: no such folder (and not a Hugging Face Hub id like 'state-spaces/mamba-130m')")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    offline = bool(hf_constants.HF_HUB_OFFLINE)
    timeout = hf_constants.HF_HUB_ETAG_TIMEOUT  # seconds per request (default 10)
    try:
        if offline:
            patterns = CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_PATTERNS + BIN_PATTERNS
        else:  # one request without retries: an unreachable Hub fails within `timeout`
            info = HfApi().model_info(repo_id, revision=revision, timeout=timeout, expand=["siblings"])
            has_st = any(s.rfilename.endswith(".safetensors") for s in info.siblings or [])
            patterns = CONFIG_FILES + TOKENIZER_FILES + (SAFETENSORS_PATTERNS if has_st else BIN_PATTERNS)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline,
                                      etag_timeout=timeout))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise CheckpointError(f"{repo_id}: not in the local Hugging Face cache and {why}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise CheckpointError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private)") from None
    except HfHubHTTPError as exc:
        raise CheckpointError(f"{repo_id}: download failed ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    except _network_errors() as exc:
        raise CheckpointError(f"{repo_id}: cannot reach the Hugging Face Hub ({type(exc).__name__}); set "
                              f"HF_HUB_OFFLINE=1 to use the local cache, or pass a local checkpoint folder") from None
    except OSError as exc:
        raise CheckpointError(f"{repo_id}: download failed ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection, DNS, proxy and timeout failures of whichever HTTP client huggingface_hub has loaded."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ["TransportError"]), ("httpx", ["TransportError"]),
                          ("requests", ["ConnectionError", "Timeout"])):
        loaded = sys.modules.get(module)
        found += [getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name)]
    return tuple(found)


def checkpoint_config(folder: Path) -> ModelConfig:
    """The checkpoint's config.json (which must resolve inside `folder`) as a ModelConfig."""
    return load_config(resolve_inside(folder, "config.json", "config file"))


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred; sharded checkpoints via their index.
    Every file must resolve inside `folder`."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index_name).is_file():
            names = _index_shards(folder, index_name)
            shards = [resolve_inside(folder, name, f"{index_name}: shard") for name in names]
            missing = [name for name, shard in zip(names, shards) if not shard.is_file()]
            if missing:
                raise CheckpointError(f"{folder / index_name}: shard(s) missing: {', '.join(missing)}")
            return shards
        if (folder / single).is_file():
            return [resolve_inside(folder, single, "weights file")]
    raise CheckpointError(f"{folder}: no weights (expected model.safetensors or pytorch_model.bin, or a sharded index)")


def _index_shards(folder: Path, index_name: str) -> list[str]:
    """The distinct shard file names in `folder/index_name` (a sharded checkpoint's index), sorted."""
    index = folder / index_name
    try:
        weight_map = json.loads(resolve_inside(folder, index_name, "index").read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index}: corrupt index (no 'weight_map')") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: corrupt index ('weight_map' must map weight names to shard file names)")
    return sorted(set(weight_map.values()))


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time. `.bin` goes through torch.load(weights_only=True)."""
    for file in files:
        try:
            if file.suffix == ".safetensors":
                from safetensors import safe_open
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        yield key, f.get_tensor(key)
            else:
                yield from _load_bin(file).items()
        except CheckpointError:
            raise
        except Exception as exc:  # corrupt/truncated files raise many different types
            raise CheckpointError(f"{file}: cannot read weights ({type(exc).__name__}: {exc})".splitlines()[0]) \
                from None


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        data = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a state dict, got {type(data).__name__}")
    return data


def normalise_key(key: str) -> str:
    """Map Hugging Face / mamba-ssm names onto ours (mamba-ssm's)."""
    if key.startswith("model."):
        key = key[len("model."):]
    if not key.startswith(("backbone.", "lm_head.")):
        key = "backbone." + key
    return key.replace("backbone.embeddings.", "backbone.embedding.")


def expected_parameters(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names (mamba-ssm naming) and shapes of the reference model, built on the meta device."""
    from .models import MambaLM

    with torch.device("meta"):
        model = MambaLM(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}  # a tied lm_head appears once


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def iter_checked(cfg: ModelConfig, files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(normalised name, tensor) for every parameter of the model, one at a time, shapes checked against
    the config; raises CheckpointError for unexpected or missing weights once the files are read."""
    expected = expected_parameters(cfg)
    seen: set[str] = set()
    unexpected: list[str] = []
    for raw_key, tensor in iter_tensors(files):
        key = normalise_key(raw_key)
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied to the embedding; some checkpoints store both
        if key not in expected:
            unexpected.append(raw_key)
            continue
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"weight '{raw_key}' has shape {tuple(tensor.shape)}, the config implies "
                                  f"{expected[key]} (config and weights do not match)")
        seen.add(key)
        yield key, tensor
    if unexpected:
        raise CheckpointError(f"unexpected weights not in a {cfg.arch} model: {_listed(unexpected)}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"weights missing from the checkpoint: {_listed(missing)}")


def load_weights_into(model: torch.nn.Module, cfg: ModelConfig, files: list[Path]) -> None:
    """Copy checkpoint tensors into `model`'s (preallocated) parameters, converting dtype per tensor."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in iter_checked(cfg, files):
            params[key].copy_(tensor)


def load_reference(path_or_id: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   revision: str | None = None):
    """Load a checkpoint as the PyTorch reference model (`MambaLM`) in `dtype` on `device`."""
    from .models import MambaLM

    folder = resolve_checkpoint(path_or_id, revision)
    cfg = checkpoint_config(folder)
    files = weight_files(folder)
    with torch.device("meta"):
        model = MambaLM(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty re-creates parameters; re-tie
        model.lm_head.weight = model.backbone.embedding.weight
    load_weights_into(model, cfg, files)
    model.eval().requires_grad_(False)
    model.source_dir = folder
    return model
