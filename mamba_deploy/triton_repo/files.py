"""Putting the export's large files (weights.data, a TensorRT plan) into the repository without duplicating them
when the filesystem allows: a hard link, else a copy. Never a symbolic link: Triton would follow it out of
the repository, and the repository would break when the export moves.

A hard link has one cost: onnx's Python loader and checker (onnx >= 1.20) refuse external data whose file has
more than one link, in the repository and in the export alike. ONNX Runtime, and so Triton, load it; `copy`
avoids the link for those who need the onnx tools.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from tqdm import tqdm

_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_CHUNK = 16 << 20


def link_or_copy(source: Path, target: Path, progress: bool = True, copy: bool = False) -> str:
    """`target` becomes a hard link to `source` ("linked") or, with `copy` or where the filesystem refuses a
    link (another filesystem, no hard links, protected_hardlinks), a copy made with a progress bar ("copied")."""
    reason = "as asked"
    if not copy:
        try:
            os.link(source, target, follow_symlinks=False)
            return "linked"
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            reason = f"cannot hard-link it: {os.strerror(exc.errno)}"
    size = source.stat().st_size
    if progress:
        print(f"[mamba-deploy] copying {source} into the repository ({reason}): {size / 2**30:.2f} GiB",
              file=sys.stderr)
    with open(source, "rb") as src, open(target, "xb") as dst, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"copy {source.name}", disable=None if progress else True,
                 leave=False) as bar:
        for block in iter(lambda: src.read(_CHUNK), b""):
            dst.write(block)
            bar.update(len(block))
    return "copied"
