"""Activation memory kept for backward, measured without running the model.

``saved_tensor_bytes`` counts what autograd saves for backward during a call (via
``torch.autograd.graph.saved_tensors_hooks``), once per storage (views and tensors
saved by several ops count once). ``activation_bytes_per_sample`` runs a training
forward of a :class:`VisionTransformer3d` on multi-crop inputs under
``torch._subclasses.FakeTensorMode``: every op is dispatched (autocast, SDPA backend
choice, checkpointing, subset drop path) but no data is computed or allocated, so the
paper's TAP-B-3D at full crops is measured on a laptop CPU in seconds. It measures at
two batch sizes and reports the slope, which removes per-model constants (e.g. the
bfloat16 weight copies autocast keeps for backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["activation_bytes_per_sample", "saved_tensor_bytes"]


def saved_tensor_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Call ``fn`` and count the bytes autograd saves for backward, per unique storage.

    Args:
        fn: Any callable (a forward with autograd recording).
        *args: Positional arguments of ``fn``.
        **kwargs: Keyword arguments of ``fn``.

    Returns:
        ``(fn's result, bytes)``; the bytes are the sum of ``nbytes`` of every distinct
        storage a saved tensor lives in (parameters saved by an op count too).
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st._cdata] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args, **kwargs)
    return result, sum(storages.values())


def activation_bytes_per_sample(
    model: torch.nn.Module,
    crops: Sequence[tuple[int, Sequence[int]]],
    *,
    autocast_dtype: torch.dtype | None = torch.bfloat16,
    mask_ratio: float = 0.0,
    batch_sizes: tuple[int, int] = (10, 20),
) -> float:
    """Bytes a training forward of ``model`` keeps for backward, per sample.

    The model is put in training mode (drop path active) and run with
    ``forward_features_list`` over one batch per crop kind under ``FakeTensorMode``;
    its grad-checkpointing setting is used as it is. The result is
    ``(bytes(B2) - bytes(B1)) / (B2 - B1)`` for ``batch_sizes = (B1, B2)``; choose sizes
    where ``B * (1 - drop_path_rate)`` is an integer to see the rate exactly (subset drop
    path keeps ``int(B (1 - p))`` samples).

    Args:
        model: A :class:`~tapct_vit3d.VisionTransformer3d` (real CPU parameters).
        crops: ``(crops_per_sample, (D, H, W))`` per crop kind, e.g. the paper's
            ``[(2, (12, 224, 224)), (8, (12, 96, 96))]``; the first kind gets the iBOT
            masks (global crops).
        autocast_dtype: CPU autocast dtype (bfloat16) or None for the parameters' dtype.
        mask_ratio: fraction of the first kind's patches replaced by the mask token.
        batch_sizes: the two batch sizes ``(B1, B2)``, ``B1 < B2``.

    Returns:
        Bytes per sample (float).

    Raises:
        ValueError: bad batch sizes or an empty ``crops``.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    b1, b2 = batch_sizes
    if not 0 < b1 < b2:
        raise ValueError(f"batch_sizes must be 0 < B1 < B2, got {batch_sizes}")
    if not crops:
        raise ValueError("crops must name at least one crop kind")
    was_training = model.training
    model.train()
    patch = getattr(model, "patch_size", (1, 1, 1))
    try:
        totals = []
        for b in (b1, b2):
            with FakeTensorMode(allow_non_fake_inputs=True):
                xs, masks = [], []
                for i, (n, size) in enumerate(crops):
                    xs.append(torch.empty(n * b, 1, *size))
                    n_tokens = 1
                    for s, p in zip(size, patch):
                        n_tokens *= s // p
                    m = torch.zeros(n * b, n_tokens, dtype=torch.bool)
                    m[:, : int(n_tokens * mask_ratio)] = True
                    masks.append(m if i == 0 else None)
                enabled = autocast_dtype is not None
                with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=enabled):
                    _, n_bytes = saved_tensor_bytes(
                        model.forward_features_list,  # type: ignore[arg-type]
                        xs,
                        masks,
                    )
            totals.append(n_bytes)
    finally:
        model.train(was_training)
    return (totals[1] - totals[0]) / (b2 - b1)
