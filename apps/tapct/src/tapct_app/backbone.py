"""Resolve ``--model DIR_OR_PRESET`` into a backbone for embedding and benchmarking."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapct_app.errors import UserError, one_line

if TYPE_CHECKING:
    from tapct_vit3d import VisionTransformer3d

__all__ = ["load_backbone"]


def load_backbone(spec: str, device: Any = "cpu") -> VisionTransformer3d:
    """Load a backbone from a ``save_pretrained`` folder, a ``.safetensors`` file or a preset.

    Args:
        spec: A folder with ``model.safetensors`` + ``config.json`` (``tapct pretrain``
            writes one to ``OUTPUT/model``), a ``.safetensors`` file, or a
            ``tapct_vit3d`` preset name (randomly initialised: a baseline, with a warning).
        device: Where to put the model.

    Returns:
        A ``tapct_vit3d.VisionTransformer3d`` in eval mode.

    Raises:
        UserError: If the folder holds no readable model or the name is not a preset.
    """
    from tapct_vit3d import create_model, list_models, load_pretrained

    path = Path(spec).expanduser()
    if path.exists():
        from safetensors import SafetensorError

        try:
            model = load_pretrained(path, map_location="cpu")
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
            # SafetensorError: a truncated or garbage model.safetensors (its header or
            # data shorter than it says)
            raise UserError(f"{path}: cannot load a model: {one_line(exc)}") from exc
    elif spec in list_models():
        warnings.warn(
            f"--model {spec}: a preset name gives RANDOM weights (a baseline); pass the "
            "folder written by `tapct pretrain` (OUTPUT/model) for a trained encoder",
            UserWarning,
            stacklevel=2,
        )
        model = create_model(spec)
    else:
        raise UserError(
            f"--model {spec!r}: not a model folder and not a preset ({', '.join(list_models())})"
        )
    return model.to(device).eval()
