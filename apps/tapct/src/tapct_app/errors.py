"""The app's error policy: a user's mistake is one clear line, a bug is a traceback.

Commands raise :class:`UserError` for anything the user can fix (a missing file, a
corrupt or truncated scan, an MR scan where a CT is expected, a bad ``--roi``). The CLI
entry point prints ``tapct: error: <message>`` on stderr and exits with status 2, without
a traceback unless ``--debug`` is given. Other exceptions are bugs and keep their
traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

__all__ = [
    "EXIT_USER_ERROR",
    "UserError",
    "call_with_user_errors",
    "one_line",
    "user_errors_from",
    "with_hint",
]

EXIT_USER_ERROR = 2

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix; its message is shown as one line without traceback.

    Args:
        message: What is wrong, naming the file or option at fault.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(message: object) -> str:
    """Collapse a message (or exception) to one line of single-spaced words.

    Args:
        message: Any object; exceptions give their ``str``.

    Returns:
        The text on one line (the exception's class name when its text is empty).
    """
    text = " ".join(str(message).split())
    if not text and isinstance(message, BaseException):
        text = type(message).__name__
    return text


# The words of tapct_data's NotCTError for a volume that is not CT in HU (io._check_ct);
# a label map (LabelMapError) gets no hint: --exclude is its remedy, not reading it as CT.
_NOT_CT_WORDS = ("not 'CT'", "values look far from HU")
NOT_CT_HINT = "pass --allow-non-ct to read it anyway"
_NOT_CT_HINT_PRETRAIN = (
    "to pretrain on it anyway: tapct preprocess --allow-non-ct, then --data STORE"
)


def with_hint(message: str, command: str | None = None) -> str:
    """Add the CLI switch that lifts an error to its one-line message, where there is one.

    A scan refused as not CT (``tapct_data.NotCTError``: a Modality other than CT, values
    far from HU) gets ``"; pass --allow-non-ct to read it anyway"`` (``pretrain``, which has
    no such switch: how to store it with ``preprocess --allow-non-ct``); the library's own
    switch (``allow_non_ct=True``) is never shown to a CLI user.

    Args:
        message: The error line (without ``tapct: error:``).
        command: The ``tapct`` command that failed, if known.

    Returns:
        The line, with the hint when it applies.
    """
    hint = _NOT_CT_HINT_PRETRAIN if command == "pretrain" else NOT_CT_HINT
    if any(w in message for w in _NOT_CT_WORDS) and hint not in message:
        return f"{message}; {hint}"
    return message


# Exceptions that readers raise for bad input files (pydicom's InvalidDicomError is a
# subclass of Exception only, so it is matched by name below).
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    RuntimeError,
    EOFError,
    KeyError,
    IndexError,
    NotImplementedError,
)


@contextmanager
def user_errors_from(path: str | Path, what: str = "") -> Iterator[None]:
    """Turn exceptions raised while reading a user's file into :class:`UserError`.

    Args:
        path: The file or folder being read; it leads the message.
        what: Optional context (e.g. ``"reading the scan"``).

    Yields:
        Nothing; use as ``with user_errors_from(path): read_volume(path)``.

    Raises:
        UserError: ``"<path>: <problem>"`` in place of the reader's exception.
    """
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file or directory") from exc
    except _INPUT_ERRORS as exc:
        prefix = f"{path}: {what}: " if what else f"{path}: "
        raise UserError(prefix + _strip_path(one_line(exc), path)) from exc
    except Exception as exc:  # third-party reader errors (pydicom, zarr, nibabel)
        if type(exc).__module__.split(".")[0] in {"pydicom", "zarr", "nibabel", "numcodecs"}:
            raise UserError(f"{path}: {one_line(exc)}") from exc
        raise


def _strip_path(message: str, path: str | Path) -> str:
    # Readers often start their message with the path already; avoid "p: p: problem".
    for prefix in (f"{path}: ", f"'{path}': ", f"{Path(path).name}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def call_with_user_errors(func: Callable[[], T], path: str | Path, what: str = "") -> T:
    """Call ``func()`` under :func:`user_errors_from`.

    Args:
        func: A zero-argument callable (e.g. ``lambda: read_volume(p)``).
        path: The file it reads.
        what: Optional context for the message.

    Returns:
        ``func()``'s result.

    Raises:
        UserError: As :func:`user_errors_from`.
    """
    with user_errors_from(path, what):
        return func()
