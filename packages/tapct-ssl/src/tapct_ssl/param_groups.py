"""Optimizer parameter groups: layer-wise lr decay, weight-decay exclusions, frozen head.

Reference: DINOv2, dinov2/utils/param_groups.py (``get_vit_lr_decay_rate``,
``get_params_groups_with_decay``, ``fuse_params_groups``).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from tapct_ssl._names import strip_wrapper_prefixes

#: Name components of embedding parameters: layer 0 and no weight decay.
TOKEN_NAMES: frozenset[str] = frozenset({"cls_token", "register_tokens", "mask_token", "pos_embed"})

#: Keys of each param group read by ``apply_schedules`` (the one place they are named).
LR_MULTIPLIER = "lr_multiplier"
WD_MULTIPLIER = "wd_multiplier"
IS_LAST_LAYER = "is_last_layer"

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:(\d+)\.)?")


def _block_index(name: str) -> int | None:
    """Block index from ``blocks.{i}.`` (or DINOv2's chunked ``blocks.{chunk}.{i}.``)."""
    match = _BLOCK.search(name)
    if match is None:
        return None
    return int(match.group(2) if match.group(2) is not None else match.group(1))


def _layer_id(name: str, n_blocks: int) -> int:
    parts = name.split(".")
    if "patch_embed" in parts or TOKEN_NAMES.intersection(parts):
        return 0
    index = _block_index(name)
    return n_blocks + 1 if index is None else index + 1


def _no_weight_decay(name: str, ndim: int) -> bool:
    parts = name.split(".")
    return (
        ndim <= 1
        or name.endswith(".bias")
        or any("norm" in p for p in parts if p != "parametrizations")
        or "gamma" in parts
        or bool(TOKEN_NAMES.intersection(parts))
    )


def get_params_groups(
    model: nn.Module, *, layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict[str, Any]]:
    """Fused AdamW parameter groups with DINOv2's multipliers.

    For each trainable parameter (``requires_grad``; the frozen teacher is skipped), after
    removing wrapper prefixes (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``,
    ``_checkpoint_wrapped_module.``), so bare, DDP-, FSDP(``use_orig_params=True``)- and
    compile-wrapped models give the same groups:

    * layer id: 0 for ``patch_embed`` and the tokens (``cls_token``,
      ``register_tokens``, ``mask_token``, ``pos_embed``); ``i + 1`` for
      ``blocks.{i}.``; ``L + 1`` for everything else (final norm, heads), where ``L`` is
      the number of distinct block indices found.
    * ``lr_multiplier = layerwise_decay ** (L + 1 - layer_id)``, times
      ``patch_embed_lr_mult`` for ``patch_embed`` parameters. With no ``blocks.{i}``
      parameter at all every rate is 1 (DINOv2 does the same).
    * ``wd_multiplier = 0`` for biases, 1-D parameters, names with ``norm`` (norm1, norm2,
      norm), LayerScale ``gamma`` and the tokens; 1 otherwise. DINOv2 itself decays the
      tokens and the positional embedding; this is the deliberate difference.
    * ``is_last_layer``: the name contains ``last_layer`` (the heads' prototypes, whose
      lr is zero during the first epoch).

    Parameters with equal ``(lr_multiplier, wd_multiplier, is_last_layer)`` are fused.

    Args:
        model: any module, e.g. a ``DINOv2Objective`` or a backbone, wrapped or not.
        layerwise_decay: per-block lr decay (paper: 0.9), in (0, 1].
        patch_embed_lr_mult: extra lr factor of the patch embedding (DINOv2: 0.2), > 0.

    Returns:
        A list of dicts with keys ``params`` (list of tensors), ``lr_multiplier``,
        ``wd_multiplier``, ``is_last_layer``, ``name`` (a readable group id) and
        ``param_names`` (bare names, for debugging), ordered by first appearance.
        :func:`~tapct_ssl.apply_schedules` sets
        ``lr = lr * lr_multiplier * (0 if is_last_layer and frozen else 1)`` and
        ``weight_decay = wd * wd_multiplier`` every step.

    Raises:
        ValueError: ``layerwise_decay`` outside (0, 1] or ``patch_embed_lr_mult <= 0``.
    """
    if not 0.0 < layerwise_decay <= 1.0:
        raise ValueError(f"layerwise_decay must be in (0, 1], got {layerwise_decay}")
    if not patch_embed_lr_mult > 0.0:
        raise ValueError(f"patch_embed_lr_mult must be > 0, got {patch_embed_lr_mult}")
    named = [(strip_wrapper_prefixes(n), p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = {i for n, _ in named if (i := _block_index(n)) is not None}
    n_blocks = len(blocks)
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, param in named:
        lr_mult = layerwise_decay ** (n_blocks + 1 - _layer_id(name, n_blocks)) if n_blocks else 1.0
        if "patch_embed" in name.split("."):
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if _no_weight_decay(name, param.ndim) else 1.0
        last = "last_layer" in name.split(".")
        key = (lr_mult, wd_mult, last)
        if key not in groups:
            groups[key] = {
                "params": [],
                LR_MULTIPLIER: lr_mult,
                WD_MULTIPLIER: wd_mult,
                IS_LAST_LAYER: last,
                "name": f"lr_mult={lr_mult:.6g}_wd_mult={wd_mult:g}_last_layer={last}",
                "param_names": [],
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())
