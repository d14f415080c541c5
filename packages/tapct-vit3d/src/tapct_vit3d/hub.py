"""Saving and loading weights: ``model.safetensors`` + ``config.json`` + a model card.

A local folder (or a hub id, read from the Hugging Face cache or downloaded with
``huggingface_hub``; ``HF_HUB_OFFLINE=1`` is honoured) holds the weights as safetensors,
the constructor arguments as JSON and, optionally, a model card ``README.md``. Plain
state-dict files (``.pth``, ``.pt``, ``.bin``) are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers: arbitrary pickles are never executed.

Checkpoints of other layouts load too. The backbone is found inside a checkpoint by its
parameter names (:func:`~tapct_vit3d._state_dict.find_prefix`: ``vit.``, ``tapct.``,
``model.encoder.``, ``module.``, ``teacher.backbone.``, ... are detected, or pass
``prefix=``); 2D DINOv2/timm ViTs are inflated (:mod:`tapct_vit3d.inflate`); a
positional embedding of another grid and a patch kernel of another in-plane size are
resampled. :func:`load_weights` reports what was loaded, what was new and what was not
used, by name.

The released TAP-CT checkpoints (``fomofo/tap-ct-b-3d``, ``fomofo/tap-ct-s-3d``,
:data:`KNOWN_RELEASES`) use DINOv2's names for a 3D backbone. The mapping they need:

- the backbone prefix (whatever wrapper the release uses, e.g. ``backbone.`` or
  ``model.``) is detected and stripped; pass ``prefix=`` to force one;
- DINOv2's chunked blocks ``blocks.{chunk}.{i}.*`` become ``blocks.{i}.*``;
- ``patch_embed.proj.weight (E, 1, 4, 8, 8)``, ``cls_token``, ``register_tokens (1, 4, E)``,
  ``mask_token``, ``pos_embed (1, 1 + t*h*w, E)`` (cls position first), ``blocks.{i}.*``
  (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``,
  ``mlp.fc2``, ``ls2.gamma``) and ``norm`` keep their names;
- heads (``head.*``, ``fc_norm.*``, DINO/iBOT heads outside the backbone prefix) are
  dropped; ``pos_embed`` of another grid is resampled to the preset's;
- the release's ``config.json`` is not ours: the architecture comes from the preset in
  :data:`KNOWN_RELEASES` (``tap_b_3d``, ``tap_s_3d``) or ``preset=``.

This module imports no model class: :func:`from_pretrained` takes the class, and
``VisionTransformer3d.from_pretrained`` / ``.save_pretrained`` call into it (the imports
go one way: ``vision_transformer`` -> ``hub``).
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ._state_dict import (
    HEAD_PREFIXES,
    LoadReport,
    ViTLike,
    check_against_model,
    known_names,
    select_backbone,
    square_side,
)
from .inflate import DepthRule, convert_2d
from .patch_embed import resample_patch_embed
from .pos_embed import resample_pos_embed
from .presets import preset_config

__all__ = [
    "CONFIG_NAME",
    "KNOWN_RELEASES",
    "METADATA_KEY",
    "MODEL_CARD_NAME",
    "STATE_DICT_SUFFIXES",
    "WEIGHTS_NAME",
    "convert_dinov2_checkpoint",
    "from_pretrained",
    "is_hub_id",
    "load_weights",
    "read_model_metadata",
    "read_state_dict",
    "save_pretrained",
    "write_model_card",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_CARD_NAME = "README.md"
#: Key of ``config.json`` holding the extra metadata of :func:`save_pretrained`.
METADATA_KEY = "tapct"
#: Files :func:`read_state_dict` reads (``.safetensors``; the rest with ``weights_only``).
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

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
_STATE_DICT_NAMES = (
    "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pth", "teacher_checkpoint.pth",
)
_HUB_ID = re.compile(r"[\w.\-]+/[\w.\-]+")


M = TypeVar("M", bound=torch.nn.Module)


# --------------------------------------------------------------------------- reading


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` has the form of a hub id ``owner/name`` (and no local path prefix).

    Args:
        source: The string to test (a local path that exists should be checked first).

    Returns:
        True for ``owner/name`` made of letters, digits, ``_``, ``.``, ``-``.
    """
    text = str(source)
    return bool(_HUB_ID.fullmatch(text)) and not text.startswith((".", "/", "~"))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into tensors by name, never executing pickled code.

    ``.safetensors`` is read with ``safetensors``; ``.pth``, ``.pt``, ``.bin`` and ``.ckpt``
    with ``torch.load(weights_only=True)`` (tensors and plain containers only). Nested
    containers (``{"model": {...}}``, ``{"teacher": {"backbone.x": ...}}``, a training
    checkpoint with optimizer state) are flattened with ``.``-joined keys; values that
    are not tensors are dropped. :func:`load_weights` then finds the backbone by name.

    Args:
        path: The file.

    Returns:
        Tensors (on the CPU) by flattened name.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: An unknown suffix, a file that holds Python objects ``weights_only``
            refuses (the message says so), or a file without any tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = load_file(str(path), device="cpu")
        return tensors
    if suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(f"{path}: not a weights file (expected one of "
                         f"{', '.join(STATE_DICT_SUFFIXES)})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: holds Python objects besides tensors, which are never unpickled "
            f"(torch.load weights_only=True refused it: {first}); save the state dict "
            "alone (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable torch file ({err})") from None
    if isinstance(obj, torch.Tensor) or not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    flat = _flatten(obj)
    if not flat:
        raise ValueError(f"{path}: holds no tensors")
    return flat


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_download(repo_id: str, filename: str, revision: str | None,
                  cache_dir: str | Path | None, *, optional: bool = False) -> Path | None:
    """One file of a hub repository, from the cache or downloaded; None if absent (optional)."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("loading from the hub needs huggingface_hub") from err
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                                    cache_dir=cache_dir))
    except LocalEntryNotFoundError as err:  # before its base class EntryNotFoundError
        if optional and not _hub_offline():
            return None
        how = ("downloads are off (HF_HUB_OFFLINE=1)" if _hub_offline()
               else "the hub could not be reached")
        raise OSError(
            f"{repo_id}: {filename} is not in the Hugging Face cache and {how}; download it "
            f"where there is network (`hf download {repo_id}`, then the same HF_HOME) or "
            "pass a local folder"
        ) from err
    except EntryNotFoundError:  # the repository has no such file
        if optional:
            return None
        raise OSError(f"{repo_id}: the hub repository has no {filename}") from None
    except Exception as err:
        raise OSError(
            f"{repo_id}: could not download {filename} from the Hugging Face hub "
            f"({type(err).__name__}: {err}); without network, pass a local folder"
        ) from err


def _resolve_files(dir_or_hub_id: str | Path, revision: str | None,
                   cache_dir: str | Path | None) -> tuple[Path, Path | None]:
    """``(weights file, config.json or None)`` of a folder, a weights file or a hub id."""
    source = str(dir_or_hub_id)
    path = Path(dir_or_hub_id).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            others = [path / n for n in _STATE_DICT_NAMES if (path / n).is_file()]
            if not others:
                raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} (nor "
                                        f"{', '.join(_STATE_DICT_NAMES)})")
            weights = others[0]
        return weights, path / CONFIG_NAME
    if path.is_file():
        return path, path.parent / CONFIG_NAME
    if is_hub_id(source):
        weights_path = _hub_download(source, WEIGHTS_NAME, revision, cache_dir)
        assert weights_path is not None
        return weights_path, _hub_download(source, CONFIG_NAME, revision, cache_dir,
                                           optional=True)
    raise FileNotFoundError(f"{source!r} is neither a local path nor a hub id 'owner/name'")


# --------------------------------------------------------------------------- converting


def _convert_3d(sd: dict[str, torch.Tensor], model: ViTLike,
                pos_embed_grid: Sequence[int] | None) -> list[str]:
    """Resample a 3D checkpoint's positional embedding and in-plane kernel in place."""
    notes: list[str] = []
    reference = model.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape != reference["pos_embed"].shape:
        n_ckpt = pos.shape[1] - 1
        grid = tuple(pos_embed_grid) if pos_embed_grid is not None else _infer_grid(n_ckpt, model)
        if grid is None:
            raise ValueError(
                f"cannot infer the grid of a positional embedding with {n_ckpt} patch "
                f"positions for a model with grid {model.grid_size}; pass pos_embed_grid"
            )
        sd["pos_embed"] = torch.cat(
            (pos[:, :1], resample_pos_embed(pos[:, 1:], grid, model.grid_size)), dim=1
        )
        notes.append(f"pos_embed: grid {grid} resampled to {tuple(model.grid_size)}")
    kernel = sd.get("patch_embed.proj.weight")
    pd, ph, pw = model.patch_size
    if kernel is not None and kernel.ndim == 5 and tuple(kernel.shape[3:]) != (ph, pw):
        if kernel.shape[2] != pd:
            raise ValueError(f"patch_embed.proj.weight {tuple(kernel.shape)}: patch depth "
                             f"{kernel.shape[2]} differs from the model's {pd}")
        sd["patch_embed.proj.weight"] = resample_patch_embed(kernel, (ph, pw))
        notes.append(f"patch_embed.proj.weight: in-plane patch {tuple(kernel.shape[3:])} -> "
                     f"{(ph, pw)} (FlexiViT pseudo-inverse resize)")
    return notes


def _infer_grid(n: int, model: ViTLike) -> tuple[int, int, int] | None:
    t, h, w = model.grid_size
    if n % t == 0 and (side := square_side(n // t)) is not None:
        return (t, side, side)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    return None


def _convert(state_dict: Mapping[str, torch.Tensor], model: ViTLike, *, prefix: str | None,
             strict: bool, pos_embed_grid: Sequence[int] | None, depth_rule: DepthRule,
             old_grid: Sequence[int] | None, source: str) -> tuple[dict[str, torch.Tensor],
                                                                   LoadReport]:
    reference = model.state_dict()
    sd, found = select_backbone(state_dict, known_names(model), prefix)
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4:
        layout = "2d"
        sd, notes = convert_2d(sd, model, depth_rule=depth_rule, old_grid=old_grid,
                               strict=strict)
    else:
        layout = "3d"
        notes = _convert_3d(sd, model, pos_embed_grid)
    # a 2D ViT has no mask token (timm): the model keeps its own, reported as new
    fill = layout == "2d" and "mask_token" not in sd and "mask_token" in reference
    checked = {**sd, "mask_token": reference["mask_token"]} if fill else sd
    report = check_against_model(
        checked, reference, allow_missing=not strict,
        allow_unexpected=True if not strict else HEAD_PREFIXES,
    )
    if fill:
        report.loaded.remove("mask_token")
        report.missing = sorted([*report.missing, "mask_token"])
    report.source, report.prefix, report.layout, report.conversions = source, found, layout, notes
    loaded = {k: checked[k] for k in report.loaded}
    return loaded, report


def convert_dinov2_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    model: ViTLike,
    *,
    pos_embed_grid: Sequence[int] | None = None,
    prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Map a DINOv2-style 3D backbone state dict onto ``model``'s keys and shapes.

    Accepts bare DINOv2 names (``patch_embed.proj``, ``cls_token``, ``register_tokens``,
    ``mask_token``, ``pos_embed``, ``blocks.{i}.*``, ``norm``) under any prefix (found by
    name, see :func:`~tapct_vit3d._state_dict.find_prefix`, or given), in DINOv2's chunked
    ``blocks.{chunk}.{i}`` layout; heads are dropped. A positional embedding learned on
    another grid is resampled to ``model.grid_size``.

    Args:
        state_dict: Tensors by name; ``pos_embed (1, 1 + N_ckpt, E)``.
        model: Target model (only its keys, shapes and grid are read).
        pos_embed_grid: Grid ``(t, h, w)`` of the checkpoint's positional embedding when it
            differs from the model's and cannot be inferred (inference tries the model's
            ``t`` with a square in-plane grid, then the model's ``h, w``).
        prefix: The backbone's key prefix (e.g. ``"vit."``); None detects it.

    Returns:
        A dict with exactly ``model.state_dict()``'s keys and shapes.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (listed by name), an
            unsupported layer type, or a positional grid that cannot be inferred.
    """
    sd, _ = select_backbone(state_dict, known_names(model), prefix)
    sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    _convert_3d(sd, model, pos_embed_grid)
    check_against_model(sd, model.state_dict())
    return sd


def load_weights(
    model: ViTLike,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    strict: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    pos_embed_grid: Sequence[int] | None = None,
    depth_rule: DepthRule = "mean",
    old_grid: Sequence[int] | None = None,
) -> LoadReport:
    """Load weights of any supported layout into ``model`` in place, and say what happened.

    The source may be a model folder, a weights file (``.safetensors`` or a state dict
    ``.pth``/``.pt``/``.bin``), a hub id, or tensors. The backbone is found by its names
    (``prefix``), then: a 2D kernel ``(E, C, ph, pw)`` means a 2D DINOv2/timm ViT, which
    is inflated (:func:`~tapct_vit3d.inflate_2d_state_dict`'s conversions, kernel
    resampled when the in-plane patch differs); a 3D checkpoint gets its positional
    embedding and in-plane kernel resampled to the model's grid and patch.

    Args:
        model: The model to load into (a ``VisionTransformer3d``).
        source: Folder, file, hub id or a mapping of tensors.
        prefix: The backbone's key prefix in the checkpoint (``"vit."``, ``""`` for none);
            None detects it.
        strict: Raise if the model has parameters the checkpoint lacks (a 2D ViT's
            missing mask token excepted) or the checkpoint has names besides heads;
            False loads what fits and reports the rest (initialising pretraining).
        revision: Hub revision for hub ids.
        cache_dir: Hub cache folder for hub ids.
        pos_embed_grid: Grid ``(t, h, w)`` of a 3D checkpoint's positional embedding if
            it cannot be inferred.
        depth_rule: Kernel inflation rule of 2D checkpoints (``"mean"`` or ``"center"``).
        old_grid: 2D grid ``(h0, w0)`` of a 2D checkpoint's positional embedding if not
            square.

    Returns:
        A :class:`~tapct_vit3d.LoadReport`: prefix, layout, loaded/missing/unexpected
        names and the conversions made.

    Raises:
        FileNotFoundError: A local path that does not exist.
        OSError: A hub id not in the cache when offline, or not downloadable.
        ValueError: An unreadable file, no backbone found, shape mismatches (e.g. another
            width), or (``strict``) missing or unexpected names, each listed.
    """
    if isinstance(source, Mapping):
        tensors, name = dict(source), "state dict"
    else:
        weights, _ = _resolve_files(source, revision, cache_dir)
        tensors, name = read_state_dict(weights), str(source)
    loaded, report = _convert(tensors, model, prefix=prefix, strict=strict,
                              pos_embed_grid=pos_embed_grid, depth_rule=depth_rule,
                              old_grid=old_grid, source=name)
    load = getattr(model, "load_state_dict")  # noqa: B009 - ViTLike leaves it out
    load(loaded, strict=not report.missing)
    return report


# --------------------------------------------------------------------------- building


def _resolve_config(model_cls: type, config: Mapping[str, Any] | None, preset: str | None,
                    source: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if preset is not None:
        return preset_config(preset, **overrides)
    params = set(inspect.signature(model_cls).parameters)
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
        f"{source!r} has no config.json describing a {model_cls.__name__}; pass preset=NAME "
        "(see tapct_vit3d.list_models())"
    )


def from_pretrained(
    model_cls: type[M],
    dir_or_hub_id: str | Path,
    *,
    preset: str | None = None,
    prefix: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    pos_embed_grid: Sequence[int] | None = None,
    **overrides: Any,
) -> M:
    """Build ``model_cls`` from a folder, a weights file or a hub id, and load its weights.

    The architecture comes from ``preset`` (plus ``overrides``) when given, else from
    ``config.json`` (ours, or one with Hugging Face-style keys such as ``hidden_size``),
    else from :data:`KNOWN_RELEASES` for the released TAP-CT hub ids. Weights are loaded
    with :func:`load_weights` (``strict=True``: every parameter of the model must come
    from the checkpoint; heads are dropped).

    Args:
        model_cls: The class to build (``VisionTransformer3d``).
        dir_or_hub_id: Local folder with ``model.safetensors`` (+ ``config.json``), a
            weights file, or a hub id ``owner/name`` (cache first; ``HF_HUB_OFFLINE=1``
            never touches the network).
        preset: Preset name to build instead of reading ``config.json``.
        prefix: Backbone key prefix in the checkpoint; None detects it.
        revision: Hub revision (branch, tag or commit) for hub ids.
        cache_dir: Hub cache folder for hub ids (default: ``HF_HUB_CACHE``).
        map_location: Device of the returned model.
        pos_embed_grid: Grid of the checkpoint's positional embedding if not inferable.
        **overrides: Constructor arguments replacing the config's (e.g. ``drop_path_rate``).

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: A local path without weights.
        ValueError: No architecture can be resolved, a file that is not plain tensors, or
            weights that do not match (names listed).
        OSError: A hub id not in the cache while offline, or not downloadable; the
            message says how to load a local copy instead.
    """
    source = str(dir_or_hub_id)
    weights, config_path = _resolve_files(dir_or_hub_id, revision, cache_dir)
    config = None
    if config_path is not None and config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    kwargs = _resolve_config(model_cls, config, preset, source, overrides)
    model = model_cls(**kwargs)
    load_weights(model, read_state_dict(weights), prefix=prefix,  # type: ignore[arg-type]
                 pos_embed_grid=pos_embed_grid)
    return model.to(map_location).eval()


# --------------------------------------------------------------------------- writing


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | Path,
    metadata: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` (``model.config``) and a model card.

    Files are written to temporary names and renamed, so an interrupted save never leaves a
    truncated file under the final name.

    Args:
        model: The model to save; it must have a JSON-able ``config`` dict of its
            constructor arguments (``VisionTransformer3d`` has).
        save_directory: Folder, created if missing.
        metadata: Extra JSON-serialisable information stored under the key
            :data:`METADATA_KEY` (``"tapct"``) of ``config.json``, e.g. the intensity
            statistics the model was trained with: ``{"normalize": {"lower": ...}}``.
            :func:`read_model_metadata` returns it; loading ignores it.
        model_card: Keyword arguments of :func:`write_model_card` (``base_model``,
            ``training``, ``data``, ``tags``, ...) to write ``README.md``; None writes
            no card.

    Returns:
        The folder as a ``Path``.

    Raises:
        TypeError: If ``model`` has no ``config`` dict, or ``metadata`` is not a
            JSON-serialisable mapping.
    """
    from safetensors.torch import save_file

    model_config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(model_config, dict):
        raise TypeError(f"model must be a module with a config dict (a VisionTransformer3d), "
                        f"got {type(model).__name__}")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {"architecture": type(model).__name__, "library": "tapct_vit3d", **model_config}
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
    if model_card is not None:
        write_model_card(folder, config=model_config, metadata=metadata, **model_card)
    return folder


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, default=str) + "\n```"


def write_model_card(
    save_directory: str | Path,
    *,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    training: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    license: str = "other",
    title: str | None = None,
) -> Path:
    """Write a Hugging Face model card ``README.md`` (YAML front matter + a description).

    The front matter (``huggingface_hub.ModelCardData``) holds ``library_name:
    tapct_vit3d``, ``tags`` (``tapct``, ``ct``, ``medical-imaging``, ``3d``,
    ``vision-transformer``, ``dinov2``, ``feature-extraction`` and ``tags``), ``license``
    (a placeholder, ``other``, until the owner chooses one) and ``base_model`` when the
    model was initialised from a hub id. The body gives the architecture, how to load
    the model, the intensity normalisation (HU window, mean, std) from ``metadata``,
    the training configuration and the data statistics.

    Args:
        save_directory: The model folder (created if missing).
        config: The model's constructor arguments (``model.config``).
        metadata: The model's ``config.json`` metadata, e.g. ``{"normalize": {"lower":
            -1008.0, "upper": 822.0, "mean": -86.8, "std": 322.6}}`` (HU).
        base_model: What the weights were initialised from: a hub id goes into the
            front matter, any other source (a file) only into the body.
        training: The training configuration (JSON-able), written as a JSON block.
        data: Data statistics (scans, samples seen, sources, ...), a key-value table.
        tags: Extra tags.
        license: The license id of the front matter.
        title: The card's heading (default: the folder name).

    Returns:
        The path of ``README.md``.
    """
    from huggingface_hub import ModelCardData

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    all_tags = ["tapct", "ct", "medical-imaging", "3d", "vision-transformer", "dinov2",
                "feature-extraction", *[t for t in tags if t]]
    card_data = ModelCardData(
        library_name="tapct_vit3d",
        license=license,
        tags=list(dict.fromkeys(all_tags)),
        pipeline_tag="image-feature-extraction",
        base_model=base_model if base_model and is_hub_id(base_model) else None,
    )
    name = title or folder.resolve().name
    patch, img = config.get("patch_size"), config.get("img_size")
    lines = [
        "---", card_data.to_yaml(), "---", "", f"# {name}", "",
        "A 3D Vision Transformer for CT (TAP-CT: DINOv2 pretraining on CT volumes), "
        "saved by `tapct_vit3d`.", "",
        "## Architecture", "",
        "| | |", "|---|---|",
        f"| width / depth / heads | {config.get('embed_dim')} / {config.get('depth')} / "
        f"{config.get('num_heads')} |",
        f"| patch (pd, ph, pw) voxels | {patch} |",
        f"| positional-embedding grid: input (D, H, W) voxels | {img} (any multiple of the "
        "patch works: the grid is interpolated; the training crops are in the data table) |",
        f"| register tokens | {config.get('num_register_tokens')} |", "",
        "## Usage", "",
        "```python",
        "from tapct_vit3d import load_pretrained",
        f'model = load_pretrained("{name}")  # a folder or a hub id',
        "feats, = model.get_intermediate_layers(x, n=1, reshape=True)  # (B, E, t, h, w)",
        "```", "",
        "Command line: `tapct embed SCANS --model FOLDER_OR_HUB_ID -o OUT`.", "",
        "## Intensity normalisation", "",
    ]
    normalize = (metadata or {}).get("normalize")
    if isinstance(normalize, Mapping):
        lines += [
            f"Inputs are CT volumes in Hounsfield units (HU), clipped to "
            f"[{normalize.get('lower')}, {normalize.get('upper')}] HU, then standardised "
            f"with mean {normalize.get('mean')} HU and std {normalize.get('std')} HU: "
            "`(clip(x) - mean) / std`. `tapct embed` reads these values from config.json.",
            "",
        ]
    else:
        lines += ["Not recorded with the model: `tapct` uses the TAP-CT paper's values "
                  "(`tapct_data.NormalizeConfig` defaults).", ""]
    lines += ["## Initialisation", ""]
    lines += [f"Initialised from `{base_model}`." if base_model
              else "Randomly initialised (no base model).", ""]
    if data:
        lines += ["## Data statistics", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in data.items()]
        lines += [""]
    if training:
        lines += ["## Training configuration", "", _json_block(dict(training)), ""]
    lines += ["## License", "",
              f"`{license}` is a placeholder: set the license of these weights before "
              "publishing them.", ""]
    path = folder / MODEL_CARD_NAME
    tmp = folder / (MODEL_CARD_NAME + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def read_model_metadata(
    dir_or_hub_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The extra metadata :func:`save_pretrained` stored in a model's ``config.json``.

    Args:
        dir_or_hub_id: A model folder, its weights file, or a hub id.
        revision: Hub revision for hub ids.
        cache_dir: Hub cache folder for hub ids.

    Returns:
        The ``"tapct"`` object of ``config.json`` (e.g. ``{"normalize": {...}}``), or ``{}``
        when the model has no ``config.json`` or the file has no such key (models saved
        before metadata existed, the released DINOv2-style checkpoints).

    Raises:
        ValueError: A ``config.json`` that is not valid JSON or whose ``"tapct"`` value is
            not an object (the message names the file).
        OSError: A hub id whose ``config.json`` could not be fetched (offline and not
            cached, or the hub unreachable).
        FileNotFoundError: Neither a local path nor a hub id.
    """
    source = str(dir_or_hub_id)
    path = Path(dir_or_hub_id).expanduser()
    config_path: Path | None
    if path.is_dir():
        config_path = path / CONFIG_NAME
    elif path.is_file():
        config_path = path.parent / CONFIG_NAME
    elif is_hub_id(source):
        config_path = _hub_download(source, CONFIG_NAME, revision, cache_dir, optional=True)
        if config_path is None:
            return {}
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
