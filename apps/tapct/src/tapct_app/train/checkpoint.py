"""Training checkpoints: tensors and plain values only, written atomically, the last K kept.

A checkpoint is a dict that ``torch.load(path, weights_only=True)`` reads back, so loading
never unpickles arbitrary objects (PITFALLS.md "Checkpoints"). It is first written to a
temporary file in the same folder, flushed and fsynced, then renamed over its final name:
a crash leaves either the previous set of checkpoints or the new one, never a torn file.
Files are named ``checkpoint-<iteration:08d>.pt``; after each save only the newest
``keep`` remain.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from tapct_data.faults import fault_point

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "tapct-pretrain-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d{8,})\.pt$")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Return the checkpoints in ``folder`` sorted by iteration (oldest first).

    Args:
        folder: The checkpoint directory (may not exist).

    Returns:
        Paths of ``checkpoint-<iteration>.pt`` files; temporary files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Return the newest checkpoint in ``folder``, or None when there is none.

    Args:
        folder: The checkpoint directory.

    Returns:
        The path with the highest iteration, or None.
    """
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], folder: str | Path, iteration: int, keep: int) -> Path:
    """Write ``state`` atomically as ``checkpoint-<iteration>.pt`` and prune old ones.

    Args:
        state: Tensors, dicts, lists, tuples, numbers, strings, bools and None only.
        folder: The checkpoint directory (created if missing).
        iteration: Number of completed iterations; names the file.
        keep: How many of the newest checkpoints to keep (>= 1).

    Returns:
        The written file's path.

    Raises:
        ValueError: If ``keep`` < 1 or ``iteration`` < 0.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{iteration:08d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        fault_point("checkpoint.mid_write")
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point("checkpoint.after_write")
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Args:
        path: A file written by :func:`save_checkpoint`.
        map_location: Where to put the tensors.

    Returns:
        The state dict.

    Raises:
        ValueError: If the file is not a tapct pretraining checkpoint or cannot be read.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a tapct pretraining checkpoint ({CHECKPOINT_FORMAT})")
    return state


def latest_intact_checkpoint(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path | None, dict[str, Any] | None, list[tuple[Path, str]]]:
    """Load the newest checkpoint of ``folder`` that reads back, skipping damaged ones.

    A checkpoint is damaged when :func:`load_checkpoint` rejects it (truncated, overwritten,
    not a tapct checkpoint); the next older one is tried.

    Args:
        folder: The checkpoint directory (may not exist).
        map_location: Where to put the tensors.

    Returns:
        ``(path, state, damaged)``: the newest intact checkpoint and its state (both None
        when there is no checkpoint at all) and ``(path, reason)`` per damaged newer
        file, newest first.

    Raises:
        ValueError: Checkpoints exist but none reads back (the first reason).
    """
    damaged: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location), damaged
        except ValueError as exc:
            damaged.append((path, str(exc)))
    if damaged:
        raise ValueError(f"no intact checkpoint in {folder}: {damaged[0][1]}")
    return None, None, damaged


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporary files of interrupted :func:`save_checkpoint` calls.

    Call it only while no other process writes ``folder`` (the run's lock is held).

    Args:
        folder: The checkpoint directory (may not exist).
    """
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".checkpoint-*.tmp"):
            tmp.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """Capture the Python, torch CPU and CUDA RNG states as checkpoint-safe values.

    Returns:
        ``{"python": tuple, "torch": uint8 tensor, "cuda": list of uint8 tensors}``.
    """
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA only when the count matches).

    Args:
        state: The captured states.
    """
    py = state.get("python")
    if py is not None:
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
