"""Where an export is written: what `--force` may replace, one export per output at a time, no leftovers.

An export to OUT holds an exclusive `flock` on `.OUT.lock` beside it for its whole run, writes into
`.OUT.tmp-PID-XXXXXXXX` beside it and renames that to OUT at the end (an old OUT is first moved to
`.OUT.old-PID`). A temp folder whose PID no longer runs was left by a killed export (SIGKILL, power
loss): the next export to OUT removes it. `mamba-deploy triton` writes its model repositories the same way
(an `OutputKind` says what a previous one looks like).
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..errors import MambaDeployError
from .artifact import is_export_folder


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What a command writes, for the refusals: its noun, the run that writes one, how to recognise a previous
    one that `--force` may replace (and what such a folder has), and what its sources are called."""

    noun: str
    writer: str
    is_previous: Callable[[Path], bool]
    previous_mark: str
    source: str


EXPORT = OutputKind("export", "export", is_export_folder, "no export metadata in its config.json",
                    "the source checkpoint")


def absolute_output(path: str | os.PathLike) -> Path:
    """`path` made absolute with `.` and `..` folded (symlinks kept, so a link is seen as a link)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def check_output(output: Path, force: bool, sources: list[Path], kind: OutputKind = EXPORT) -> None:
    """MambaDeployError unless an export (or another `kind` of output) may be written to `output` (absolute):
    it does not exist, or `force` is set and it is a previous one that is not, and does not hold, any of
    `sources` (the checkpoint's folder and files), the current directory, the home folder or the root."""
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise MambaDeployError(f"{output} already exists (use --force to overwrite)")
    real = output.resolve()
    refuse = f"--force will not replace {output}"
    for what, path in (("the filesystem root", Path("/")), ("your home folder", Path.home()),
                       ("the current directory", Path.cwd())):
        if _is_or_holds(real, path.resolve()):
            raise MambaDeployError(f"{refuse}: it is or holds {what}")
    for source in sources:
        if _is_or_holds(real, source.resolve()):
            raise MambaDeployError(f"{refuse}: it is or holds {kind.source} ({source})")
    if output.is_symlink():
        raise MambaDeployError(f"{refuse}: it is a symbolic link (give the {kind.noun} folder itself)")
    if not kind.is_previous(output):
        raise MambaDeployError(f"{refuse}: it is not a previous {kind.noun} ({kind.previous_mark})")


def _is_or_holds(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


class ExportTarget:
    """`with ExportTarget(output, force, sources) as target:` write into `target.tmp`, then `target.commit()`.

    Entering checks `output` (see `check_output`), takes its lock (MambaDeployError when another export
    to it runs), removes stale temp folders and makes the temp folder; leaving removes the temp folder
    unless committed (also on KeyboardInterrupt or any other BaseException) and releases the lock.
    """

    def __init__(self, output: Path, force: bool, sources: list[Path], kind: OutputKind = EXPORT):
        self.output, self.force, self.sources, self.kind = output, force, sources, kind
        self.tmp: Optional[Path] = None
        self._lock_path: Optional[Path] = None
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> ExportTarget:
        check_output(self.output, self.force, self.sources, self.kind)  # before creating anything beside it
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.output.with_name(f".{self.output.name}.lock")
        self._lock_fd = _lock(self._lock_path, self.output, self.kind.writer)
        try:
            check_output(self.output, self.force, self.sources, self.kind)  # again: another may have finished
            remove_stale_temps(self.output)
            self.tmp = _make_temp(self.output)
        except BaseException:
            # A signal can land after mkdtemp made the folder but before self.tmp holds it.
            _remove_own_temps(self.output)
            self._release()
            raise
        return self

    def commit(self) -> None:
        """Move the temp folder into place as `output` (replacing a previous export)."""
        assert self.tmp is not None, "commit() outside `with`"
        _replace(self.tmp, self.output)
        self.tmp = None

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        assert self._lock_path is not None
        self._lock_path.unlink(missing_ok=True)  # while still locked: no one can lock a file about to vanish
        os.close(self._lock_fd)
        self._lock_fd = None


def _lock(path: Path, output: Path, writer: str = "export") -> int:
    """An exclusive flock on `path` (created if need be; it then holds our pid) as an open fd."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MambaDeployError(f"another {writer} to {output} is running (pid {holder})") from None
        except BaseException:
            os.close(fd)
            raise
        if _still_linked(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # its previous holder removed it between our open and our flock: lock the new one


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def remove_stale_temps(output: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID` folders beside `output` whose PID no longer runs."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(?:tmp|old)-(\d+)(?:-\w+)?")
    removed = []
    for entry in output.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _remove_own_temps(output: Path) -> None:
    """Remove this process's `.NAME.tmp-PID-*` folders beside `output` (it holds the lock, so they are ours)."""
    for entry in output.parent.glob(f".{glob.escape(output.name)}.tmp-{os.getpid()}-*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process of ours; leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _make_temp(output: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-{os.getpid()}-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    return tmp


def _replace(tmp: Path, output: Path) -> None:
    """Move tmp into place; an existing output is moved aside first and removed only after."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old)
