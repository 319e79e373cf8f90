"""The export's tokenizer files: the checkpoint's own (checked), else GPT-NeoX's from the Hub cache."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

from ..checkpoint import TOKENIZER_FILES, resolve_inside
from ..errors import MambaDeployError

FALLBACK_TOKENIZER = "EleutherAI/gpt-neox-20b"  # what state-spaces' mamba checkpoints were trained with
COPY_MODE = 0o644  # copies are ordinary files (less the umask), whatever the source's mode


def copy_tokenizer(folder: Path, dest: Path) -> Optional[list[str]]:
    """Copy the checkpoint's tokenizer files; else fetch GPT-NeoX's. Returns the copied names or None.

    Every file must resolve inside its folder (no symlinks out of it) and tokenizer.json must load;
    otherwise MambaDeployError naming the file.
    """
    own = resolve_inside(folder, "tokenizer.json", "tokenizer file").is_file()
    source = folder if own else _fetch_fallback_tokenizer()
    if source is None:
        return None
    files = {}
    for name in TOKENIZER_FILES:
        path = resolve_inside(source, name, "tokenizer file")
        if path.is_file() and not (name == "generation_config.json" and not own):
            files[name] = path
    if "tokenizer.json" in files:
        check_tokenizer_file(files["tokenizer.json"], source / "tokenizer.json")
    for name, path in files.items():
        _copy_plain(path, dest / name)
    return list(files)


def check_tokenizer_file(path: Path, shown: Path) -> None:
    """MambaDeployError (naming `shown`) unless `path` loads as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception; UnicodeDecodeError for binary files
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise MambaDeployError(f"{shown}: not a valid tokenizer ({reason})") from None


def _copy_plain(source: Path, dest: Path) -> None:
    """Copy the bytes only: a new file with mode COPY_MODE less the umask, not the source's mode."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, COPY_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())


def _fetch_fallback_tokenizer() -> Optional[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub import constants as hf_constants

    try:
        return Path(snapshot_download(FALLBACK_TOKENIZER, allow_patterns=TOKENIZER_FILES,
                                      etag_timeout=hf_constants.HF_HUB_ETAG_TIMEOUT,
                                      local_files_only=bool(hf_constants.HF_HUB_OFFLINE)))
    except Exception as exc:  # offline, no cache, network errors: the export is still usable with --ids
        warnings.warn(f"the checkpoint has no tokenizer and {FALLBACK_TOKENIZER}'s could not be fetched "
                      f"({type(exc).__name__}); the export has no tokenizer (config.json: \"tokenizer\": null), "
                      f"so 'run' needs --ids", stacklevel=2)
        return None
