"""Checkpoint key handling: find the backbone inside a checkpoint, normalise its names.

This module knows nothing of the model class: it works on names. The backbone of a
checkpoint is found by its parameter names, not by a list of known wrappers: the prefix
under which most of the model's own parameter names sit (``""``, ``module.``, ``vit.``,
``tapct.``, ``model.encoder.``, ``teacher.backbone.``, ...) is the backbone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = [
    "LoadReport",
    "ViTLike",
    "check_against_model",
    "find_prefix",
    "normalize_keys",
    "select_backbone",
    "square_side",
]

# torch.compile's wrapper segment; DINOv2's chunked blocks ``blocks.{chunk}.{i}.``.
_ORIG_MOD = re.compile(r"(^|\.)_orig_mod\.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
#: Heads of classifiers and timm's pooling norm: never part of the backbone.
HEAD_PREFIXES = ("head.", "fc_norm.")
_UNSUPPORTED = (re.compile(r"\.mlp\.w12\."), re.compile(r"\.mlp\.w3\."),
                re.compile(r"\.attn\.(q_norm|k_norm)\."), re.compile(r"^norm_pre\."))
#: Names a 2D (timm) checkpoint may use for things our model calls otherwise.
_EXTRA_KNOWN = ("reg_token", "register_tokens", "mask_token", "cls_token", "pos_embed")


class ViTLike(Protocol):
    """What the converters read from a target model (``VisionTransformer3d`` has it all)."""

    patch_size: tuple[int, int, int]
    grid_size: tuple[int, int, int]
    in_chans: int
    num_register_tokens: int

    def state_dict(self) -> dict[str, Any]:
        """Tensors by name."""
        ...


@dataclass
class LoadReport:
    """What loading a checkpoint into a model did, parameter by parameter.

    Attributes:
        source: Where the weights came from (a path, a hub id, or ``"state dict"``).
        prefix: The key prefix the backbone sat under in the checkpoint (``""``: none).
        layout: ``"3d"`` (a ``VisionTransformer3d``/DINOv2-3D checkpoint) or ``"2d"``
            (a 2D DINOv2/timm ViT, inflated).
        loaded: Model parameter names taken from the checkpoint.
        missing: Model parameter names the checkpoint does not have (they keep the
            model's own initialisation: new registers, a mask token, ...).
        unexpected: Checkpoint names (after the prefix) the model has no use for
            (classification heads, blocks beyond the model's depth, ...).
        conversions: One line per converted tensor (kernel inflated or resampled,
            positional embedding resampled, channels summed, ...).
    """

    source: str
    prefix: str = ""
    layout: str = "3d"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line (for a log).

        Returns:
            Lines naming the source, the prefix, the counts and every missing and
            unexpected key by name, and every conversion.
        """
        out = [
            f"weights from {self.source} ({self.layout} layout, prefix "
            f"{self.prefix!r}): {len(self.loaded)} tensors loaded"
        ]
        out += [f"converted: {c}" for c in self.conversions]
        if self.missing:
            out.append(f"new (not in the checkpoint, kept at init): {', '.join(self.missing)}")
        if self.unexpected:
            out.append(f"unused from the checkpoint: {', '.join(self.unexpected)}")
        return out


def _unchunk(name: str) -> str:
    return _CHUNKED_BLOCK.sub(r"blocks.\1.", name)


def find_prefix(keys: Iterable[str], known: Collection[str]) -> str | None:
    """Find the prefix under which a checkpoint holds the model's parameter names.

    Every key is split at each ``.``; the part after the split, with DINOv2's chunked
    ``blocks.{chunk}.{i}`` un-chunked, is looked up in ``known``. The prefix that covers
    the most distinct known names wins; ties go to a prefix naming the ``teacher`` (DINOv2
    evaluates the teacher, and its training checkpoints hold student and teacher), then
    to the shortest.

    Args:
        keys: Checkpoint keys, e.g. ``teacher.backbone.blocks.0.attn.qkv.weight``.
        known: The model's parameter names, e.g. ``blocks.0.attn.qkv.weight``.

    Returns:
        The prefix (``""`` for bare names, else ending with ``.``), or None when no key
        ends with a known name.
    """
    known = set(known)
    hits: dict[str, set[str]] = {}
    for key in keys:
        key = _ORIG_MOD.sub(r"\1", key)
        cuts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
        for cut in cuts:
            name = _unchunk(key[cut:])
            if name in known:
                hits.setdefault(key[:cut], set()).add(name)
    if not hits:
        return None
    return max(hits, key=lambda p: (len(hits[p]), "teacher" in p, -len(p)))


def select_backbone(
    state_dict: Mapping[str, torch.Tensor],
    known: Collection[str],
    prefix: str | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """Take the backbone's tensors out of a checkpoint and give them bare DINOv2 names.

    Args:
        state_dict: Checkpoint tensors by name (nested containers already flattened with
            ``.``).
        known: The target model's parameter names (for :func:`find_prefix`).
        prefix: The prefix to strip (e.g. ``"vit."``; ``""`` for none); None detects it.

    Returns:
        ``(tensors, prefix)``: the keys that started with the prefix, stripped of it and
        of ``_orig_mod.`` segments, with chunked blocks un-chunked.

    Raises:
        ValueError: No key ends with a name of the model (the message shows some keys),
            an explicit prefix no key starts with, or a layer this ViT cannot represent
            (SwiGLU MLP, qk-norm, pre-norm).
    """
    items = {_ORIG_MOD.sub(r"\1", k): v for k, v in state_dict.items()}
    if prefix is None:
        found = find_prefix(items, known)
        if found is None:
            raise ValueError(
                "no key of the checkpoint ends with a parameter name of the model "
                f"(e.g. 'blocks.0.attn.qkv.weight'); its keys start with {sorted(items)[:6]}"
            )
        prefix = found
    elif not any(k.startswith(prefix) for k in items):
        raise ValueError(
            f"no key of the checkpoint starts with prefix {prefix!r}; its keys start with "
            f"{sorted(items)[:6]}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in items.items():
        if not key.startswith(prefix):
            continue
        name = _unchunk(key[len(prefix):])
        for pattern in _UNSUPPORTED:
            if pattern.search(name):
                raise ValueError(
                    f"checkpoint key {key!r} needs a layer this ViT does not have "
                    "(SwiGLU MLP, qk-norm or pre-norm are not supported)"
                )
        out[name] = value
    return out, prefix


def normalize_keys(
    state_dict: Mapping[str, torch.Tensor],
    known: Collection[str] = (),
    prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Bare DINOv2 backbone names of a checkpoint, heads dropped.

    Args:
        state_dict: Checkpoint tensors by name.
        known: The target model's parameter names (a few generic DINOv2 names,
            ``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``, ..., are added).
        prefix: Explicit prefix, or None to detect it.

    Returns:
        Tensors by bare name, without classification heads (``head.``, ``fc_norm.``).

    Raises:
        ValueError: As :func:`select_backbone`.
    """
    known = {*known, *_EXTRA_KNOWN, "patch_embed.proj.weight", "norm.weight",
             "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight"}
    sd, _ = select_backbone(state_dict, known, prefix)
    return {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}


def known_names(model: ViTLike) -> set[str]:
    """The names :func:`find_prefix` looks for: the model's and 2D aliases."""
    return {*model.state_dict(), *_EXTRA_KNOWN}


def square_side(n: int) -> int | None:
    """Return ``s`` with ``s * s == n``, or None."""
    if n < 1:
        return None
    s = math.isqrt(n)
    return s if s * s == n else None


def check_against_model(state_dict: Mapping[str, torch.Tensor],
                        reference: Mapping[str, torch.Tensor],
                        *, allow_missing: bool = False,
                        allow_unexpected: Sequence[str] | bool = False) -> LoadReport:
    """Compare checkpoint tensors with a model's; raise on what cannot be loaded.

    Args:
        state_dict: Converted tensors by bare name.
        reference: The model's ``state_dict()``.
        allow_missing: Accept model names the checkpoint lacks (they keep their init).
        allow_unexpected: True to accept every extra checkpoint name, or a tuple of
            name prefixes to accept (e.g. heads); False accepts none.

    Returns:
        A :class:`LoadReport` (``source`` empty) with loaded, missing and unexpected
        names, sorted.

    Raises:
        ValueError: Shape mismatches (always), and missing or unexpected names that are
            not allowed; every offending name is listed.
    """
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in sorted(set(reference) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(reference[k].shape)
    ]
    if allow_unexpected is True:
        bad_unexpected: list[str] = []
    else:
        allowed = tuple(allow_unexpected) if allow_unexpected else ()
        bad_unexpected = [k for k in unexpected if not (allowed and k.startswith(allowed))]
    bad_missing = [] if allow_missing else missing
    if bad_missing or bad_unexpected or shapes:
        raise ValueError(
            "checkpoint does not match the model: "
            f"missing={bad_missing}, unexpected={bad_unexpected}, shape mismatches={shapes}"
        )
    loaded = sorted(set(reference) & set(state_dict))
    return LoadReport(source="", loaded=loaded, missing=missing, unexpected=unexpected)
