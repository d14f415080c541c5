"""``retrieval``: lesion-to-follow-up patch retrieval on frozen features (paper section 4.4).

For each pair, the patches of the query scan inside the lesion mask (a majority of the
patch's voxels; any overlap when the lesion is smaller than a patch) are averaged and
every patch of the follow-up scan is ranked by cosine similarity
(:func:`~tapct_eval.retrieval.retrieve_patches`). A follow-up patch is a true match when
it overlaps the lesion's follow-up mask. Per pair: the rank of the first true match
(top-k hit when ``<= k``) and the average precision of the whole ranking (scikit-learn
``average_precision_score``); reported as hit rates and the mean average precision.

No head is trained, so seeds play no part: mean +- std are over the query pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from sklearn.metrics import average_precision_score

from ..figures import plot_retrieval_heatmap
from ..metrics import summarize_folds
from ..retrieval import masked_patch_features, retrieve_patches
from ..task import CaseError, ParseContext, RetrievalCase, parse_label_map
from .base import BenchmarkResults, CasePrediction, KindContext, TaskKind, patch_mask

__all__ = ["RETRIEVAL", "rank_and_average_precision"]


def rank_and_average_precision(
    similarity: torch.Tensor, relevant: torch.Tensor
) -> tuple[int, float]:
    """Rank of the first true match and the average precision of a similarity ranking.

    Args:
        similarity: ``(t, h, w)`` scores of every target patch (higher is better).
        relevant: ``(t, h, w)`` bool, True at the true matches (at least one).

    Returns:
        ``(rank, ap)``: 1-based rank of the best-scored true match (ties broken
        pessimistically: every patch scoring at least as high counts before it) and
        scikit-learn's ``average_precision_score``.

    Raises:
        ValueError: on a shape mismatch or no true match.
    """
    if similarity.shape != relevant.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and relevant {tuple(relevant.shape)} differ"
        )
    rel = relevant.flatten().bool().numpy()
    if not rel.any():
        raise ValueError("no true match among the target patches")
    sim = similarity.flatten().double().numpy()
    best = sim[rel].max()
    rank = int((sim >= best).sum())
    return rank, float(average_precision_score(rel, sim))


def parse(raw: Mapping[str, Any], ctx: ParseContext) -> dict[str, Any]:
    """The retrieval keys: ``pairs``, ``label_value``, ``top_k``, ``label_map``."""
    pairs = ctx.require(raw, "pairs", "retrieval")
    if not isinstance(pairs, list) or not pairs:
        raise ctx.error("pairs", f"must be a non-empty list, got {pairs!r}")
    keys = ("query", "query_label", "target", "target_label")
    cases = []
    for i, item in enumerate(pairs):
        if not isinstance(item, Mapping) or not set(keys) <= set(item):
            raise ctx.error(f"pairs[{i}]", f"needs {', '.join(keys)}, got {item!r}")
        paths = [ctx.base / str(item[k]) for k in keys]
        for p, k in zip(paths, keys, strict=True):
            if not p.exists():
                raise ctx.error(f"pairs[{i}].{k}", f"{p} does not exist")
        cases.append(RetrievalCase(str(item.get("id", ctx.case_id(paths[0]))), *paths))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ctx.error("pairs", f"case ids must be unique, got {ids} (set 'id')")
    value = raw.get("label_value")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ctx.error("label_value", f"must be a positive int or null, got {value!r}")
    top_k = raw.get("top_k", [1, 5, 10])
    if (
        not isinstance(top_k, list)
        or not top_k
        or not all(isinstance(k, int) and k >= 1 for k in top_k)
    ):
        raise ctx.error("top_k", f"must be a list of positive ints, got {top_k!r}")
    return {
        "train": (),
        "test": tuple(cases),
        "label_value": value,
        "top_k": tuple(sorted(set(top_k))),
        "label_map": parse_label_map(raw, ctx),
    }


def run(ctx: KindContext) -> BenchmarkResults:
    """Retrieve each pair's lesion in its follow-up; hit rates at ``top_k`` and mAP.

    Returns:
        :class:`BenchmarkResults` with metric ``map`` (over pairs, ``per_seed`` empty)
        and ``hit@k`` in ``per_class``.

    Raises:
        CaseError: when a query or follow-up mask holds no lesion voxel.
    """
    task, patch = ctx.task, ctx.patch_size
    aps: list[float] = []
    hits: dict[int, list[float]] = {k: [] for k in task.top_k}
    predictions: list[CasePrediction] = []
    for n, case in enumerate(task.test):
        query = ctx.scan(f"{case.case_id}.query", case.image, case.label)
        target = ctx.scan(f"{case.case_id}.target", case.target_image, case.target_label)
        assert query.label is not None and target.label is not None
        q_grid = tuple(query.patch_features.shape[1:])
        mask = patch_mask(query.label, task.label_value, patch, q_grid)
        if not bool(mask.any()):
            mask = patch_mask(query.label, task.label_value, patch, q_grid, threshold=0)
        if not bool(mask.any()):
            raise CaseError(f"{case.label}: the query mask holds no lesion voxel")
        relevant = patch_mask(
            target.label,
            task.label_value,
            patch,
            tuple(target.patch_features.shape[1:]),
            threshold=0,
        )
        if not bool(relevant.any()):
            raise CaseError(f"{case.target_label}: the follow-up mask holds no lesion voxel")
        hit = retrieve_patches(
            masked_patch_features(query.patch_features, mask),
            target.patch_features,
            k=max(task.top_k),
        )
        rank, ap = rank_and_average_precision(hit.similarity, relevant)
        aps.append(ap)
        for k in task.top_k:
            hits[k].append(float(rank <= k))
        predictions.append(
            CasePrediction(None, case.case_id, (ap, float(rank)), (float(relevant.sum()),))
        )
        if ctx.figures and n == 0:
            figure = plot_retrieval_heatmap(
                target.image,
                hit.similarity,
                ctx.figure_path("retrieval"),
                top_positions=hit.positions,
                patch_size=patch,
                title=f"{case.case_id}: query lesion -> follow-up (AP {ap:.2f}, rank {rank})",
            )
    files = {"retrieval": figure} if ctx.figures else {}
    return BenchmarkResults(
        task.name,
        ctx.model_name,
        "map",
        summarize_folds(aps),
        (),
        {f"hit@{k}": summarize_folds(v) for k, v in hits.items()},
        files,
        kind="retrieval",
        predictions=tuple(predictions),
    )


RETRIEVAL = TaskKind(
    parse=parse,
    run=run,
    accumulation_steps=1,
    lr=1e-3,
    summary="lesion -> follow-up patch retrieval (no head); top-k hit rate and mAP",
    keys=("pairs", "label_value", "top_k", "label_map"),
)
