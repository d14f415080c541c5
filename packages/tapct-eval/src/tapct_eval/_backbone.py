"""The backbone interface the evaluation needs, and nothing more.

A backbone is any ``nn.Module`` with ``.patch_size`` (an int or 3 ints), ``.embed_dim`` and
either ``forward_features(x) -> dict`` with ``x_norm_patchtokens (B, N, E)`` (and optionally
``x_norm_clstoken (B, E)``), as DINOv2 and tapct_vit3d return, or DINOv2's
``get_intermediate_layers(x, n=1, reshape=True, return_class_token=True, norm=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange
from torch import nn


def backbone_patch_size(model: nn.Module) -> tuple[int, int, int]:
    """Return ``model.patch_size`` as 3 ints ``(pd, ph, pw)``.

    Raises:
        TypeError: when the model has no usable ``patch_size``.
    """
    patch = getattr(model, "patch_size", None)
    if isinstance(patch, int):
        return (patch, patch, patch)
    if (
        isinstance(patch, tuple | list)
        and len(patch) == 3
        and all(isinstance(p, int) for p in patch)
    ):
        return (int(patch[0]), int(patch[1]), int(patch[2]))
    raise TypeError(
        f"the backbone needs a .patch_size of 3 ints (pd, ph, pw), got {patch!r} "
        f"on {type(model).__name__}"
    )


def backbone_embed_dim(model: nn.Module) -> int:
    """Return ``model.embed_dim`` (E).

    Raises:
        TypeError: when the model has no integer ``embed_dim``.
    """
    dim = getattr(model, "embed_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise TypeError(f"the backbone needs a positive int .embed_dim, got {dim!r}")
    return dim


def backbone_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a backbone on windows and return dense patch features and cls tokens.

    Args:
        model: the backbone (see module docstring).
        x: windows ``(B, C, d, h, w)``, each side a multiple of the patch size.

    Returns:
        ``(patch_features (B, E, t, h, w), cls (B, E))``; a backbone without a cls token
        gets the mean of its patch features as ``cls``.

    Raises:
        TypeError: when the model offers neither interface, or returns unexpected shapes.
    """
    pd, ph, pw = backbone_patch_size(model)
    t, h, w = x.shape[2] // pd, x.shape[3] // ph, x.shape[4] // pw
    forward_features = getattr(model, "forward_features", None)
    if forward_features is not None:
        out = forward_features(x)
        if isinstance(out, Mapping) and "x_norm_patchtokens" in out:
            tokens = out["x_norm_patchtokens"]  # (B, N, E)
            if tokens.ndim != 3 or tokens.shape[1] != t * h * w:
                raise TypeError(
                    f"x_norm_patchtokens has shape {tuple(tokens.shape)}, expected "
                    f"(B, {t * h * w}, E) for the grid {(t, h, w)}"
                )
            patch = rearrange(tokens, "b (t h w) e -> b e t h w", t=t, h=h, w=w)
            cls = out.get("x_norm_clstoken")
            if cls is None:
                cls = patch.mean(dim=(2, 3, 4))
            return patch, cls
    get_layers = getattr(model, "get_intermediate_layers", None)
    if get_layers is not None:
        ((patch, cls),) = get_layers(x, n=1, reshape=True, return_class_token=True, norm=True)
        if patch.shape[2:] != (t, h, w):
            raise TypeError(f"get_intermediate_layers gave {tuple(patch.shape)}, grid {(t, h, w)}")
        return patch, cls
    raise TypeError(
        f"{type(model).__name__} has neither forward_features(x) -> dict with "
        "'x_norm_patchtokens' nor get_intermediate_layers(x, ...)"
    )
