"""Clipping and z-normalisation with dataset foreground statistics (nnU-Net style).

:class:`NormalizeConfig` is the one place of the paper's statistics (TAP-CT Appendix B,
DESIGN.md section 1); every other component takes a config (or reads one written by
:func:`tapct_data.compute_fingerprint` with :meth:`NormalizeConfig.from_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import attrs
import torch
import torchio as tio

from .volume import Volume

__all__ = ["ClipNormalize", "NormalizeConfig"]

_FIELDS = ("lower", "upper", "mean", "std")


@attrs.frozen
class NormalizeConfig:
    """Clip window and z-normalisation statistics in HU (nnU-Net v2 ``CTNormalization``).

    The defaults are the paper's dataset statistics (TAP-CT Appendix B): the foreground
    0.5 and 99.5 percentiles as the clip window, and the foreground mean and standard
    deviation. They are the only copy of these numbers in the project.

    Attributes:
        lower: Lower clip in HU (paper: -1008).
        upper: Upper clip in HU (paper: 822).
        mean: Foreground mean in HU (paper: -86.8086).
        std: Foreground standard deviation in HU (paper: 322.6347), > 0.

    Raises:
        ValueError: A value that is not finite, ``lower >= upper`` or ``std <= 0``.
    """

    lower: float = attrs.field(default=-1008.0, converter=float)
    upper: float = attrs.field(default=822.0, converter=float)
    mean: float = attrs.field(default=-86.8086, converter=float)
    std: float = attrs.field(default=322.6347, converter=float)

    def __attrs_post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)}" for k in _FIELDS if not math.isfinite(getattr(self, k))]
        if bad:
            raise ValueError(f"intensity statistics must be finite, got {', '.join(bad)}")
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, float]:
        """``{"lower", "upper", "mean", "std"}`` as plain floats (JSON/YAML-ready)."""
        return {k: float(getattr(self, k)) for k in _FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> NormalizeConfig:
        """Build from a mapping with exactly the keys ``lower, upper, mean, std``.

        Args:
            data: The mapping (e.g. ``fingerprint["normalize"]`` or a config section).
            source: Where it came from, for error messages (a file name).

        Returns:
            The config.

        Raises:
            ValueError: Missing or unknown keys, non-numbers, or invalid values; the
                message starts with ``source`` when given.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}expected a mapping with {', '.join(_FIELDS)}, got {data!r}")
        missing = [k for k in _FIELDS if k not in data]
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if missing or unknown:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"{where}intensity statistics: {'; '.join(parts)}")
        values = {}
        for k in _FIELDS:
            v = data[k]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{where}{k} must be a number, got {v!r}")
            values[k] = float(v)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None

    @classmethod
    def from_json(cls, path: str | PathLike[str]) -> NormalizeConfig:
        """Read a JSON file: a fingerprint (its ``"normalize"`` object) or the four keys.

        Args:
            path: A ``tapct fingerprint`` output (``compute_fingerprint(...).save_json``)
                or a file holding ``{"lower": ..., "upper": ..., "mean": ..., "std": ...}``.

        Returns:
            The config.

        Raises:
            ValueError: A missing, unreadable or invalid file; the message names it.
        """
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{file}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from None
        if isinstance(data, Mapping) and "normalize" in data:
            data = data["normalize"]
        return cls.from_dict(data, source=str(file))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(clip(x, lower, upper) - mean) / std``.

        Args:
            x: HU tensor of any shape and device.

        Returns:
            float32 tensor of the same shape, on the same device.
        """
        return (x.float().clamp(self.lower, self.upper) - self.mean) / self.std


class ClipNormalize(tio.IntensityTransform):
    """Clip HU to ``[lower, upper]``, subtract ``mean`` and divide by ``std``.

    Call it on a tensor of HU of any shape (returns float32 of the same shape), on a
    :class:`~tapct_data.Volume`, or use it as a TorchIO transform on a ``tio.Subject``
    (scalar images only).

    Args:
        config: The statistics; default :class:`NormalizeConfig` (the paper's values).
        lower, upper, mean, std: Replace the config's values (the keywords of earlier
            versions, and what TorchIO's history uses to rebuild it).
        **kwargs: ``tio.Transform`` keywords (``include``, ``exclude``, ``copy``, ...).

    Not invertible in TorchIO's sense (the clip loses values; TorchIO's intensity
    normalisations are not invertible either): ``subject.apply_inverse_transform()`` warns
    and skips it; `denormalize` maps values back to clipped HU.

    Raises:
        ValueError: Invalid statistics (see :class:`NormalizeConfig`).
        TypeError: An unknown keyword or a ``config`` that is not a `NormalizeConfig`.
    """

    # Shadows torchio's static ``Transform.mean(tensor)``, a masking helper that users pass
    # as ``masking_method`` and torchio never calls on ``self``; the name stays because
    # ``args_names`` (torchio's history) and callers read ``.mean``.
    mean: float  # type: ignore[assignment]

    def __init__(
        self,
        config: NormalizeConfig | None = None,
        *,
        lower: float | None = None,
        upper: float | None = None,
        mean: float | None = None,
        std: float | None = None,
        **kwargs: Any,
    ) -> None:
        if config is not None and not isinstance(config, NormalizeConfig):
            raise TypeError(f"config must be a NormalizeConfig, got {type(config).__name__}")
        given = {"lower": lower, "upper": upper, "mean": mean, "std": std}
        fields = {k: v for k, v in given.items() if v is not None}
        config = attrs.evolve(config or NormalizeConfig(), **fields)
        try:
            super().__init__(**kwargs)
        except TypeError as exc:
            raise TypeError(f"ClipNormalize: unknown keyword(s) ({exc})") from None
        self.config = config
        self.lower, self.upper, self.mean, self.std = (
            config.lower,
            config.upper,
            config.mean,
            config.std,
        )
        self.args_names = list(_FIELDS)

    @classmethod
    def from_stats(cls, stats: Any) -> ClipNormalize:
        """Build from anything with ``lower, upper, mean, std`` (e.g. `ForegroundStats`)."""
        return cls(NormalizeConfig(stats.lower, stats.upper, stats.mean, stats.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The pure function: ``(clip(x, lower, upper) - mean) / std`` as float32."""
        return self.config.apply(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised values back to (clipped) HU."""
        return x.float() * self.std + self.mean

    def __call__(self, data: Any) -> Any:  # type: ignore[override]
        if isinstance(data, torch.Tensor):
            return self.normalize(data)
        if isinstance(data, Volume):
            return attrs.evolve(data, data=self.normalize(data.data))
        return super().__call__(data)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Clip and z-normalise each scalar image of ``subject`` (TorchIO hook; not labels)."""
        for image in self.get_images(subject):
            image.set_data(self.normalize(image.data))
        return subject
