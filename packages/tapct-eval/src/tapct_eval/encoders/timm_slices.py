"""Adapter (b): any timm 2D model applied slice by slice (DINOv2, Curia, a ResNet ...).

As the TAP-CT paper (section 4) evaluates 2D foundation models through eva: every axial
slice of a window is scaled to ``[0, 1]`` from a HU window, replicated to the model's
channels and normalised with its mean/std (ImageNet's for natural-image models), at the
model's input size (the benchmark resizes each slice to it before windowing); the
model's ``forward_features`` gives patch tokens (ViTs: the prefix tokens dropped, the
rest reshaped to the ``(gh, gw)`` grid) or a feature map (CNNs), and the slices are
stacked along depth. The stride is ``(1, ph, pw)`` in the resized space.

timm is imported only inside :func:`create_timm_encoder` (the ``tapct-eval[timm]`` extra);
:class:`TimmSliceEncoder` itself takes any model object with timm's interface.

References:
    timm ``VisionTransformer.forward_features`` and ``num_prefix_tokens``;
    kaiko eva ``eva.vision.models.wrappers.TimmModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from .base import EncoderOutput, Preprocessing, hu_window

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIMM_HU_WINDOW",
    "TimmSliceEncoder",
    "create_timm_encoder",
]

#: ImageNet channel statistics (timm ``IMAGENET_DEFAULT_MEAN``/``_STD``), the fallback
#: when a model carries no ``pretrained_cfg`` mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Default HU window mapped onto ``[0, 1]`` for 2D natural-image models (a broad window
#: that keeps lung, soft tissue and bone apart).
TIMM_HU_WINDOW = (-1000.0, 1000.0)


def _input_hw(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int]:
    if input_size is not None:
        return (int(input_size[0]), int(input_size[1]))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (int(img_size[0]), int(img_size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    raise ValueError(f"cannot tell the input size of {type(model).__name__}: pass input_size")


class TimmSliceEncoder(nn.Module):
    """A 2D timm model seen as a 3D encoder, one axial slice at a time.

    Args:
        model: a timm model (``forward_features(x (N, C, H, W))`` returning tokens
            ``(N, prefix + gh*gw, E)`` or a map ``(N, E, gh, gw)``).
        input_size: ``(H, W)`` slice size; default the model's own (``patch_embed.img_size``
            or ``pretrained_cfg["input_size"]``).
        hu: HU window mapped onto ``[0, 1]`` (default :data:`TIMM_HU_WINDOW`).
        mean: per-channel mean; default ``pretrained_cfg["mean"]`` else ImageNet's.
        std: per-channel std; default ``pretrained_cfg["std"]`` else ImageNet's.
        slice_batch: slices per ``forward_features`` call.

    Attributes:
        stride: ``(1, ph, pw)`` in the resized space.
        embed_dim: E.
        preprocessing: HU window, in-plane size ``(H, W)``, windows of whole slices
            ``(task depth, H, W)``, channel mean/std.

    Raises:
        ValueError: when the output grid does not tile the input size.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: Sequence[int] | None = None,
        hu: Sequence[float] = TIMM_HU_WINDOW,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        slice_batch: int = 64,
    ) -> None:
        super().__init__()
        self.model: Any = model
        self.slice_batch = int(slice_batch)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        h, w = _input_hw(model, input_size)
        self.preprocessing = Preprocessing(
            intensity=hu_window(*hu),
            in_plane_size=(h, w),
            window_size=(None, h, w),
            channel_mean=mean or cfg.get("mean") or IMAGENET_MEAN,
            channel_std=std or cfg.get("std") or IMAGENET_STD,
        )
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.has_cls = getattr(model, "cls_token", None) is not None and self.num_prefix_tokens > 0
        self._grid: tuple[int, int] | None = None
        channels = len(self.preprocessing.channel_mean or ())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe = self._slice_features(torch.zeros(1, channels, h, w), (h, w))[0]
        model.train(was_training)
        gh, gw = probe.shape[2:]
        if h % gh or w % gw:
            raise ValueError(f"{type(model).__name__}: grid {(gh, gw)} does not tile {(h, w)}")
        self._grid = (gh, gw)
        self.stride = (1, h // gh, w // gw)
        self.embed_dim = int(probe.shape[1])

    def _token_grid(self, n: int, hw: tuple[int, int]) -> tuple[int, int]:
        if self._grid is not None:
            return self._grid
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == n:
            return (int(grid[0]), int(grid[1]))
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"cannot lay {n} patch tokens of a {hw} slice on a grid")
        return (side, side)

    def _slice_features(
        self, x: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(N, C, H, W)`` normalised slices -> ``((N, E, gh, gw), (N, E) | None)``."""
        out = self.model.forward_features(x)
        if isinstance(out, list | tuple):
            out = out[-1]
        if out.ndim == 4:  # CNN feature map (N, E, gh, gw)
            return out, None
        if out.ndim != 3:
            raise ValueError(
                f"forward_features gave shape {tuple(out.shape)}, expected 3 or 4 dims"
            )
        patch_tokens = out[:, self.num_prefix_tokens :]  # (N, gh*gw, E)
        gh, gw = self._token_grid(patch_tokens.shape[1], hw)
        grid = rearrange(patch_tokens, "n (gh gw) e -> n e gh gw", gh=gh, gw=gw)
        return grid, (out[:, 0] if self.has_cls else None)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Features of every axial slice, stacked along depth.

        Args:
            x: windows ``(B, 1, d, H, W)`` in ``[0, 1]`` at the model's input size.

        Returns:
            ``EncoderOutput((B, E, d, gh, gw), (B, E) mean of the slices' cls tokens or
            None for models without one)``.
        """
        b = x.shape[0]
        slices = rearrange(x, "b c d h w -> (b d) c h w")
        slices = self.preprocessing.prepare_window(slices)  # (B*d, C, H, W)
        feats: list[torch.Tensor] = []
        cls: list[torch.Tensor] = []
        for chunk in slices.split(self.slice_batch):
            grid, token = self._slice_features(chunk, tuple(x.shape[3:]))  # type: ignore[arg-type]
            feats.append(grid)
            if token is not None:
                cls.append(token)
        patch = rearrange(torch.cat(feats), "(b d) e gh gw -> b e d gh gw", b=b)
        cls_token = rearrange(torch.cat(cls), "(b d) e -> b d e", b=b).mean(dim=1) if cls else None
        return EncoderOutput(patch, cls_token)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Same as :meth:`encode`."""
        return self.encode(x)


def create_timm_encoder(
    name: str,
    *,
    pretrained: bool = False,
    hu_min: float = TIMM_HU_WINDOW[0],
    hu_max: float = TIMM_HU_WINDOW[1],
    slice_batch: int = 64,
    **model_kwargs: Any,
) -> TimmSliceEncoder:
    """Build ``timm.create_model(name, ...)`` wrapped as a slice-by-slice encoder.

    Args:
        name: a timm model name (``vit_small_patch14_dinov2``, ``vit_small_patch16_224``,
            ``resnet50`` ...).
        pretrained: download timm's weights (default False: random weights, no network).
        hu_min: HU mapped to 0.
        hu_max: HU mapped to 1.
        slice_batch: slices per forward call.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=112``).

    Returns:
        :class:`TimmSliceEncoder` in eval mode.

    Raises:
        ImportError: when timm is not installed (``pip install tapct-eval[timm]``).
        ValueError: for an unknown timm model name (timm's ``RuntimeError`` re-raised).
    """
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("timm encoders need timm: pip install 'tapct-eval[timm]'") from exc
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"timm has no model {name!r}") from None
        raise
    return TimmSliceEncoder(model, hu=(hu_min, hu_max), slice_batch=slice_batch).eval()
