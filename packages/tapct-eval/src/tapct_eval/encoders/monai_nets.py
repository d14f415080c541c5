"""Adapter (c): the encoder half of a MONAI network (SwinUNETR, SegResNet, UNet).

The CT foundation models the paper compares with are MONAI networks: CT-FM and SuPReM
(SegResNet), VoCo and SuPReM (SwinUNETR), VISTA3D (SegResNet-style encoder), SuPReM
(UNet). Their frozen features are the encoder's: ``SwinUNETR.swinViT`` hidden states,
``SegResNet.encode`` levels, the UNet bottleneck. Each window is scaled to ``[0, 1]`` from
a HU window (CT-FM's ``ScaleIntensityRange(-1024, 2048)`` by default), padded with air
to the multiple the network needs (32 for SwinUNETR's patch embedding plus four
mergings) and the features cropped back.

``monai`` is a dependency of tapct-eval already; networks are imported when built.

References:
    MONAI ``monai/networks/nets/swin_unetr.py``, ``segresnet.py``, ``unet.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from .base import EncoderOutput, Preprocessing, hu_window, pad_window

__all__ = ["MONAI_ENCODERS", "MONAI_HU_WINDOW", "MonaiEncoder", "create_monai_encoder"]

#: Default HU window mapped onto ``[0, 1]`` (CT-FM's ``ScaleIntensityRange``).
MONAI_HU_WINDOW = (-1024.0, 2048.0)


def _swin_features(net: Any, x: torch.Tensor, level: int) -> torch.Tensor:
    hidden = net.swinViT(x, net.normalize)  # 5 levels, strides 2 .. 32
    return hidden[level]


def _swin_multiple(net: Any) -> int:
    return int(max(net.swinViT.patch_size)) * 2**4  # patch embedding, then 4 mergings


def _segresnet_features(net: Any, x: torch.Tensor, level: int) -> torch.Tensor:
    _, levels = net.encode(x)  # one tensor per down layer, strides 1, 2, 4, 8 ...
    return levels[level]


def _segresnet_multiple(net: Any) -> int:
    return 2 ** (len(net.down_layers) - 1)


def _unet_parts(net: Any) -> tuple[list[nn.Module], nn.Module]:
    """MONAI UNet's nested ``Sequential(down, SkipConnection(sub), up)``: downs and bottom."""
    from monai.networks.layers import SkipConnection

    downs: list[nn.Module] = []
    block: Any = net.model
    while (
        isinstance(block, nn.Sequential)
        and len(block) == 3
        and isinstance(block[1], SkipConnection)
    ):
        downs.append(block[0])
        block = block[1].submodule
    return downs, block


def _unet_features(net: Any, x: torch.Tensor, level: int) -> torch.Tensor:
    downs, bottom = _unet_parts(net)
    for down in downs:
        x = down(x)
    return bottom(x)  # the bottleneck


def _unet_multiple(net: Any) -> int:
    strides: Any = net.strides
    return int(math.prod(int(s) for s in strides))


@attrs.frozen
class MonaiNet:
    """How to build one MONAI network and read its encoder.

    Attributes:
        defaults: constructor arguments (one input channel, 3D), overridable.
        features: ``(network, x (B, 1, d, h, w), level) -> (B, E, t, h', w')``.
        multiple: ``network -> int``, the size every input axis must be a multiple of.
        level: default feature level (index into the encoder's outputs; -1 deepest).
        probe_multiples: side of the probe window (in multiples of ``multiple``) used to
            read the stride and width (2 for UNet: instance norm needs > 1 voxel at the
            bottleneck).
    """

    defaults: Mapping[str, Any]
    features: Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
    multiple: Callable[[nn.Module], int]
    level: int = -1
    probe_multiples: int = 1


#: The MONAI networks whose encoders can be benchmarked, by class name.
MONAI_ENCODERS: Mapping[str, MonaiNet] = {
    "SwinUNETR": MonaiNet(
        {"in_channels": 1, "out_channels": 2, "spatial_dims": 3}, _swin_features, _swin_multiple
    ),
    "SegResNet": MonaiNet(
        {"in_channels": 1, "out_channels": 2, "spatial_dims": 3},
        _segresnet_features,
        _segresnet_multiple,
    ),
    "UNet": MonaiNet(
        {
            "in_channels": 1,
            "out_channels": 2,
            "spatial_dims": 3,
            "channels": (16, 32, 64, 128, 256),
            "strides": (2, 2, 2, 2),
            "num_res_units": 2,
        },
        _unet_features,
        _unet_multiple,
        probe_multiples=2,
    ),
}


class MonaiEncoder(nn.Module):
    """A MONAI network's encoder features as an :class:`~tapct_eval.encoders.Encoder`.

    Args:
        network: the MONAI network (weights as given: load a checkpoint into it first).
        spec: its :class:`MonaiNet` entry (how to read the encoder).
        level: feature level (default ``spec.level``, the deepest).
        hu: HU window mapped onto ``[0, 1]`` (default :data:`MONAI_HU_WINDOW`).

    Attributes:
        stride: voxels per feature cell ``(s, s, s)`` (e.g. 32 for SwinUNETR's deepest).
        embed_dim: feature channels E.
        preprocessing: HU window, windows rounded up to a multiple of the stride, padding
            to the network's multiple.

    Raises:
        ValueError: when the features do not tile a window of the network's multiple.
    """

    def __init__(
        self,
        network: nn.Module,
        spec: MonaiNet,
        *,
        level: int | None = None,
        hu: tuple[float, float] = MONAI_HU_WINDOW,
    ) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.level = spec.level if level is None else int(level)
        multiple = int(spec.multiple(network))
        was_training = network.training
        network.eval()
        side = multiple * spec.probe_multiples
        with torch.no_grad():
            probe = spec.features(network, torch.zeros(1, 1, side, side, side), self.level)
        network.train(was_training)
        cells = int(probe.shape[2])
        if side % cells or tuple(probe.shape[2:]) != (cells, cells, cells):
            raise ValueError(f"features {tuple(probe.shape)} do not tile a {side}^3 window")
        step = side // cells
        self.stride = (step, step, step)
        self.embed_dim = int(probe.shape[1])
        self.preprocessing = Preprocessing(
            intensity=hu_window(*hu),
            window_multiple=self.stride,
            pad_multiple=(multiple, multiple, multiple),
        )

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Encoder features of windows.

        Args:
            x: windows ``(B, 1, d, h, w)``, each side a multiple of ``stride``.

        Returns:
            ``EncoderOutput((B, E, d/s, h/s, w/s), None)``.
        """
        padded, size = pad_window(x, self.preprocessing.pad_multiple, self.preprocessing.pad_value)
        feats = self.spec.features(self.network, padded, self.level)
        t, h, w = (n // s for n, s in zip(size, self.stride))
        return EncoderOutput(feats[:, :, :t, :h, :w], None)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Same as :meth:`encode`."""
        return self.encode(x)


def create_monai_encoder(
    name: str,
    *,
    level: int | None = None,
    hu_min: float = MONAI_HU_WINDOW[0],
    hu_max: float = MONAI_HU_WINDOW[1],
    **network_kwargs: Any,
) -> MonaiEncoder:
    """Build ``monai.networks.nets.<name>`` (random weights) wrapped as an encoder.

    Args:
        name: a key of :data:`MONAI_ENCODERS` (``SwinUNETR``, ``SegResNet``, ``UNet``).
        level: encoder level to read (default the deepest).
        hu_min: HU mapped to 0.
        hu_max: HU mapped to 1.
        **network_kwargs: constructor overrides (e.g. ``feature_size=12``).

    Returns:
        :class:`MonaiEncoder` in eval mode.

    Raises:
        ValueError: for a name not in :data:`MONAI_ENCODERS` (the known names listed).
    """
    if name not in MONAI_ENCODERS:
        raise ValueError(f"unknown MONAI encoder {name!r}; known: {', '.join(MONAI_ENCODERS)}")
    from monai.networks import nets

    spec = MONAI_ENCODERS[name]
    network = getattr(nets, name)(**{**spec.defaults, **network_kwargs})
    return MonaiEncoder(network, spec, level=level, hu=(hu_min, hu_max)).eval()
