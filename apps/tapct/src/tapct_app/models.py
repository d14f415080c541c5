"""Every ``--model`` and ``--init`` goes through here: a folder, a file, a preset or a hub id.

- ``--model`` of ``embed``, ``benchmark`` and ``retrieve``: :func:`load_backbone`.
- ``tapct pretrain --init``: :func:`init_backbone` (2D DINOv2/timm state dicts too).

A hub id ``owner/name`` is read from the Hugging Face cache (``HF_HOME`` /
``HF_HUB_CACHE``) or downloaded with ``huggingface_hub``; with ``HF_HUB_OFFLINE=1`` the
network is never used and a model missing from the cache is a one-line error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from tapct_app.errors import UserError, one_line

if TYPE_CHECKING:
    from tapct_vit3d import LoadReport, VisionTransformer3d

__all__ = [
    "RANDOM_INIT_SEED",
    "check_init_source",
    "init_backbone",
    "init_pretraining",
    "load_backbone",
    "seeded_init",
]

# SafetensorError: a truncated or garbage model.safetensors (header or data shorter than
# it says).
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError)


#: Seed of the random weights of a preset (or a timm/MONAI encoder) named as ``--model``:
#: a random baseline is the same network on every call, so ``embed`` resumes and
#: ``benchmark`` seeds reproduce.
RANDOM_INIT_SEED = 0


@contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Build random weights from ``seed`` without touching the caller's random state.

    Args:
        seed: The seed of the initialisation.

    Yields:
        Nothing; models built inside get the same weights on every call.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_backbone(spec: str, device: Any = "cpu") -> tuple[VisionTransformer3d, dict[str, Any]]:
    """Resolve ``--model SPEC`` into a backbone and the metadata saved with it.

    Order: an existing local path (a ``save_pretrained`` folder or a weights file:
    ``.safetensors``, or a state dict ``.pth``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)``), then a ``tapct_vit3d`` preset name (random
    weights from :data:`RANDOM_INIT_SEED`, the same on every call: a baseline, warned),
    then a hub id ``owner/name``.

    Args:
        spec: The ``--model`` value.
        device: Where to put the model.

    Returns:
        ``(model, metadata)``: a ``tapct_vit3d.VisionTransformer3d`` in eval mode on
        ``device``, and the ``"tapct"`` object of its ``config.json`` (e.g.
        ``{"normalize": {"lower", "upper", "mean", "std"}}`` in HU; ``{}`` for a preset,
        a released checkpoint or a model saved without metadata).

    Raises:
        UserError: A folder or file without a readable model, a hub id that is not
            cached while offline or cannot be downloaded, or a name that is none of these
            (one line, naming ``spec``).
    """
    from tapct_vit3d import (
        create_model,
        is_hub_id,
        list_models,
        load_pretrained,
        read_model_metadata,
    )

    path = Path(spec).expanduser()
    if path.exists():
        try:
            model = load_pretrained(path, map_location="cpu")
            metadata = read_model_metadata(path)
        except _LOAD_ERRORS as exc:
            hint = ""
            if path.is_file() and path.suffix == ".pt":
                hint = (
                    "; a training checkpoint? export its backbone first: "
                    "tapct export RUN_OR_CHECKPOINT -o MODEL_DIR"
                )
            raise UserError(f"{path}: cannot load a model: {one_line(exc)}{hint}") from exc
    elif spec in list_models():
        warnings.warn(
            f"--model {spec}: a preset name gives RANDOM weights (a baseline, seeded: the "
            "same on every call); pass the folder written by `tapct pretrain` "
            "(OUTPUT/model) for a trained encoder",
            UserWarning,
            stacklevel=2,
        )
        with seeded_init():
            model, metadata = create_model(spec), {}
    elif is_hub_id(spec):
        try:
            model = load_pretrained(spec, map_location="cpu")
            metadata = read_model_metadata(spec)
        except _LOAD_ERRORS as exc:
            raise UserError(
                f"{spec}: no such local folder; as a hub id: {_strip_source(exc, spec)}"
            ) from exc
    else:
        raise UserError(
            f"{spec}: not a model folder or file, not a hub id owner/name and not a preset "
            f"({', '.join(list_models())})"
        )
    return model.to(device).eval(), metadata


def _strip_source(exc: BaseException, spec: str) -> str:
    text = one_line(exc)
    return text[len(spec) + 2:] if text.startswith(f"{spec}: ") else text


def check_init_source(source: str) -> None:
    """Refuse an ``--init`` that is neither an existing path nor a hub id, before any work.

    Args:
        source: The ``--init`` value.

    Raises:
        UserError: ``source: no such file or directory (and not a hub id owner/name)``.
    """
    from tapct_vit3d import is_hub_id

    if not Path(source).expanduser().exists() and not is_hub_id(source):
        raise UserError(f"{source}: no such file or directory (and not a hub id owner/name)")


def init_backbone(model: VisionTransformer3d, source: str) -> LoadReport:
    """Load ``tapct pretrain --init SOURCE`` into a freshly built student backbone.

    ``SOURCE`` is a tapct model folder, a hub id, or a weights file: ours, a DINOv2-style
    3D checkpoint (a training checkpoint's teacher is found by name), or a 2D
    DINOv2/timm ViT state dict (``.pth``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``), which is inflated to 3D:
    kernel resampled to the model's in-plane patch (FlexiViT) and inflated over depth,
    positional embedding resampled. What the checkpoint lacks (registers, a mask token)
    keeps the model's initialisation; what the model lacks (heads, deeper blocks) is
    left out. Both are in the returned report.

    Args:
        model: The student backbone (``tapct_vit3d.VisionTransformer3d``), loaded in place.
        source: The ``--init`` value.

    Returns:
        The ``tapct_vit3d.LoadReport`` (its ``lines()`` go to the log).

    Raises:
        UserError: A missing path, a hub id not available, an unreadable file, a
            checkpoint of another width or patch depth, or one with no tensor of the model.
    """
    check_init_source(source)
    path = Path(source).expanduser()
    try:
        report = model.load_weights(path if path.exists() else source, strict=False)
    except _LOAD_ERRORS as exc:
        raise UserError(f"{source}: --init: {_strip_source(exc, source)}") from exc
    if not report.loaded:
        raise UserError(f"{source}: --init: no tensor of the model in the checkpoint")
    return report


def init_pretraining(objective: Any, source: str, console: Any = None) -> LoadReport:
    """Start a new run's student and teacher from ``--init SOURCE`` (:func:`init_backbone`).

    The student backbone is loaded, then the teacher backbone copies it (DINOv2 starts
    the teacher equal to the student). The DINO and iBOT heads stay newly initialised.

    Args:
        objective: The ``tapct_ssl.DINOv2Objective`` (``student_backbone`` and
            ``teacher_backbone`` properties).
        source: The ``--init`` value.
        console: A rich console for the report lines (printed literally), or None.

    Returns:
        The ``tapct_vit3d.LoadReport``.

    Raises:
        UserError: As :func:`init_backbone`.
    """
    import torch

    student, teacher = objective.student_backbone, objective.teacher_backbone
    report = init_backbone(student, source)
    with torch.no_grad():
        teacher.load_state_dict(student.state_dict(), strict=True)
    if console is not None:
        for line in [*report.lines(), "new: the DINO and iBOT heads (not part of a backbone)",
                     "the teacher starts as a copy of the initialised student"]:
            console.print(f"--init: {line}", markup=False, highlight=False, soft_wrap=True)
    return report
