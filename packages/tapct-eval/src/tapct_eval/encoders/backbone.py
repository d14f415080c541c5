"""Adapter (a): a DINOv2-interface backbone (``tapct_vit3d`` or DINOv2 itself) as an encoder.

Uses only the backbone interface of :mod:`tapct_eval._backbone` (``.patch_size``,
``.embed_dim``, ``forward_features`` or ``get_intermediate_layers``); this package never
imports ``tapct_vit3d``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._backbone import backbone_embed_dim, backbone_forward, backbone_patch_size
from .base import EncoderOutput, Preprocessing

__all__ = ["BackboneEncoder"]


class BackboneEncoder(nn.Module):
    """A 3D ViT backbone seen through the :class:`~tapct_eval.encoders.Encoder` protocol.

    Args:
        backbone: ``nn.Module`` with ``.patch_size`` (int or 3 ints), ``.embed_dim`` and
            ``forward_features(x) -> {"x_norm_patchtokens", "x_norm_clstoken"}`` or
            ``get_intermediate_layers``.
        preprocessing: the model's input record; for a TAP-CT model the clip window and
            z-normalisation it was trained with, e.g.
            ``Preprocessing(intensity=(-1008, 822, -86.8, 322.6))`` (default: none, the
            caller normalises).

    Attributes:
        stride: the patch size ``(pd, ph, pw)``.
        embed_dim: E.

    Raises:
        TypeError: when ``backbone`` lacks ``.patch_size`` or ``.embed_dim``.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.stride = backbone_patch_size(backbone)
        self.embed_dim = backbone_embed_dim(backbone)
        self.preprocessing = preprocessing or Preprocessing()
        self.train(backbone.training)  # the wrapper starts in the backbone's mode

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Patch tokens as a grid and the cls token.

        Args:
            x: windows ``(B, 1, d, h, w)``, each side a multiple of ``stride``.

        Returns:
            ``EncoderOutput((B, E, d/pd, h/ph, w/pw), (B, E))``.
        """
        patch, cls = backbone_forward(self.backbone, x)
        return EncoderOutput(patch, cls)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Same as :meth:`encode`."""
        return self.encode(x)
