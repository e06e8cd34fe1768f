"""Files that several processes may share: atomic writes and inter-process locks.

Every file hiergen writes (sweep points, result files, images, caches) goes through
:func:`atomic_write`: the content is written to a temporary file with a name unique to this
call (never shared between processes or threads) in the target's folder, flushed to disk,
then moved over the target with :func:`os.replace`. A reader therefore sees either the old
file or the whole new one, never a partial file, and a killed writer leaves at most a
``.*.tmp`` file behind that no reader looks at.

:func:`file_lock` is an inter-process lock (the maintained ``filelock`` library) for
read-modify-write sections such as assembling a result file from its points.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hiergen.models.errors import ConfigError

#: suffix of temporary files; readers skip names that start with "." and end with it
TMP_SUFFIX = ".tmp"


def _writable_folder(path: Path) -> None:
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create folder {folder}: {exc.strerror or exc}") from exc
    if path.exists() and path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success move it over ``path``.

    Use it with writers that want a file name (``ds.to_netcdf(tmp)``, ``image.save(tmp)``,
    safetensors' ``save_file``). On an exception the temporary file is removed and
    ``path`` is left as it was. File-system errors become :class:`ConfigError`.
    """
    target = Path(path)
    _writable_folder(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write in {target.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], Any]) -> Path:
    """Write ``data`` (bytes, text, or a callable that writes a given temporary path) to
    ``path`` atomically. Returns ``path`` as a :class:`~pathlib.Path`."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return target


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (a ``.lock`` file, ``filelock.FileLock``)
    for the duration of a ``with`` block.

    ``timeout``: seconds to wait (``-1``: forever); on time-out a :class:`ConfigError`
    names the lock file. The lock is released when the holder exits or dies.
    """
    from filelock import FileLock, Timeout

    lock_path = Path(path)
    _writable_folder(lock_path)
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout as exc:
        raise ConfigError(
            f"another hiergen process holds the lock {lock_path} (waited {timeout:g} s); "
            "wait for it to finish"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def try_file_lock(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Try the inter-process lock on ``path`` without waiting.

    Yields ``True`` while this process holds the lock (released at the end of the ``with``
    block), ``False`` when another process holds it. Like :func:`file_lock`, the lock is an
    OS lock on an open file (``flock``): it goes away with its holder, even after
    ``kill -9``.
    """
    from filelock import FileLock, Timeout

    lock_path = Path(path)
    _writable_folder(lock_path)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    except OSError as exc:
        raise ConfigError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    try:
        yield True
    finally:
        lock.release()


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` (with its parents) unless it exists; returns it.

    Raises :class:`ConfigError` naming the path when it, or one of its parents, is an
    existing file, or when the folder cannot be created (permissions, read-only disk).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create folder {folder}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in folder {folder}: permission denied")
    return folder
