"""The records every task kind shares: the registry entry, a loaded scan, the run context
and the typed results."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ..metrics import FoldSummary
from ..task import BenchmarkTask, ParseContext

__all__ = [
    "BenchmarkResults",
    "CasePrediction",
    "KindContext",
    "Scan",
    "TaskKind",
    "Ticker",
    "file_name",
    "patch_mask",
]


def file_name(name: str) -> str:
    """A model name usable in file names (``timm:vit_s`` -> ``timm_vit_s``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class Ticker:
    """Counts units of work and reports ``progress(done, total, what)`` after each.

    A unit is the features of one scan or one optimizer step of one seed's head; a kind
    whose head has no step hook reports a seed's steps at once (:meth:`seed_done`).

    Args:
        progress: ``(done, total, what)`` callback, or None (count silently).
        total: Expected units (raised when more are reported).
        steps: Optimizer steps per seed.
    """

    def __init__(
        self, progress: Callable[[int, int, str], None] | None, total: int, steps: int
    ) -> None:
        self.progress, self.total, self.steps, self.done = progress, total, steps, 0
        self._seed_steps: dict[int, int] = {}

    def __call__(self, what: str, n: int = 1) -> None:
        """Report ``n`` more units done."""
        self.done += n
        self.total = max(self.total, self.done)
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def steps_of(self, seed: int) -> Callable[[int], None]:
        """The ``on_step`` hook of one seed's head training (one unit per step)."""

        def on_step(step: int) -> None:
            self._seed_steps[seed] = self._seed_steps.get(seed, 0) + 1
            self(f"seed {seed}: step {step}/{self.steps}")

        return on_step

    def seed_done(self, seed: int) -> None:
        """Report whatever steps of ``seed`` were not reported step by step."""
        left = self.steps - self._seed_steps.get(seed, 0)
        self._seed_steps[seed] = self.steps
        if left > 0:
            self(f"seed {seed}: {self.steps} steps", n=left)


@attrs.frozen(eq=False)
class Scan:
    """One loaded, preprocessed scan with its frozen features.

    Attributes:
        scan_id: the name its features are cached under.
        image: ``(1, D, H, W)`` float32 normalised volume (after ``preprocess``).
        label: ``(D, H, W)`` int64 label map on the same grid (label map applied) or None.
        patch_features: ``(E, t, h, w)`` float32 dense patch features.
        cls_tokens: ``(N, E)`` float32 cls token of each sliding window.
        spacing: ``(d, h, w)`` voxel size in mm of ``image``'s grid, or None when unknown.
    """

    scan_id: str
    image: torch.Tensor
    label: torch.Tensor | None
    patch_features: torch.Tensor
    cls_tokens: torch.Tensor
    spacing: tuple[float, float, float] | None


@attrs.frozen(eq=False)
class KindContext:
    """What a kind's run function gets from the runner.

    Attributes:
        task: the validated task.
        model_name: names the results and the figures.
        seeds: one head per seed.
        device: where heads train.
        output_dir: results folder (figures go to ``output_dir/figures``).
        figures: write PNG figures.
        patch_size: ``(pd, ph, pw)`` voxel stride of the patch features.
        scan: ``(scan_id, image_path, label_path | None) -> Scan``; loads, preprocesses
            and extracts (cached) features.
        ticker: progress of the run (:class:`Ticker`).
    """

    task: BenchmarkTask
    model_name: str
    seeds: tuple[int, ...]
    device: str
    output_dir: Path
    figures: bool
    patch_size: tuple[int, int, int]
    scan: Callable[[str, Path, Path | None], Scan]
    ticker: Ticker = attrs.field(factory=lambda: Ticker(None, 0, 0))

    def steps_of(self, seed: int) -> Callable[[int], None]:
        """The ``on_step`` progress hook of ``seed``'s head (see :class:`Ticker`)."""
        return self.ticker.steps_of(seed)

    def seed_done(self, seed: int) -> None:
        """Report the end of ``seed``'s head training to the progress."""
        self.ticker.seed_done(seed)

    def figure_path(self, suffix: str) -> Path:
        """``output_dir/figures/<task>_<model>_<suffix>.png``."""
        model = file_name(self.model_name)
        return self.output_dir / "figures" / f"{self.task.name}_{model}_{suffix}.png"


@attrs.frozen
class CasePrediction:
    """A head's output for one test case (written to ``predictions.csv``).

    Attributes:
        seed: the head's seed (None for retrieval, which trains nothing).
        case_id: the case.
        prediction: the kind's prediction (classification: the head's scores, one per
            output: sigmoid (binary, multi-label) or softmax (multi-class); regression:
            values; survival: log hazard;
            localisation: ``(z, y, x)`` mm; retrieval: ``(average precision, rank of the
            first true match)``).
        target: the truth (classification: the class id, or the 0/1 labels of a
            multi-label task; regression: values; survival: ``(time, event)``; localisation:
            ``(z, y, x)`` mm; retrieval: ``(number of true patches,)``).
    """

    seed: int | None
    case_id: str
    prediction: tuple[float, ...]
    target: tuple[float, ...]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _summary_dict(s: FoldSummary) -> dict[str, Any]:
    return {"mean": _num(s.mean), "std": _num(s.std), "n_valid": s.n_valid, "n_total": s.n_total}


@attrs.frozen
class BenchmarkResults:
    """Results of one task for one model.

    Attributes:
        task: task name.
        model: model name.
        metric: name of the main metric (``dice``, ``auc``, ``micro_auc``, ``mae``,
            ``c_index``, ``map``, ``error_mm``).
        summary: main metric over seeds (retrieval: over query pairs).
        per_seed: main metric of each seed (empty for retrieval).
        per_class: per-class (segmentation) or secondary metrics, name -> summary.
        files: written outputs (json, csv, figures).
        kind: the task kind.
        predictions: per seed and test case (empty for segmentation).
    """

    task: str
    model: str
    metric: str
    summary: FoldSummary
    per_seed: tuple[float, ...]
    per_class: dict[str, FoldSummary]
    files: dict[str, Path]
    kind: str = "segmentation"
    predictions: tuple[CasePrediction, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN written as null)."""
        return {
            "task": self.task,
            "model": self.model,
            "kind": self.kind,
            "metric": self.metric,
            **_summary_dict(self.summary),
            "per_seed": [_num(v) for v in self.per_seed],
            "per_class": {k: _summary_dict(v) for k, v in self.per_class.items()},
        }


@attrs.frozen
class TaskKind:
    """One entry of :data:`~tapct_eval.kinds.TASK_KINDS`.

    Attributes:
        parse: ``(raw task mapping, ParseContext) -> dict`` of the kind's
            :class:`~tapct_eval.task.BenchmarkTask` fields (``train``, ``test`` and its
            own keys); raises :class:`~tapct_eval.task.TaskFileError`.
        run: ``KindContext -> BenchmarkResults`` (trains one head per seed, evaluates,
            writes figures; the runner writes JSON/CSV).
        accumulation_steps: default micro-batches per step.
        lr: default learning rate.
        summary: one line for documentation and ``--help``.
        keys: the kind's own top-level task-file keys (besides
            :data:`~tapct_eval.task.COMMON_KEYS`); any other key is refused.
    """

    parse: Callable[[Mapping[str, Any], ParseContext], dict[str, Any]]
    run: Callable[[KindContext], BenchmarkResults]
    accumulation_steps: int
    lr: float
    summary: str
    keys: tuple[str, ...]


def patch_mask(
    label: torch.Tensor,
    cls: int | None,
    patch: tuple[int, int, int],
    grid: tuple[int, ...],
    *,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Which patches of a feature grid a structure covers.

    Args:
        label: ``(D, H, W)`` int label map.
        cls: the structure's id; None for any non-zero id.
        patch: ``(pd, ph, pw)`` voxel stride of the features.
        grid: ``(t, h, w)`` feature grid (the volume is zero-padded up to it).
        threshold: least fraction of a patch's voxels inside the structure; 0.5 is a
            majority, 0 any overlap (strictly more than 0).

    Returns:
        ``(t, h, w)`` bool.
    """
    one = (label > 0 if cls is None else label == cls).float()[None, None]
    full = [g * p for g, p in zip(grid, patch, strict=True)]
    one = F.pad(one, [x for d in (2, 1, 0) for x in (0, full[d] - one.shape[2 + d])])
    frac = F.avg_pool3d(one, kernel_size=tuple(patch))[0, 0]
    return frac > 0 if threshold == 0 else frac >= threshold
