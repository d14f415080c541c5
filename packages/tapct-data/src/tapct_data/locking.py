"""One writer per output folder: an OS file lock (``fcntl.flock``) on ``FOLDER/.lock``.

A store build (`tapct_data.build_zarr_store`) and a pretraining run hold the lock of
their output folder while they write it; a second process pointed at the same folder
fails at once with :class:`FolderLockedError`, naming the holder (pid, host, start time
and command line, which the holder writes into the lock file once it has the lock). The
kernel releases a ``flock`` when its process ends in any way, ``kill -9`` included, so
a stale lock never blocks a rerun. The lock file stays in the folder (deleting it would
let a third process lock a new file while the second still holds the old one); readers
ignore it (a dot file). The one implementation for the library and the ``tapct`` app.

POSIX only (``fcntl``); on a system without it the lock is a no-op. On network file
systems ``flock`` is as reliable as the server's locking (NFSv4: yes).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

__all__ = ["LOCK_FILE", "FolderLockedError", "folder_lock"]

#: The lock file's name inside the locked folder.
LOCK_FILE = ".lock"


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock.

    Args:
        folder: The locked folder.
        holder: Who holds it, in words (e.g. ``"pid 123 on host, since ..."``).

    Attributes:
        folder: The locked folder.
        holder: Who holds it.
    """

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder}: in use by another process ({holder}); wait for it to "
                         "finish or stop it, or choose another output")
        self.folder = folder
        self.holder = holder


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']}, since {info['since']}: "
                f"{info['command']}")
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def folder_lock(folder: str | PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (which must exist) for the ``with`` block.

    Args:
        folder: The output folder to lock.

    Yields:
        The lock file's path (``folder / ".lock"``).

    Raises:
        FolderLockedError: Another process holds the lock (it is not waited for).
        FileNotFoundError: ``folder`` does not exist.
    """
    path = Path(folder) / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise FolderLockedError(Path(folder), holder) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv)),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
