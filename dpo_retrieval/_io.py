"""Atomic writes: a file or directory appears whole or not at all (a temporary sibling, then ``os.replace``).

Every writer of the package goes through these functions.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write ``tmp`` (a sibling of ``p``); on success it replaces ``p``
    (with the usual ``0666 & ~umask`` mode), on error it is removed and ``p`` is untouched."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError.at(path, None, "is a directory; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise UserInputError.at(path, None, f"cannot write: {err.strerror or err}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, write: Callable, *, fsync: bool = False) -> Path:
    """Call ``write(f)`` on a UTF-8 text file that becomes ``path`` only once it is complete."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return atomic_write_text(path, lambda f: f.write(text), fsync=fsync)


def write_json(obj, path: str | os.PathLike, **dump_kwargs) -> Path:
    """Write JSON atomically (indented, UTF-8, a final newline)."""
    kwargs = {"indent": 2, "ensure_ascii": False, **dump_kwargs}
    return atomic_write_text(path, lambda f: (json.dump(obj, f, **kwargs), f.write("\n")))


class atomic_directory:
    """``with atomic_directory(target) as tmp:`` fill ``tmp``; on success it becomes ``target``.

    An existing ``target`` is replaced only if it is empty or holds ``marker`` (the file that says it
    is ours, e.g. an index's ``metadata.json``) and ``overwrite`` is set; on error the temporary
    directory is removed and ``target`` is untouched.
    """

    def __init__(self, target: Path, *, marker: str, what: str = "directory", overwrite: bool = True) -> None:
        self.target = Path(target)
        self.marker = marker
        self.what = what
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        t = self.target
        if t.exists() and not t.is_dir():
            raise UserInputError.at(t, None, "is a file, not a directory")
        if t.is_dir() and any(t.iterdir()):
            if not (t / self.marker).exists():
                raise UserInputError.at(t, None, f"exists and is not an {self.what}; refusing to overwrite it")
            if not self.overwrite:
                raise UserInputError.at(t, None, "exists; set overwrite to replace it")
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.tmp-", dir=t.parent))
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        except OSError as err:
            raise UserInputError.at(t, None, f"cannot create the output directory: {err.strerror or err}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        t = self.target
        old = None
        if t.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{t.name}.old-", dir=t.parent))
            os.replace(t, old / "index")
        os.replace(self.tmp, t)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def hold_lock(path: str | os.PathLike, *, what: str = "another process") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block, or fail at once.

    ``flock`` on Linux and macOS: the kernel releases it when the holder exits, so a killed run leaves no
    stale lock and the next one simply resumes. Where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    try:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below, after the with block's body
    except OSError as err:
        raise UserInputError.at(path, None, f"cannot write: {err.strerror or err}") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserInputError.at(path.parent, None, f"{what} is already running here (pid {holder}, lock "
                                                       f"{path.name}); wait for it or use another output") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise UserInputError.at(path, None, f"cannot lock: {err.strerror or err}") from None
            logger.warning("%s: this filesystem cannot lock (%s); running unlocked", path, err.strerror or err)
            yield
            return
        try:
            f.truncate(0)
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
