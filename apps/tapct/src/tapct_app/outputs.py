"""Command outputs: checked before any work, then written whole or not at all.

:func:`check_output` is THE guard every command that writes runs on its ``-o`` (and other
output paths) before reading anything: a folder expected where a file is (or the reverse)
ends with one line. :func:`atomic_output_dir` and :func:`atomic_write_bytes` write through
a temporary beside the target, renamed on success.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tapct_app.errors import UserError

__all__ = ["atomic_output_dir", "atomic_write_bytes", "check_output"]


def check_output(
    path: str | Path,
    kind: Literal["folder", "file"],
    option: str = "-o",
    owned_by: str | None = None,
) -> Path:
    """Refuse an output path that cannot become what the command writes; nothing is touched.

    Run before any work, so a wrong ``-o`` costs nothing and leaves nothing behind.

    Args:
        path: The output the user named.
        kind: ``"folder"`` (a run, store or results folder) or ``"file"`` (a JSON or CSV).
        option: The option's name, for the message (``-o``, ``--list-file``).
        owned_by: For a folder the command replaces entries of (``export``, ``benchmark``,
            ``retrieve``, ``pretrain``): a file only its own output holds (e.g.
            ``model.safetensors``). An existing folder with visible entries but without it
            is someone else's and is refused, so a user's files are never replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: ``"<path>: exists and is not a folder (-o needs a folder)"``, ``"<path>:
            is a folder (-o needs a file name, e.g. <path>/stats.json)"``, or ``"<path>:
            <ancestor> is a file, not a folder"`` when a parent cannot be created, or
            ``"<path>: holds other files (not an output of this command) ..."``.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder ({option} needs a folder)")
    if kind == "folder" and owned_by is not None and path.is_dir():
        visible = [p.name for p in path.iterdir() if not p.name.startswith(".")]
        if visible and owned_by not in visible:
            shown = ", ".join(sorted(visible)[:3]) + (", ..." if len(visible) > 3 else "")
            raise UserError(
                f"{path}: holds other files ({shown}) and no {owned_by}, so it is not an "
                f"output of this command; choose a new or empty folder for {option}"
            )
    if kind == "file" and path.is_dir():
        raise UserError(
            f"{path}: is a folder ({option} needs a file name, e.g. {path / 'out.json'})"
        )
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{path}: {parent} is a file, not a folder")
            break
    return path


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
