"""Private helpers to normalise checkpoint key layouts before loading."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

# Wrappers that prefix every key (DDP, torch.compile) and containers that hold a backbone.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.", "model.", "encoder.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_DROPPED = ("head.", "fc_norm.")
_UNSUPPORTED = (re.compile(r"\.mlp\.w12\."), re.compile(r"\.mlp\.w3\."),
                re.compile(r"\.attn\.(q_norm|k_norm)\."), re.compile(r"^norm_pre\."))


def normalize_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a copy of ``state_dict`` keyed by bare DINOv2 backbone names.

    Strips DDP/compile wrappers, selects a backbone inside a training checkpoint
    (teacher preferred, as DINOv2 evaluates the teacher), un-chunks DINOv2's
    ``blocks.{chunk}.{i}`` layout and drops classification heads.

    Raises:
        ValueError: For layouts this ViT cannot represent (SwiGLU MLP, qk-norm, pre-norm).
    """
    items = dict(state_dict.items())
    for prefix in _WRAPPER_PREFIXES:
        items = {k.replace(prefix, ""): v for k, v in items.items()}
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in items):
            items = {k[len(prefix):]: v for k, v in items.items() if k.startswith(prefix)}
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in items.items():
        if key.startswith(_DROPPED):
            continue
        for pattern in _UNSUPPORTED:
            if pattern.search(key):
                raise ValueError(
                    f"checkpoint key {key!r} needs a layer this ViT does not have "
                    "(SwiGLU MLP, qk-norm or pre-norm are not supported)"
                )
        out[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = value
    return out


def square_side(n: int) -> int | None:
    """Return ``s`` with ``s * s == n``, or None."""
    if n < 1:
        return None
    s = math.isqrt(n)
    return s if s * s == n else None


def check_against_model(state_dict: Mapping[str, torch.Tensor],
                        reference: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in sorted(set(reference) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(reference[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            "checkpoint does not match the model: "
            f"missing={missing[:10]}, unexpected={unexpected[:10]}, shape mismatches={shapes[:10]}"
        )
