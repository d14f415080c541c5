"""Memory preflight of a pretraining run: refuse, in one line, a step that cannot fit.

Before the first step (and before the data cache is built) ``tapct pretrain`` compares
the step's memory from the model of "The training step: one clear path" with what the
device has free:

- **static**: fp32 weights of the student and the EMA teacher (backbones and heads),
  the student's gradients and AdamW's two moments: ``4 (P_s + P_t) + 4 P_s + 8 P_s``
  bytes for ``P_s`` student and ``P_t`` teacher parameters;
- **per sample**: what autograd keeps for backward during one training forward of the
  whole objective (student backbone on the global and local crops with the config's
  drop path, grad checkpointing, iBOT masking at the mean masked fraction, heads, losses,
  teacher targets), counted with ``saved_tensors_hooks`` under ``FakeTensorMode``
  (``tapct_vit3d.saved_tensor_bytes``: no data computed or allocated, seconds for
  TAP-B-3D) at two batch sizes, the slope; plus the slab as loaded (int16) and
  normalised (fp32). bf16 autocast on CUDA (``precision: auto``), fp32 on the CPU;
- **need** = static + per sample x ``train.batch_size`` (one micro-batch at a time).

The need is a lower bound of the peak (the backward's transient gradients, the
allocator's fragmentation and the loader's prefetched batches come on top), so a run it
refuses cannot fit. Free memory: ``torch.cuda.mem_get_info`` on CUDA; on the CPU the
host's ``MemAvailable`` (``/proc/meminfo``), capped by the cgroup's limit (a container's
``memory.max``). ``--set train.memory_check=false`` skips the check.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from tapct_app.errors import UserError
from tapct_app.train.config import PretrainConfig

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_memory",
    "estimate_step_memory",
    "memory_advice",
    "out_of_memory_message",
]

GIB = 2**30


@attrs.frozen
class MemoryEstimate:
    """The modelled memory of one training step.

    Attributes:
        static_bytes: Weights (student and teacher), gradients and AdamW moments.
        per_sample_bytes: Activations kept for backward plus the slab, per sample.
        batch_size: Samples per micro-batch.
    """

    static_bytes: float
    per_sample_bytes: float
    batch_size: int

    @property
    def total_bytes(self) -> float:
        """``static + per_sample x batch_size`` (a lower bound of the step's peak)."""
        return self.static_bytes + self.per_sample_bytes * self.batch_size


def _mean_mask_ratio(config: PretrainConfig) -> float:
    lo, hi = config.masking.mask_ratio[0], config.masking.mask_ratio[-1]
    return config.masking.mask_probability * (lo + hi) / 2


def estimate_step_memory(
    config: PretrainConfig,
    device: torch.device,
    batch_sizes: tuple[int, int] = (10, 20),
    available_bytes: float | None = None,
) -> MemoryEstimate:
    """Model the memory of one training step of ``config`` on ``device`` (no allocation).

    The objective is built on the meta device and materialised as fake tensors, then
    one forward is run under ``FakeTensorMode`` per batch size (see the module docstring).
    When ``available_bytes`` is given and a generous bound from the model's sizes alone
    (no forward) uses at most half of it, that bound is returned instead (a tiny model
    is not measured: the measurement costs about a millisecond per dispatched op).

    Args:
        config: The run config (model, objective, crops, masking, batch size, precision).
        device: The training device (selects bf16 autocast for ``precision: auto``).
        batch_sizes: The two batch sizes of the slope; ``B * (1 - drop_path_rate)``
            integers see subset drop path exactly.
        available_bytes: The free memory, or None to always measure.

    Returns:
        The :class:`MemoryEstimate`.

    Raises:
        UserError: A bad model or objective section.
    """
    from tapct_ssl import ibot_mask_indices
    from tapct_vit3d import saved_tensor_bytes
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tapct_app.train.build import build_backbone, build_objective

    with torch.device("meta"):
        backbone = build_backbone(config)
        objective = build_objective(config, backbone)
    n_student = sum(p.numel() for p in objective.student.parameters())
    n_teacher = sum(p.numel() for p in objective.teacher.parameters())
    static = 4.0 * (n_student + n_teacher) + 12.0 * n_student
    bound = _upper_bound_per_sample(config, backbone, objective)
    if available_bytes is not None and static + bound * config.train.batch_size <= (
        available_bytes / 2
    ):
        return MemoryEstimate(static, bound, config.train.batch_size)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        objective.to_empty(device="cpu")
    objective.train()
    crops = config.crops
    pd, ph, pw = backbone.patch_size
    gd, gh, gw = crops.global_crops_size
    n_tokens = (gd // pd) * (gh // ph) * (gw // pw)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    n_g = objective.config.n_global_crops
    totals = []
    for b in batch_sizes:
        masks = torch.zeros(n_g * b, n_tokens, dtype=torch.bool)
        masks[:, : max(1, round(n_tokens * _mean_mask_ratio(config)))] = True
        mask_index = ibot_mask_indices(masks)  # real (data-dependent shapes), tiny
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FakeTensor data_ptr deprecation
            with fake, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                g = torch.empty(n_g * b, 1, *crops.global_crops_size)
                loc = torch.empty(crops.local_crops_number * b, 1, *crops.local_crops_size)
                _, n_bytes = saved_tensor_bytes(
                    objective, g, loc, masks, 0.04, mask_index=mask_index
                )
        totals.append(n_bytes)
    per_sample = (totals[1] - totals[0]) / (batch_sizes[1] - batch_sizes[0])
    h0, w0 = config.data.in_plane_size
    per_sample += config.data.slab_depth * h0 * w0 * (2 + 4)  # int16 slab + fp32 normalised
    return MemoryEstimate(static, per_sample, config.train.batch_size)


def _upper_bound_per_sample(config: PretrainConfig, backbone: Any, objective: Any) -> float:
    """A generous bound of the bytes per sample, from the model's sizes alone (no forward).

    Per block and crop of ``T`` tokens, width ``E`` and ``h`` heads: ``68 T E + 10 h T^2``
    bytes (twice Korthikanti et al. 2022's mixed-precision count, attention scores
    materialised, no checkpointing); the heads' MLP and prototype scores for every
    crop's class token and every global patch token; all of it doubled.
    """
    cfg = objective.config
    e, h, depth = backbone.embed_dim, backbone.num_heads, len(backbone.blocks)
    extra = 1 + backbone.num_register_tokens
    pd, ph, pw = backbone.patch_size
    per_sample = 0.0
    crops = config.crops
    n_g = cfg.n_global_crops
    kinds = ((n_g, crops.global_crops_size), (crops.local_crops_number, crops.local_crops_size))
    for n, (d, hh, ww) in kinds:
        t = (d // pd) * (hh // ph) * (ww // pw) + extra
        per_sample += n * depth * (68.0 * t * e + 10.0 * h * t * t)
    n_crops = n_g + crops.local_crops_number
    n_patches = n_g * (kinds[0][1][0] // pd) * (kinds[0][1][1] // ph) * (kinds[0][1][2] // pw)
    heads = (
        (n_crops, cfg.dino_head_hidden_dim, cfg.dino_head_bottleneck_dim,
         cfg.dino_head_n_prototypes),
        (n_patches, cfg.ibot_head_hidden_dim, cfg.ibot_head_bottleneck_dim,
         cfg.ibot_head_n_prototypes),
    )  # fmt: skip
    for n, hidden, bottleneck, k in heads:
        per_sample += n * 4.0 * 2 * (3 * hidden + bottleneck + 4 * k)  # student and teacher
    h0, w0 = config.data.in_plane_size
    return 2.0 * per_sample + config.data.slab_depth * h0 * w0 * (2 + 4)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (a container), or None without a limit."""
    try:
        own = Path("/proc/self/cgroup").read_text().strip().splitlines()
        rel = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((folder / "memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """Free memory the step can use on ``device``.

    Args:
        device: The training device.

    Returns:
        ``(bytes or None when unknown, what was measured)``, e.g.
        ``(25769803776, "free on cuda:0")`` or ``(..., "available host memory")``.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    found = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    return (min(found) if found else None), "available host memory"


def memory_advice(config: PretrainConfig) -> str:
    """The options that lower a step's memory, as one clause.

    Args:
        config: The run config.

    Returns:
        E.g. ``"use a smaller --batch-size (now 32 per device; ...)"``.
    """
    every = config.model.grad_checkpointing
    ckpt = (
        "activation checkpointing of every block (--set model.grad_checkpointing=1)"
        if every != 1
        else "a smaller model (--preset tap_s_3d)"
    )
    return (
        f"use a smaller --batch-size (now {config.train.batch_size} per device; "
        f"--set train.accumulation_steps=N keeps the global batch), {ckpt}, or a small "
        "config (--config cpu_small)"
    )


def check_memory(config: PretrainConfig, device: torch.device) -> MemoryEstimate | None:
    """Refuse a run whose step cannot fit the device's free memory.

    Args:
        config: The run config (``train.memory_check: false`` skips the check).
        device: The training device.

    Returns:
        The estimate, or None when the check is skipped or the free memory is unknown.

    Raises:
        UserError: ``needs ~X GiB ... but Y GiB ... are available: <advice>``.
    """
    if not config.train.memory_check:
        return None
    available, what = available_memory(device)
    if available is None:
        return None
    estimate = estimate_step_memory(config, device, available_bytes=available)
    need = estimate.total_bytes
    if need <= available:
        return estimate
    per_sample = estimate.per_sample_bytes / GIB
    raise UserError(
        f"{config.model.name} at {config.train.batch_size} samples per micro-batch needs "
        f"~{need / GIB:.1f} GiB ({per_sample:.2f} GiB per sample + "
        f"{estimate.static_bytes / GIB:.1f} GiB weights and optimizer) but "
        f"{available / GIB:.1f} GiB {what} ({device}): {memory_advice(config)}; "
        "--set train.memory_check=false runs anyway"
    )


def out_of_memory_message(
    config: PretrainConfig, device: torch.device, iteration: int, checkpoint: Path | None
) -> str:
    """The one line that ends a run killed by a CUDA out-of-memory error.

    Args:
        config: The run config.
        device: The training device.
        iteration: The 0-based iteration that ran out of memory.
        checkpoint: The newest checkpoint (intact: written atomically), or None.

    Returns:
        The message, naming the device, the iteration, the advice and what resumes.
    """
    resume = (
        f"the last checkpoint {checkpoint} is intact and a rerun resumes from it"
        if checkpoint is not None
        else "no checkpoint was written yet"
    )
    return (
        f"out of memory on {device} at iteration {iteration} ({config.model.name}, "
        f"{config.train.batch_size} samples per micro-batch): {memory_advice(config)}; {resume}"
    )

