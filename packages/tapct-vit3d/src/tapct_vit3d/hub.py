"""Saving and loading weights: ``model.safetensors`` + ``config.json``, never pickle.

A local folder (or a hub id, downloaded with ``huggingface_hub``) holds the weights as
safetensors and the constructor arguments as JSON. DINOv2-style checkpoints (the released
TAP-CT weights ``fomofo/tap-ct-b-3d`` and ``fomofo/tap-ct-s-3d`` among them) are accepted
too: their keys are normalised by :func:`convert_dinov2_checkpoint` and their architecture
comes from a matching preset when ``config.json`` does not describe it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._state_dict import check_against_model, normalize_keys, square_side
from .pos_embed import resample_pos_embed
from .presets import preset_config
from .vision_transformer import VisionTransformer3d

__all__ = [
    "CONFIG_NAME",
    "KNOWN_RELEASES",
    "METADATA_KEY",
    "WEIGHTS_NAME",
    "convert_dinov2_checkpoint",
    "load_pretrained",
    "read_model_metadata",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Key of ``config.json`` holding the extra metadata of :func:`save_pretrained`.
METADATA_KEY = "tapct"

#: Released TAP-CT checkpoints on the Hugging Face hub and their presets.
KNOWN_RELEASES: dict[str, str] = {
    "fomofo/tap-ct-b-3d": "tap_b_3d",
    "fomofo/tap-ct-s-3d": "tap_s_3d",
}

# Config keys written by other tools, mapped to our constructor arguments.
_CONFIG_ALIASES = {
    "hidden_size": "embed_dim", "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads", "image_size": "img_size", "num_channels": "in_chans",
    "layerscale_value": "layerscale_init", "init_values": "layerscale_init",
    "layer_norm_eps": "norm_eps", "reg_tokens": "num_register_tokens",
}
_PICKLE_NAMES = (
    "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pth", "teacher_checkpoint.pth",
)


def save_pretrained(
    model: VisionTransformer3d,
    save_directory: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``model.config``) to a folder.

    Files are written to temporary names and renamed, so an interrupted save never leaves a
    truncated file under the final name.

    Args:
        model: The model to save.
        save_directory: Folder, created if missing.
        metadata: Extra JSON-serialisable information stored under the key
            :data:`METADATA_KEY` (``"tapct"``) of ``config.json``, e.g. the intensity
            statistics the model was trained with: ``{"normalize": {"lower": ...}}``.
            :func:`read_model_metadata` returns it; loading ignores it.

    Returns:
        The folder as a ``Path``.

    Raises:
        TypeError: If ``model`` is not a :class:`VisionTransformer3d`, or ``metadata``
            is not a JSON-serialisable mapping.
    """
    from safetensors.torch import save_file

    if not isinstance(model, VisionTransformer3d):
        raise TypeError(f"model must be a VisionTransformer3d, got {type(model).__name__}")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {"architecture": "VisionTransformer3d", "library": "tapct_vit3d", **model.config}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
        try:
            config[METADATA_KEY] = json.loads(json.dumps(dict(metadata)))
        except (TypeError, ValueError) as err:
            raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
        tmp_weights = Path(tmp.name)
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    tmp_config = folder / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_config, folder / CONFIG_NAME)
    return folder


def convert_dinov2_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    model: VisionTransformer3d,
    *,
    pos_embed_grid: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a DINOv2-style 3D backbone state dict onto ``model``'s keys and shapes.

    Accepts bare DINOv2 names (``patch_embed.proj``, ``cls_token``, ``register_tokens``,
    ``mask_token``, ``pos_embed``, ``blocks.{i}.*``, ``norm``) and the same names under a
    ``module.``/``_orig_mod.`` wrapper, inside a training checkpoint (``teacher.backbone.``
    preferred, then ``backbone.``, ``model.``, ``encoder.``) or in DINOv2's chunked
    ``blocks.{chunk}.{i}`` layout; heads are dropped. A positional embedding learned on
    another grid is resampled to ``model.grid_size``.

    Args:
        state_dict: Tensors by name; ``pos_embed (1, 1 + N_ckpt, E)``.
        model: Target model (only its keys, shapes and grid are read).
        pos_embed_grid: Grid ``(t, h, w)`` of the checkpoint's positional embedding when it
            differs from the model's and cannot be inferred (inference tries the model's
            ``t`` with a square in-plane grid, then the model's ``h, w``).

    Returns:
        A dict with exactly ``model.state_dict()``'s keys and shapes.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (listed), an unsupported layer
            type, or a positional grid that cannot be inferred.
    """
    sd = normalize_keys(state_dict)
    reference = model.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != reference["pos_embed"].shape and pos.ndim == 3:
        n_ckpt = pos.shape[1] - 1
        grid = tuple(pos_embed_grid) if pos_embed_grid is not None else _infer_grid(n_ckpt, model)
        if grid is None:
            raise ValueError(
                f"cannot infer the grid of a positional embedding with {n_ckpt} patch "
                f"positions for a model with grid {model.grid_size}; pass pos_embed_grid"
            )
        patch = resample_pos_embed(pos[:, 1:], grid, model.grid_size)
        sd["pos_embed"] = torch.cat((pos[:, :1], patch), dim=1)
    check_against_model(sd, reference)
    return sd


def _infer_grid(n: int, model: VisionTransformer3d) -> tuple[int, int, int] | None:
    t, h, w = model.grid_size
    if n % t == 0 and (side := square_side(n // t)) is not None:
        return (t, side, side)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    return None


def _resolve_config(config: Mapping[str, Any] | None, preset: str | None, source: str,
                    overrides: Mapping[str, Any]) -> dict[str, Any]:
    if preset is not None:
        return preset_config(preset, **overrides)
    params = set(inspect.signature(VisionTransformer3d.__init__).parameters) - {"self"}
    if config:
        mapped = {_CONFIG_ALIASES.get(k, k): v for k, v in config.items()}
        if {"embed_dim", "depth", "num_heads", "patch_size", "img_size"} <= set(mapped):
            args = {k: v for k, v in mapped.items() if k in params}
            for key in ("img_size", "patch_size"):
                if isinstance(args[key], list):
                    args[key] = tuple(args[key])
            return {**args, **overrides}
    if source in KNOWN_RELEASES:
        return preset_config(KNOWN_RELEASES[source], **overrides)
    raise ValueError(
        f"{source!r} has no config.json describing a VisionTransformer3d; pass preset=NAME "
        "(see tapct_vit3d.list_models())"
    )


def _fetch_from_hub(repo_id: str, revision: str | None,
                    cache_dir: str | Path | None) -> tuple[Path, Path | None]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("loading from the hub needs huggingface_hub") from err
    try:
        weights = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision,
                                       cache_dir=cache_dir))
    except Exception as err:
        raise OSError(
            f"could not download {WEIGHTS_NAME} of {repo_id!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). A hub id needs network access (or a filled "
            "cache); offline, download the repository elsewhere (e.g. `hf download "
            f"{repo_id}`) and pass its local folder instead"
        ) from err
    try:
        config: Path | None = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision,
                                                   cache_dir=cache_dir))
    except EntryNotFoundError:
        config = None
    return weights, config


def load_pretrained(
    dir_or_hub_id: str | Path,
    *,
    preset: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    pos_embed_grid: Sequence[int] | None = None,
    **overrides: Any,
) -> VisionTransformer3d:
    """Load a :class:`VisionTransformer3d` from a folder, a ``.safetensors`` file or a hub id.

    The architecture comes from ``preset`` (plus ``overrides``) when given, else from
    ``config.json`` (ours, or one with Hugging Face-style keys such as ``hidden_size``),
    else from :data:`KNOWN_RELEASES` for the released TAP-CT hub ids. Weights are read with
    ``safetensors`` only; pickle files are refused. Keys are normalised by
    :func:`convert_dinov2_checkpoint` and loaded with ``strict=True``.

    Args:
        dir_or_hub_id: Local folder with ``model.safetensors`` (+ ``config.json``), a path
            to a ``.safetensors`` file, or a hub id ``owner/name``.
        preset: Preset name to build instead of reading ``config.json``.
        revision: Hub revision (branch, tag or commit) for hub ids.
        cache_dir: Hub cache folder for hub ids.
        map_location: Device to load the tensors on.
        pos_embed_grid: Grid of the checkpoint's positional embedding if not inferable.
        **overrides: Constructor arguments replacing the config's (e.g. ``drop_path_rate``).

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: A local path without ``model.safetensors``.
        ValueError: Only a pickle checkpoint is present, no architecture can be resolved,
            or the weights do not match it.
        OSError: A hub id could not be downloaded (e.g. offline); the message says how to
            load a local copy instead.
    """
    from safetensors.torch import load_file

    source = str(dir_or_hub_id)
    path = Path(dir_or_hub_id)
    if path.is_dir():
        weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file():
            pickles = [n for n in _PICKLE_NAMES if (path / n).is_file()]
            if pickles:
                raise ValueError(
                    f"{path} holds only pickle checkpoints {pickles}; tapct_vit3d never "
                    "unpickles files. Convert them to model.safetensors from a trusted source"
                )
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; pickle files are never loaded")
        weights, config_path = path, path.parent / CONFIG_NAME
    elif re.fullmatch(r"[\w.\-]+/[\w.\-]+", source) and not source.startswith((".", "/")):
        weights, config_path = _fetch_from_hub(source, revision, cache_dir)  # type: ignore[assignment]
    else:
        raise FileNotFoundError(f"{source!r} is neither a local path nor a hub id 'owner/name'")

    config = None
    if config_path is not None and config_path.is_file():
        config = json.loads(config_path.read_text())
    kwargs = _resolve_config(config, preset, source, overrides)
    model = VisionTransformer3d(**kwargs)
    state_dict = load_file(str(weights), device=str(map_location))
    converted = convert_dinov2_checkpoint(state_dict, model, pos_embed_grid=pos_embed_grid)
    model.load_state_dict(converted, strict=True)
    return model.to(map_location).eval()


def read_model_metadata(
    dir_or_hub_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The extra metadata :func:`save_pretrained` stored in a model's ``config.json``.

    Args:
        dir_or_hub_id: A model folder, its ``.safetensors`` file, or a hub id.
        revision: Hub revision for hub ids.
        cache_dir: Hub cache folder for hub ids.

    Returns:
        The ``"tapct"`` object of ``config.json`` (e.g. ``{"normalize": {...}}``), or ``{}``
        when the model has no ``config.json`` or the file has no such key (models saved
        before metadata existed, the released DINOv2-style checkpoints).

    Raises:
        ValueError: A ``config.json`` that is not valid JSON or whose ``"tapct"`` value is
            not an object (the message names the file).
        OSError: A hub id whose ``config.json`` could not be downloaded.
    """
    source = str(dir_or_hub_id)
    path = Path(dir_or_hub_id)
    config_path: Path | None
    if path.is_dir():
        config_path = path / CONFIG_NAME
    elif path.is_file():
        config_path = path.parent / CONFIG_NAME
    elif re.fullmatch(r"[\w.\-]+/[\w.\-]+", source) and not source.startswith((".", "/")):
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.utils import EntryNotFoundError
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ImportError("reading from the hub needs huggingface_hub") from err
        try:
            config_path = Path(hf_hub_download(source, CONFIG_NAME, revision=revision,
                                               cache_dir=cache_dir))
        except EntryNotFoundError:
            return {}
        except Exception as err:
            raise OSError(f"could not download {CONFIG_NAME} of {source!r}: {err}") from err
    else:
        raise FileNotFoundError(f"{source!r} is neither a local path nor a hub id 'owner/name'")
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    meta = config.get(METADATA_KEY, {}) if isinstance(config, dict) else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{config_path}: {METADATA_KEY!r} must be an object, got {meta!r}")
    return meta
