"""The task kinds of the benchmark: one registry, one parse/run pair per kind.

VoxelFM's (2026) kinds of frozen-CT-feature evaluation minus report generation:
segmentation, classification, regression, survival, retrieval and localisation. Each is a
:class:`~tapct_eval.kinds.base.TaskKind` in :data:`TASK_KINDS`; the runner looks the kind
up by the task file's ``kind`` and calls its ``run`` with a
:class:`~tapct_eval.kinds.base.KindContext`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import BenchmarkResults, CasePrediction, KindContext, Scan, TaskKind
from .classification import CLASSIFICATION
from .localisation import LOCALISATION
from .regression import REGRESSION
from .retrieval import RETRIEVAL
from .segmentation import SEGMENTATION
from .survival import SURVIVAL

__all__ = ["TASK_KINDS", "BenchmarkResults", "CasePrediction", "KindContext", "Scan", "TaskKind"]

TASK_KINDS: Mapping[str, TaskKind] = MappingProxyType(
    {
        "segmentation": SEGMENTATION,
        "classification": CLASSIFICATION,
        "regression": REGRESSION,
        "survival": SURVIVAL,
        "retrieval": RETRIEVAL,
        "localisation": LOCALISATION,
    }
)
"""Kind name -> :class:`TaskKind` (read-only)."""
