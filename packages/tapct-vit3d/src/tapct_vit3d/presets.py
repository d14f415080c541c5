"""Named model presets (TAP-CT paper Table 3 and small CPU-sized variants).

A plain dict of constructor arguments per name (this module imports no model code);
:func:`tapct_vit3d.create_model` builds one and applies overrides. The paper trained
with stochastic depth 0.2 (ViT-B) / 0.1 (ViT-S) (Table 7); presets default to 0.0
(inference) and training code passes ``drop_path_rate=...`` as an override.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["PRESETS", "list_models", "preset_config"]

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
        **overrides: Constructor arguments of ``VisionTransformer3d`` to replace.

    Returns:
        A new dict of keyword arguments.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the known names).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}
