"""Named model presets (TAP-CT paper Table 3 and small CPU-sized variants).

A plain dict of constructor arguments per name; :func:`create_model` builds one and
applies overrides. The paper trained with stochastic depth 0.2 (ViT-B) / 0.1 (ViT-S)
(Table 7); presets default to 0.0 (inference) and training code passes
``drop_path_rate=...`` as an override.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .vision_transformer import VisionTransformer3d

__all__ = ["PRESETS", "create_model", "list_models", "preset_config"]

_S = {"embed_dim": 384, "depth": 12, "num_heads": 6}
_B = {"embed_dim": 768, "depth": 12, "num_heads": 12}
_2D = {"img_size": (1, 224, 224), "patch_size": (1, 16, 16)}
_2P5D = {"img_size": (6, 224, 224), "patch_size": (1, 16, 16)}
_3D = {"img_size": (12, 224, 224), "patch_size": (4, 8, 8)}
_CPU_3D = {"img_size": (12, 64, 64), "patch_size": (4, 8, 8)}

#: Constructor arguments of every preset, by name (read-only).
PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType({
    name: MappingProxyType(args)
    for name, args in {
        "tap_s_2d": {**_2D, **_S},
        "tap_b_2d": {**_2D, **_B},
        "tap_s_2p5d": {**_2P5D, **_S},
        "tap_b_2p5d": {**_2P5D, **_B},
        "tap_s_3d": {**_3D, **_S},
        "tap_b_3d": {**_3D, **_B},
        "tap_ti_3d": {**_3D, "embed_dim": 192, "depth": 12, "num_heads": 3},
        "tap_micro_3d": {**_CPU_3D, "embed_dim": 96, "depth": 4, "num_heads": 3},
        "tap_nano_3d": {**_CPU_3D, "embed_dim": 48, "depth": 2, "num_heads": 2},
    }.items()
})


def list_models() -> list[str]:
    """Return the preset names, paper models first (``tap_s_2d`` ... ``tap_nano_3d``)."""
    return list(PRESETS)


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Return the constructor arguments of preset ``name`` with ``overrides`` applied.

    Args:
        name: A name from :func:`list_models`.
        **overrides: Constructor arguments of :class:`VisionTransformer3d` to replace.

    Returns:
        A new dict of keyword arguments.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the known names).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}


def create_model(name: str, **overrides: Any) -> VisionTransformer3d:
    """Build the preset ``name`` as a randomly initialised :class:`VisionTransformer3d`.

    Presets (patch ``(pd, ph, pw)``, trained input ``(D, H, W)``, width/depth/heads),
    from TAP-CT paper Table 3:

    - ``tap_s_2d`` / ``tap_b_2d``: ``(1, 16, 16)``, ``(1, 224, 224)``, 384/12/6 and 768/12/12
    - ``tap_s_2p5d`` / ``tap_b_2p5d``: ``(1, 16, 16)``, ``(6, 224, 224)``, same widths
    - ``tap_s_3d`` / ``tap_b_3d``: ``(4, 8, 8)``, ``(12, 224, 224)``, same widths
    - ``tap_ti_3d``: 3D, 192/12/3; ``tap_micro_3d``: ``(12, 64, 64)``, 96/4/3;
      ``tap_nano_3d``: ``(12, 64, 64)``, 48/2/2 (CPU tests and demos)

    All use 4 registers, LayerScale 1e-5, MLP ratio 4, one input channel.

    Args:
        name: Preset name.
        **overrides: Constructor arguments to replace (e.g. ``depth=1``,
            ``drop_path_rate=0.2``, ``img_size=(12, 96, 96)``).

    Returns:
        The model (on the default device, float32).

    Raises:
        ValueError: If ``name`` is unknown (lists the known names) or an override is invalid.
        TypeError: If an override is not a constructor argument.
    """
    return VisionTransformer3d(**preset_config(name, **overrides))
