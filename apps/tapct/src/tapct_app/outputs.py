"""Outputs that appear whole or not at all: a temp dir beside the target, renamed on success."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output_dir", "atomic_write_bytes"]


@contextmanager
def atomic_output_dir(output: str | Path) -> Iterator[Path]:
    """Write a command's outputs into a temp dir beside ``output``; publish on success.

    On success the temp dir is renamed to ``output`` (if ``output`` does not exist) or
    its entries replace the same-named entries of ``output``. On any exception the temp
    dir is removed, so a failed command leaves nothing behind.

    Args:
        output: The directory the outputs belong in.

    Yields:
        The temp directory to write into.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not output.exists():
        os.replace(tmp, output)
        return
    for entry in tmp.iterdir():
        target = output / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)
    tmp.rmdir()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    Args:
        path: Destination file.
        data: Its content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
