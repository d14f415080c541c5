"""``--model`` strings that name an encoder: ``timm:NAME``, ``monai:NAME``, ``module:function``.

Grammar (options optional, ``key=value`` separated by commas, values read as Python
literals where they parse, else as strings)::

    timm:vit_small_patch14_dinov2                 # timm model, slice by slice
    timm:vit_small_patch16_224:img_size=112       # options go to timm.create_model
    monai:SwinUNETR:feature_size=12,level=3       # a MONAI network's encoder
    my_package.models:build_encoder               # any callable returning an encoder
    my_package.models:build_encoder:size=64       # ... called with keyword options

Anything else (a folder, a preset, a hub id) is not an encoder spec here:
:func:`parse_encoder_spec` returns None and the application loads it as a backbone.
"""

from __future__ import annotations

import ast
import importlib
import re
from typing import Any

import attrs
from torch import nn

from .backbone import BackboneEncoder
from .base import Encoder, Preprocessing

__all__ = ["EncoderSpec", "as_encoder", "create_encoder", "parse_encoder_spec"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
_KEY = re.compile(r"[A-Za-z_]\w*")


@attrs.frozen
class EncoderSpec:
    """A parsed encoder string.

    Attributes:
        source: ``timm``, ``monai`` or ``callable``.
        name: the timm/MONAI model name, or ``module:function`` for a callable.
        options: keyword arguments for the factory.
    """

    source: str
    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _options(text: str | None, spec: str) -> dict[str, Any]:
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key.strip()):
            raise ValueError(f"{spec!r}: option {item!r} is not key=value")
        out[key.strip()] = _value(value.strip())
    return out


def parse_encoder_spec(spec: str) -> EncoderSpec | None:
    """Parse ``timm:NAME[:opts]``, ``monai:NAME[:opts]`` or ``module:function[:opts]``.

    Args:
        spec: the ``--model`` string.

    Returns:
        :class:`EncoderSpec`, or None when ``spec`` is none of these forms (a folder,
        preset or hub id, for the caller to load).

    Raises:
        ValueError: a ``timm:``/``monai:`` spec without a name, or malformed options.
    """
    head, sep, rest = spec.partition(":")
    if not sep:
        return None
    name, _, opts = rest.partition(":")
    if head in ("timm", "monai"):
        if not _NAME.fullmatch(name):
            raise ValueError(f"{spec!r}: expected {head}:NAME[:key=value,...]")
        return EncoderSpec(head, name, _options(opts, spec))
    if _DOTTED.fullmatch(head) and _KEY.fullmatch(name):
        return EncoderSpec("callable", f"{head}:{name}", _options(opts, spec))
    return None


def as_encoder(obj: Any, preprocessing: Preprocessing | None = None) -> Encoder:
    """Return ``obj`` as an :class:`~tapct_eval.encoders.Encoder`.

    Args:
        obj: an encoder (returned as is) or a DINOv2-interface backbone ``nn.Module``
            (``.patch_size``, ``.embed_dim``), wrapped in :class:`BackboneEncoder`.
        preprocessing: for a wrapped backbone, its input record.

    Returns:
        The encoder.

    Raises:
        TypeError: for anything else (naming what is missing).
    """
    if isinstance(obj, Encoder):
        return obj
    if isinstance(obj, nn.Module):
        return BackboneEncoder(obj, preprocessing)  # raises TypeError without patch_size
    raise TypeError(
        f"{type(obj).__name__} is neither an encoder (embed_dim, stride, preprocessing, "
        "encode) nor a backbone nn.Module"
    )


def create_encoder(spec: str | EncoderSpec) -> Encoder:
    """Build the encoder a spec names (random weights for timm and MONAI).

    Args:
        spec: an :class:`EncoderSpec` or a string for :func:`parse_encoder_spec`.

    Returns:
        The encoder, in eval mode.

    Raises:
        ValueError: a string that is not an encoder spec, an unknown model, a module or
            function that cannot be imported.
        TypeError: a callable that returns no encoder or backbone, or bad options.
        ImportError: timm missing for ``timm:`` (``pip install 'tapct-eval[timm]'``).
    """
    parsed = parse_encoder_spec(spec) if isinstance(spec, str) else spec
    if parsed is None:
        raise ValueError(f"{spec!r} is not timm:NAME, monai:NAME or module:function")
    if parsed.source == "timm":
        from .timm_slices import create_timm_encoder

        return create_timm_encoder(parsed.name, **parsed.options)
    if parsed.source == "monai":
        from .monai_nets import create_monai_encoder

        return create_monai_encoder(parsed.name, **parsed.options)
    module_name, _, function_name = parsed.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{parsed.name!r}: cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ValueError(
            f"{parsed.name!r}: module {module_name!r} has no callable {function_name!r}"
        )
    encoder = as_encoder(factory(**parsed.options))
    encoder.train(False)
    return encoder
