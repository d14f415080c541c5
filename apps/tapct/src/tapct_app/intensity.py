"""Which intensity statistics (clip window, mean, std) a command uses, and where they go.

Pretraining takes them from ``--intensity-stats`` or ``data.normalize`` (default: the
paper's values, ``tapct_data.NormalizeConfig()``) and records them in the exported
model's ``config.json`` (``{"tapct": {"normalize": {...}}}``, see
``tapct_vit3d.save_pretrained``). ``embed``, ``benchmark`` and ``retrieve`` read them
back from the model, so a user of a trained encoder never repeats them; an explicit
``--intensity-stats`` file overrides the model's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapct_app.errors import UserError, one_line

if TYPE_CHECKING:
    from tapct_data import NormalizeConfig

__all__ = ["MODEL_NORMALIZE_KEY", "load_intensity_stats", "model_metadata", "model_normalize"]

#: Key of the model metadata (``config.json["tapct"]``) holding the statistics.
MODEL_NORMALIZE_KEY = "normalize"


def load_intensity_stats(path: str | Path) -> NormalizeConfig:
    """Read ``--intensity-stats``: a ``tapct fingerprint`` JSON or the four keys.

    Args:
        path: The JSON file.

    Returns:
        The ``tapct_data.NormalizeConfig``.

    Raises:
        UserError: A missing or invalid file (named).
    """
    from tapct_data import NormalizeConfig

    try:
        return NormalizeConfig.from_json(Path(path).expanduser())
    except ValueError as exc:
        raise UserError(f"--intensity-stats {one_line(exc)}") from exc


def model_metadata(normalize: NormalizeConfig) -> dict[str, Any]:
    """The metadata an exported model carries in ``config.json`` (under ``"tapct"``).

    Args:
        normalize: The statistics the model was trained with.

    Returns:
        ``{"normalize": {"lower", "upper", "mean", "std"}}``.
    """
    return {MODEL_NORMALIZE_KEY: normalize.to_dict()}


def model_normalize(model: str, override: str | Path | None = None) -> NormalizeConfig:
    """The statistics to embed or benchmark ``model`` with.

    Order: ``override`` (``--intensity-stats``), else the model's own ``config.json``
    metadata, else the paper's values with a warning (a preset, a model exported before
    the metadata existed, or a released checkpoint: TAP-CT was trained with the paper's).

    Args:
        model: The ``--model`` value (folder, ``.safetensors`` file, preset or hub id).
        override: A ``--intensity-stats`` file, or None.

    Returns:
        The ``tapct_data.NormalizeConfig``.

    Raises:
        UserError: A bad override file, or invalid statistics in the model's config.json.
    """
    from tapct_data import NormalizeConfig
    from tapct_vit3d import list_models, read_model_metadata

    if override is not None:
        return load_intensity_stats(override)
    meta: dict[str, Any] = {}
    path = Path(model).expanduser()
    if path.exists() or model not in list_models():
        try:
            meta = read_model_metadata(path if path.exists() else model)
        except (OSError, ValueError) as exc:
            warnings.warn(
                f"--model {model}: cannot read its metadata ({one_line(exc)})",
                UserWarning,
                stacklevel=2,
            )
    if MODEL_NORMALIZE_KEY in meta:
        try:
            return NormalizeConfig.from_dict(meta[MODEL_NORMALIZE_KEY], f"{model} config.json")
        except ValueError as exc:
            raise UserError(one_line(exc)) from exc
    warnings.warn(
        f"--model {model}: no intensity statistics recorded with the model; using the "
        "paper's (tapct_data.NormalizeConfig defaults); pass --intensity-stats to choose",
        UserWarning,
        stacklevel=2,
    )
    return NormalizeConfig()
