"""Build a ``VisionTransformer3d`` by name or from saved weights (the top of the package).

Module order, every import one way: ``presets`` (plain data) and the weight tools
(``_state_dict``, ``inflate``, ``hub``: no model class) -> ``vision_transformer`` -> this
module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import hub
from .presets import preset_config
from .vision_transformer import VisionTransformer3d

__all__ = ["create_model", "load_pretrained"]


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


def load_pretrained(dir_or_hub_id: str | Path, **kwargs: Any) -> VisionTransformer3d:
    """Load a :class:`VisionTransformer3d` from a folder, a weights file or a hub id.

    Same as ``VisionTransformer3d.from_pretrained``; keyword arguments (``preset``,
    ``prefix``, ``revision``, ``cache_dir``, ``map_location``, ``pos_embed_grid``, and
    constructor overrides) and errors as :func:`tapct_vit3d.hub.from_pretrained`.

    Args:
        dir_or_hub_id: A folder with ``model.safetensors`` (+ ``config.json``), a
            ``.safetensors``/``.pth``/``.pt``/``.bin`` file (``.pth`` read with
            ``torch.load(weights_only=True)``), or a hub id ``owner/name``.
        **kwargs: See :func:`tapct_vit3d.hub.from_pretrained`.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: A local path without weights.
        ValueError: No architecture, or weights that do not match (names listed).
        OSError: A hub id not cached while offline (``HF_HUB_OFFLINE=1``), or not
            downloadable.
    """
    return hub.from_pretrained(VisionTransformer3d, dir_or_hub_id, **kwargs)
