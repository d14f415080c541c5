"""Building the parts of a pretraining run from its config (no training, no I/O of results).

Each ``build_*`` turns one section of :class:`~tapct_app.train.config.PretrainConfig`
into a library object: the backbone (``tapct_vit3d``), the DINOv2 objective and its
optimizer and schedules (``tapct_ssl``), the multi-crop augmentation and the loader's
collate that draws its parameters and the masks in the workers (``tapct_data``), and
the data: sources -> zarr store -> slab dataset (:func:`build_data`, the one place where
the data and its normalisation are set up). :func:`build_parts` assembles what the
training step needs into a :class:`TrainParts` record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from tapct_data.normalize import NormalizeConfig
from torch import nn
from torch.utils.data import Dataset

from tapct_app.config_file import check_value_types
from tapct_app.errors import UserError
from tapct_app.train.config import PretrainConfig
from tapct_app.train.data import (
    IterationBatchSampler,
    derive_seed,
    prepare_stores,
    write_demo_phantoms,
)
from tapct_app.train.distributed import DistInfo, barrier

if TYPE_CHECKING:  # the libraries are imported lazily, for a fast CLI start
    from tapct_data import MultiCropAugmentation, MultiCropParams, PretrainSlabDataset
    from tapct_ssl import DINOv2Objective, Schedules, iBOTMaskIndex
    from tapct_vit3d import VisionTransformer3d

__all__ = [
    "LoaderBatch",
    "TrainParts",
    "WorkerCollate",
    "build_augmentation",
    "build_backbone",
    "build_data",
    "build_loader",
    "build_objective",
    "build_optim_config",
    "build_parts",
    "loader_workers",
    "objective_config",
    "wrap_ddp",
]


def build_backbone(config: PretrainConfig) -> VisionTransformer3d:
    """Create the student backbone from the config's model section.

    Args:
        config: The run config.

    Returns:
        A ``tapct_vit3d.VisionTransformer3d`` (activation checkpointing as
        ``model.grad_checkpointing`` says).

    Raises:
        UserError: If the preset is unknown or an override is rejected.
    """
    from tapct_vit3d import create_model

    kwargs = dict(config.model.overrides)
    kwargs.setdefault("drop_path_rate", config.model.drop_path_rate)
    try:
        backbone = create_model(config.model.name, **kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"model {config.model.name!r}: {exc}") from exc
    every = config.model.grad_checkpointing
    backbone.set_grad_checkpointing(every > 0, every=max(every, 1))
    return backbone


def objective_config(config: PretrainConfig) -> Any:
    """Build the ``tapct_ssl.DINOv2ObjectiveConfig`` from the ``objective`` section.

    Args:
        config: The run config.

    Returns:
        The objective config (paper defaults for absent keys).

    Raises:
        UserError: If the section has an unknown or invalid key.
    """
    from tapct_ssl import DINOv2ObjectiveConfig

    check_value_types(DINOv2ObjectiveConfig, config.objective, "objective")
    try:
        return DINOv2ObjectiveConfig(**config.objective)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section 'objective': {exc}") from exc


def build_objective(config: PretrainConfig, backbone: nn.Module) -> DINOv2Objective:
    """Wrap the backbone in the DINOv2 objective (student, EMA teacher, heads, losses).

    Args:
        config: The run config.
        backbone: The student backbone.

    Returns:
        A ``tapct_ssl.DINOv2Objective``.

    Raises:
        UserError: If the ``objective`` section has an unknown or invalid key.
    """
    from tapct_ssl import DINOv2Objective

    return DINOv2Objective(backbone, objective_config(config))


def build_optim_config(config: PretrainConfig) -> Any:
    """Build the ``tapct_ssl.OptimConfig`` of the run from the ``optim`` section.

    Args:
        config: The run config.

    Returns:
        A ``tapct_ssl.OptimConfig`` (paper defaults for absent keys).

    Raises:
        UserError: If the section has an unknown or invalid key.
    """
    from tapct_ssl import OptimConfig

    check_value_types(OptimConfig, config.optim, "optim")
    try:
        return OptimConfig(**config.optim)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section 'optim': {exc}") from exc


@attrs.frozen
class LoaderBatch:
    """One micro-batch as the DataLoader delivers it: slabs plus everything random.

    Crop boxes, gamma, blur and iBOT masks are drawn on the CPU in the DataLoader worker
    (:class:`WorkerCollate`), the mask indices computed there too, so the step on the
    device only applies them (no host sync).

    Attributes:
        slabs: ``(B, 1, S, H0, W0)`` int16 HU as stored (normalised on the device by
            the step).
        params: ``tapct_data.MultiCropParams`` drawn for these slabs.
        masks: ``(2B, N)`` bool iBOT masks of the global crops.
        mask_index: ``tapct_ssl.ibot_mask_indices(masks)``.
        seed: The micro-batch's seed (crops, masks and drop path), a function of the run
            seed and its first sample index only, so it is the same on any number of
            processes and after a resume.
    """

    slabs: torch.Tensor
    params: MultiCropParams
    masks: torch.Tensor
    mask_index: iBOTMaskIndex
    seed: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LoaderBatch:
        """All tensors on ``device``."""
        return LoaderBatch(
            slabs=self.slabs.to(device, non_blocking=non_blocking),
            params=self.params.to(device, non_blocking=non_blocking),
            masks=self.masks.to(device, non_blocking=non_blocking),
            mask_index=self.mask_index.to(device, non_blocking=non_blocking),
            seed=self.seed,
        )

    def pin_memory(self) -> LoaderBatch:
        """Pinned copy (the DataLoader calls it with ``pin_memory=True``)."""
        index = self.mask_index
        return LoaderBatch(
            slabs=self.slabs.pin_memory(),
            params=self.params.pin_memory(),
            masks=self.masks.pin_memory(),
            mask_index=type(index)(index.indices.pin_memory(), index.weights.pin_memory(),
                                   index.n_images),
            seed=self.seed,
        )  # fmt: skip


def _check_crop_sizes(config: PretrainConfig, patch_size: tuple[int, int, int]) -> None:
    for size in (config.crops.global_crops_size, config.crops.local_crops_size):
        if any(s % q for s, q in zip(size, patch_size, strict=True)):
            raise UserError(f"crop size {size} is not a multiple of patch size {patch_size}")


def build_augmentation(config: PretrainConfig) -> MultiCropAugmentation:
    """The multi-crop augmentation of the ``crops`` section (``tapct_data``).

    Args:
        config: The run config.

    Returns:
        A ``tapct_data.MultiCropAugmentation`` (``sample`` in workers, ``apply`` on the
        device).

    Raises:
        UserError: If the section has an invalid value.
    """
    from tapct_data import MultiCropAugmentation

    try:
        return MultiCropAugmentation(config.crops)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section 'crops': {exc}") from exc


class WorkerCollate:
    """The DataLoader's ``collate_fn``: stack slabs, draw crops' parameters and masks.

    Runs in the DataLoader workers (CPU, picklable). The generators of micro-batch
    ``[k0, k0 + 1, ...]`` are seeded from ``(seed, k0)``: the sample indices of a
    micro-batch are the same whatever the number of processes and after a resume
    (``IterationBatchSampler``), so its crops and masks are too.

    Args:
        config: The run config (``crops``, ``masking``, ``seed``).
        patch_size: The backbone's ``(pd, ph, pw)``; crop sizes must be multiples of it.

    Raises:
        UserError: If a crop size is not a multiple of the patch size.
    """

    def __init__(self, config: PretrainConfig, patch_size: tuple[int, int, int]) -> None:
        from tapct_data import MaskingGenerator3d

        _check_crop_sizes(config, patch_size)
        self.augmentation = build_augmentation(config)
        (gd, gh, gw), (pd, ph, pw) = config.crops.global_crops_size, patch_size
        grid = (gd // pd, gh // ph, gw // pw)
        self.mask_generator = MaskingGenerator3d.from_config(grid, config.masking)
        self.masking = config.masking
        self.seed = config.seed

    def __call__(self, samples: Sequence[tuple[int, torch.Tensor]]) -> LoaderBatch:
        """Collate ``(sample index, slab (1, S, H0, W0))`` pairs into a :class:`LoaderBatch`."""
        from tapct_data import collate_slabs
        from tapct_ssl import ibot_mask_indices

        seed = derive_seed(self.seed, "batch", int(samples[0][0]))
        batch = collate_slabs(
            [slab for _, slab in samples],
            self.augmentation,
            self.mask_generator,
            masking=self.masking,
            crops_generator=torch.Generator().manual_seed(derive_seed(seed, "crops")),
            masks_generator=torch.Generator().manual_seed(derive_seed(seed, "masks")),
        )
        return LoaderBatch(
            slabs=batch.slabs,
            params=batch.params,
            masks=batch.masks,
            mask_index=ibot_mask_indices(batch.masks),  # CPU: no device sync
            seed=seed,
        )


class _Keyed(Dataset):
    """``dataset[k] -> (k, dataset[k])``, so the collate knows the micro-batch's samples."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return int(index), self.dataset[index]


def build_data(
    config: PretrainConfig, output: Path, dist: DistInfo, console: Any = None
) -> tuple[PretrainSlabDataset, list[Path]]:
    """Sources -> zarr store (cached under ``output/cache``) -> normalised slab dataset.

    Rank 0 builds the store (or the demo phantoms); the other ranks wait, then open it.

    Args:
        config: The run config (``data`` section, ``seed``).
        output: The run directory.
        dist: This process's place in the job.
        console: A rich console for a short message, or None.

    Returns:
        ``(dataset, stores)``: the map-style dataset (index ``k`` -> slab
        ``(1, S, H0, W0)`` float32, clipped and z-normalised with
        ``config.data.normalize``; ``tapct_data.PretrainSlabDataset``) and the store paths
        (several stores or shards read as one dataset).

    Raises:
        UserError: If a source is missing, or a scan cannot be converted with
            ``data.on_error: stop``.
    """
    from tapct_data import AIR_HU, PretrainSlabDataset, is_zarr_store

    cache = output / "cache"
    sources: list[str] = list(config.data.sources)
    if not sources:  # the built-in demo: CT phantoms
        if dist.is_main:
            d = config.data
            write_demo_phantoms(cache / "phantoms", d.phantom_count, d.phantom_shape, config.seed)
        barrier()
        sources = [str(p) for p in sorted((cache / "phantoms").glob("phantom-*.nii.gz"))]
    if dist.is_main:
        if console is not None and not all(is_zarr_store(s) for s in sources):
            console.print(
                f"preparing the zarr store cache for {len(sources)} source(s)", style="dim"
            )
        store = prepare_stores(
            sources,
            cache,
            on_error=config.data.on_error,
            console=console,
            include=config.data.include,
            exclude=config.data.exclude,
        )
    barrier()
    if not dist.is_main:  # the main process has built the cache
        store = prepare_stores(
            sources, cache, convert=False, include=config.data.include, exclude=config.data.exclude
        )
    # int16 HU slabs as stored (resized on the CPU only when a scan's in-plane size is
    # not data.in_plane_size): the clip/normalise runs on the training device in the step
    # (TrainParts.normalize) and the in-plane resample is fused into the crops, so the
    # loader's CPU cost per sample is the read and decode (benchmarks/bench_ingest.py).
    dataset = PretrainSlabDataset(
        store,
        slab_depth=config.data.slab_depth,
        in_plane_size=config.data.in_plane_size,
        normalize=None,
        seed=config.seed,
    )
    short = dataset.short_scans()
    if short and console is not None and dist.is_main:
        names = ", ".join(f"{n} ({d})" for n, d in short[:3]) + (", ..." if len(short) > 3 else "")
        console.print(
            f"note: {len(short)} of {len(dataset.store)} scans have fewer slices than the "
            f"slab ({config.data.slab_depth}): {names}; their slabs are padded with air "
            f"({AIR_HU} HU); --exclude them or lower data.slab_depth",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    return dataset, store


def loader_workers(requested: int, console: Any = None) -> int:
    """``data.num_workers`` lowered to the cores this process may use, with a one-line note.

    Which worker loads a sample does not change it (samples and crops derive from the
    run seed and the sample index), so the result is the same with fewer workers.

    Args:
        requested: ``data.num_workers``.
        console: A rich console for the note, or None.

    Returns:
        ``min(requested, cores)`` (``os.sched_getaffinity``).
    """
    from tapct_app.preprocess import default_workers

    cores = default_workers()
    if requested <= cores:
        return requested
    if console is not None:
        console.print(
            f"note: data.num_workers={requested} is more than the {cores} cores available "
            f"to this process: using {cores} loader workers",
            style="dim", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    return cores


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C (a terminal sends it to the whole process group).

    On the first Ctrl-C the main process finishes its step and writes a checkpoint
    (``tapct_app.train.loop``), which may still need the workers' batches; the workers
    end with the loader.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(
    dataset: Any,
    sampler: IterationBatchSampler,
    collate: WorkerCollate,
    config: PretrainConfig,
    device: Any,
    num_workers: int | None = None,
) -> Iterator[LoaderBatch]:
    """An iterator over this rank's micro-batches (:class:`LoaderBatch`, CPU).

    Args:
        dataset: The slab dataset (index ``k`` -> slab ``(1, S, H0, W0)``).
        sampler: The iteration batch sampler (fixes the order, so resume is exact).
        collate: Draws crops' parameters and masks in the workers.
        config: The run config (``data.num_workers``).
        device: The training device (pinned memory on CUDA).
        num_workers: Loader processes in place of ``config.data.num_workers``
            (:func:`loader_workers`).

    Returns:
        The DataLoader's iterator.
    """
    from torch.utils.data import DataLoader

    workers = config.data.num_workers if num_workers is None else num_workers
    loader = DataLoader(
        _Keyed(dataset),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    return iter(loader)


@attrs.define(eq=False)
class TrainParts:
    """What one training step works on (built once per run by :func:`build_parts`).

    Attributes:
        objective: The DINOv2 objective (student, teacher, centers) on ``device``.
        model: What the step calls: the objective itself, or its DDP wrapper.
        optimizer: Fused AdamW over the student.
        schedules: ``tapct_ssl.Schedules`` over ``config.train.iterations``.
        augmentation: ``tapct_data.MultiCropAugmentation`` (``apply`` in the step).
        collate: The loader's :class:`WorkerCollate` (``sample`` and masks in workers).
        device: The training device.
        precision: ``auto``, ``bf16`` or ``fp32`` (autocast policy).
        clip_grad: Gradient-norm clip per student part (<= 0: none).
        seed: The run seed (micro-batch seeds derive from it).
        normalize: ``tapct_data.NormalizeConfig`` the step applies to the loader's int16
            HU slabs on the device (clip, then z-normalise) before the crops.
    """

    objective: DINOv2Objective
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    augmentation: MultiCropAugmentation
    collate: WorkerCollate
    device: torch.device
    precision: str
    clip_grad: float
    seed: int
    normalize: NormalizeConfig = attrs.field(factory=NormalizeConfig)

    @property
    def ddp(self) -> torch.nn.parallel.DistributedDataParallel | None:
        """The DDP wrapper, or None in a single process."""
        m = self.model
        return m if isinstance(m, torch.nn.parallel.DistributedDataParallel) else None


def build_parts(config: PretrainConfig, dist: DistInfo) -> TrainParts:
    """Build backbone, objective, optimizer, schedules and augmentation on ``dist.device``.

    The weights are initialised from ``derive_seed(config.seed, "init")`` so every rank
    starts identical. DDP wraps the objective when the job has several processes; call
    :func:`wrap_ddp` after loading a checkpoint.

    Args:
        config: The run config.
        dist: This process's place in the job.

    Returns:
        The parts (``model`` is the bare objective).

    Raises:
        UserError: For a bad model, objective or optim section, or bad crop sizes.
    """
    from tapct_ssl import build_optimizer, build_schedulers

    torch.manual_seed(derive_seed(config.seed, "init"))
    backbone = build_backbone(config)
    objective = build_objective(config, backbone).to(dist.device)
    if config.train.compile:  # after the teacher's deep copy: both compile their blocks
        from tapct_vit3d import VisionTransformer3d

        for model in (objective.student_backbone, objective.teacher_backbone):
            if isinstance(model, VisionTransformer3d):
                model.compile_blocks()
    optim_config = build_optim_config(config)
    collate = WorkerCollate(config, backbone.patch_size)
    schedules = build_schedulers(
        optim_config,
        config.train.iterations,
        global_batch_size=config.train.global_batch(dist.world_size),
    )
    return TrainParts(
        objective=objective,
        model=objective,
        optimizer=build_optimizer(objective, optim_config, dist.device),
        schedules=schedules,
        augmentation=collate.augmentation,
        collate=collate,
        device=dist.device,
        precision=config.precision,
        clip_grad=float(optim_config.clip_grad),
        seed=config.seed,
        normalize=config.data.normalize,
    )


def wrap_ddp(parts: TrainParts, dist: DistInfo) -> None:
    """Wrap the objective in DistributedDataParallel when the job has several processes.

    Args:
        parts: The parts; ``parts.model`` is replaced in place.
        dist: This process's place in the job.
    """
    if dist.distributed and parts.ddp is None:
        device = dist.device
        parts.model = torch.nn.parallel.DistributedDataParallel(
            parts.objective, device_ids=[device.index] if device.type == "cuda" else None
        )
