"""Resolve ``--model`` into a ``tapct_eval`` encoder: the one place a model string is parsed.

``--model`` takes

- ``timm:NAME[:key=value,...]``: a timm 2D model applied slice by slice (random
  weights, seeded; options go to ``timm.create_model``, plus ``hu_min``/``hu_max``);
- ``monai:NAME[:key=value,...]``: a MONAI network's encoder (``SwinUNETR``,
  ``SegResNet``, ``UNet``; random weights; options go to the constructor, plus
  ``level``, ``hu_min``, ``hu_max``);
- ``module:function[:key=value,...]``: any importable callable returning an encoder
  or a DINOv2-interface backbone;
- anything else: a TAP-CT model folder, weights file, preset or hub id
  (``tapct_app.models.load_backbone``), run with the intensity statistics recorded with
  the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapct_app.errors import UserError, one_line

if TYPE_CHECKING:
    from tapct_eval.encoders import Encoder

__all__ = ["load_encoder", "model_display_name"]


def _load_tapct_backbone(spec: str, device: Any) -> Any:
    """Our own models (folder, weights file, preset or hub id): ``tapct_app.models``."""
    from tapct_app.models import load_backbone

    return load_backbone(spec, device)[0]


def load_encoder(spec: str, device: Any = "cpu", intensity_stats: Path | None = None) -> Encoder:
    """Build the encoder a ``--model`` string names.

    Args:
        spec: the ``--model`` value (see the module docstring).
        device: where to put the encoder.
        intensity_stats: ``--intensity-stats`` file; overrides the HU window/normalisation
            of any encoder (default: the model's own, or the adapter's).

    Returns:
        A ``tapct_eval.encoders.Encoder`` in eval mode, its ``preprocessing.intensity``
        set (the loaders normalise scans with it).

    Raises:
        UserError: a bad spec, an unknown model, an import that fails, missing timm.
    """
    import attrs
    from tapct_eval.encoders import (
        BackboneEncoder,
        Preprocessing,
        create_encoder,
        parse_encoder_spec,
    )

    from tapct_app.intensity import load_intensity_stats, model_normalize

    parsed = None
    if not Path(spec).expanduser().exists():
        try:
            parsed = parse_encoder_spec(spec)
        except ValueError as exc:
            raise UserError(f"--model {one_line(exc)}") from exc
    if parsed is None:
        backbone = _load_tapct_backbone(spec, device)
        stats = model_normalize(spec, intensity_stats)
        intensity = (stats.lower, stats.upper, stats.mean, stats.std)
        return BackboneEncoder(backbone, Preprocessing(intensity=intensity)).eval()
    from tapct_app.models import seeded_init

    try:
        with seeded_init():  # random weights: the same network on every call
            encoder = create_encoder(parsed)
    except (ValueError, TypeError, ImportError) as exc:
        raise UserError(f"--model {spec}: {one_line(exc)}") from exc
    if intensity_stats is not None:
        stats = load_intensity_stats(intensity_stats)
        encoder.preprocessing = attrs.evolve(
            encoder.preprocessing, intensity=(stats.lower, stats.upper, stats.mean, stats.std)
        )
    if encoder.preprocessing.intensity is None:
        raise UserError(
            f"--model {spec}: the encoder declares no HU window (preprocessing.intensity); "
            "pass --intensity-stats"
        )
    return encoder.to(device).eval()  # type: ignore[attr-defined]


def model_display_name(spec: str) -> str:
    """The name results are reported under: a folder's name, else the spec itself."""
    path = Path(spec).expanduser()
    return path.name if path.exists() else spec
