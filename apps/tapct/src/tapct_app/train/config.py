"""The pretraining configuration: paper defaults (Table 7), validation, schedule lengths.

A :class:`PretrainConfig` is a tree of small frozen attrs classes whose defaults are
the TAP-B-3D hyperparameters of the paper (Table 7, Appendix A.1).

The library components keep their own configs: the ``optim`` section is passed to
``tapct_ssl.OptimConfig`` (lr 0.0035 at batch 1024 with the sqrt rule, weight decay
0.04 -> 0.4, teacher momentum 0.992 -> 1.0, teacher temperature 0.04 -> 0.07, warm-ups,
clipping 3.0, layer-wise decay 0.9), the ``objective`` section to
``tapct_ssl.DINOv2ObjectiveConfig`` (loss weights, head sizes, centering), and the
``crops`` / ``masking`` sections are ``tapct_data.MultiCropConfig`` /
``tapct_data.MaskingConfig`` themselves (nested, no raw dicts). So every option of the libraries
is reachable from a YAML file, and the paper's defaults live in one place.

The batch size is per device and per micro-batch; the global batch is
``batch_size x world_size x accumulation_steps``. The schedules' warm-ups keep the
paper's proportions of the run, so a short run (the demo, a small dataset) keeps the
paper's shape.
"""

from __future__ import annotations

from typing import Any

import attrs
from tapct_data.masking import MaskingConfig
from tapct_data.multicrop import MultiCropConfig
from tapct_data.normalize import NormalizeConfig

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "TrainConfig",
]


def _tuple_of(kind: type, value: Any, length: int | None = None) -> tuple:
    """Turn a list (from YAML) into a tuple of ``kind``, of ``length`` items if given."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise TypeError(f"expected a sequence, got {value!r}")
    out = tuple(kind(v) for v in value)
    if length is not None and len(out) != length:
        raise ValueError(f"expected {length} values, got {len(out)}: {value!r}")
    return out


# attrs converters: named functions, so that mypy's attrs plugin knows the field types.
def _str_tuple(value: Any) -> tuple[str, ...]:
    return _tuple_of(str, value)


def _int_pair(value: Any) -> tuple[int, int]:
    a, b = _tuple_of(int, value, 2)
    return a, b


def _int_triple(value: Any) -> tuple[int, int, int]:
    a, b, c = _tuple_of(int, value, 3)
    return a, b, c


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, tuple):
        if any(v <= 0 for v in value):
            raise ValueError(f"{attribute.name} must be positive, got {value!r}")
    elif value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _fraction(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must lie in [0, 1], got {value!r}")


@attrs.frozen
class ModelConfig:
    """Which backbone to pretrain.

    Attributes:
        name: A ``tapct_vit3d`` preset (``tapct models`` lists them), e.g. ``tap_b_3d``.
        drop_path_rate: Stochastic depth rate; Table 7: 0.2 for ViT-B (0.1 for ViT-S).
        overrides: Extra keyword arguments for ``tapct_vit3d.create_model`` (e.g.
            ``{"img_size": [12, 224, 224]}``).
        grad_checkpointing: Activation checkpointing of the student's blocks
            (``VisionTransformer3d.set_grad_checkpointing``): ``false``/0 off,
            ``true``/1 every block (the least memory), ``N`` every N-th block. Trades
            about one extra forward of the blocks for most of their activation memory;
            the result is the same (the recomputation sees the same drop-path draws).
        init: Weights a new run starts the student and the teacher from
            (``tapct pretrain --init``): a tapct model folder, a hub id, or a weights file
            (ours, a DINOv2-style 3D checkpoint, or a 2D DINOv2/timm ViT state dict,
            inflated to 3D). None: random initialisation. A resumed run ignores it.
    """

    name: str = "tap_b_3d"
    drop_path_rate: float = attrs.field(default=0.2, validator=_fraction)
    overrides: dict = attrs.field(factory=dict, converter=dict)
    grad_checkpointing: int = attrs.field(
        default=0, converter=int, validator=attrs.validators.ge(0)
    )
    init: str | None = None


@attrs.frozen
class DataConfig:
    """Where the scans come from and how slabs are read.

    Attributes:
        sources: Zarr stores, folders of stores (shards), scan files, folders and list
            files; everything that is not a store is converted once into a zarr store
            cache under the output directory; all stores are read as one dataset.
            Empty means the built-in phantoms (the demo).
        slab_depth: Slices S per training sample read from the store; at least the
            crops' depth. Table 3: 12 slices for the 3D models.
        in_plane_size: ``(H0, W0)`` in-plane size of the slab the crops are taken from
            (voxels).
        num_workers: DataLoader worker processes (0 reads in the main process).
        on_error: ``"skip"`` (bad scans are left out of the cache and listed in its
            ``skipped.jsonl``) or ``"stop"`` (the first bad scan stops the run).
        phantom_count: Number of phantom scans generated for the demo.
        phantom_shape: ``(D, H, W)`` of each demo phantom.
        normalize: Clip window and mean/std in HU the slabs are normalised with
            (``tapct_data.NormalizeConfig``: ``lower``, ``upper``, ``mean``, ``std``;
            default the paper's values; ``tapct fingerprint`` computes a dataset's own,
            ``tapct pretrain --intensity-stats`` reads them). The exported model records
            them in its ``config.json``.
        include: Glob patterns; only matching files of ``sources`` are read
            (``tapct_data.expand_inputs``, ``--include``).
        exclude: Glob patterns; matching files are left out (``--exclude``, e.g.
            ``segmentations/*``).
    """

    sources: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    slab_depth: int = attrs.field(default=12, validator=_positive)
    in_plane_size: tuple[int, int] = attrs.field(
        default=(256, 256), converter=_int_pair, validator=_positive
    )
    num_workers: int = attrs.field(default=4, validator=attrs.validators.ge(0))
    on_error: str = attrs.field(default="skip", validator=attrs.validators.in_(("skip", "stop")))
    phantom_count: int = attrs.field(default=4, validator=_positive)
    phantom_shape: tuple[int, int, int] = attrs.field(
        default=(48, 96, 96), converter=_int_triple, validator=_positive
    )
    normalize: NormalizeConfig = attrs.field(factory=NormalizeConfig)
    include: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)


@attrs.frozen
class TrainConfig:
    """Length of the run and batch layout.

    Attributes:
        iterations: Optimizer steps of the whole run (Table 7: 125,000). The warm-ups of
            the ``optim`` section are rescaled to keep the paper's proportions (20 % lr
            warm-up, 30 % teacher-temperature warm-up, 1 % frozen last layer).
        batch_size: Samples per device per micro-batch (DINOv2's ``batch_size_per_gpu``).
        accumulation_steps: Micro-batches per optimizer step.
        compile: ``torch.compile`` the student's and the teacher's blocks
            (``VisionTransformer3d.compile_blocks``); the first steps are slower while
            each crop size compiles.
        memory_check: Before the first step, refuse a run whose modelled step memory
            exceeds the device's free memory (``tapct_app.train.memory``); false skips it.
    """

    iterations: int = attrs.field(default=125_000, validator=_positive)
    batch_size: int = attrs.field(default=16, validator=_positive)
    accumulation_steps: int = attrs.field(default=1, validator=_positive)
    compile: bool = False
    memory_check: bool = True

    def global_batch(self, world_size: int = 1) -> int:
        """Samples per optimizer step over all processes (the lr scales with it).

        Args:
            world_size: Number of data-parallel processes.

        Returns:
            ``batch_size * accumulation_steps * world_size``.

        Raises:
            ValueError: If ``world_size`` < 1.
        """
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        return self.batch_size * self.accumulation_steps * world_size


@attrs.frozen
class CheckpointConfig:
    """Checkpointing.

    Attributes:
        every: Write a checkpoint every this many iterations (and at the end).
        keep: Keep the last ``keep`` checkpoints.
    """

    every: int = attrs.field(default=1000, validator=_positive)
    keep: int = attrs.field(default=3, validator=_positive)


@attrs.frozen
class PretrainConfig:
    """Everything a pretraining run needs; defaults are the paper's TAP-B-3D (Table 7).

    Attributes:
        model: The backbone.
        data: Scans and slab reading.
        crops: Multi-crop augmentation.
        masking: iBOT masking.
        train: Run length and batch layout.
        optim: Keyword arguments of ``tapct_ssl.OptimConfig`` (lr, weight decay,
            momentum, temperatures, warm-ups, clipping, layer-wise decay; its iteration
            counts are relative to its ``total_iters`` and rescaled to
            ``train.iterations``); empty means the paper's values.
        objective: Keyword arguments of ``tapct_ssl.DINOv2ObjectiveConfig`` (loss
            weights, head sizes, centering); empty means the library's paper defaults.
        checkpoint: Checkpointing.
        seed: Seed of every random choice (data order, crops, masks, drop path).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        log_every: Write a metrics line every this many iterations.
    """

    model: ModelConfig = attrs.field(factory=ModelConfig)
    data: DataConfig = attrs.field(factory=DataConfig)
    crops: MultiCropConfig = attrs.field(factory=MultiCropConfig)
    masking: MaskingConfig = attrs.field(factory=MaskingConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    optim: dict = attrs.field(factory=dict, converter=dict)
    objective: dict = attrs.field(factory=dict, converter=dict)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    seed: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    device: str = "auto"
    precision: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "bf16", "fp32"))
    )
    log_every: int = attrs.field(default=10, validator=_positive)

    def __attrs_post_init__(self) -> None:
        g, loc = self.crops.global_crops_size, self.crops.local_crops_size
        if loc[0] != g[0]:
            raise ValueError(
                f"local crops must keep the global crops' depth (paper Appendix D): "
                f"global {g}, local {loc}"
            )
        if self.data.slab_depth < g[0]:
            raise ValueError(
                f"data.slab_depth={self.data.slab_depth} is smaller than the crops' depth {g[0]}"
            )
