"""Benchmark one DINOv2Objective step: where the time goes.

One optimisation step of ``tapct_ssl.DINOv2Objective`` on a tiny ``tapct_vit3d`` backbone
with 2 global + 8 local crops, split into teacher backbone / heads / targets, student
backbone / heads, losses (forward, from the objective's ``record_function`` labels via
``torch.profiler``), then backward, optimizer step and ``update`` (EMA + centers)
measured with ``time.perf_counter`` (CUDA synchronised when on a GPU).

Example:
    uv run python benchmarks/bench_ssl.py                      # paper heads (65536 prototypes)
    uv run python benchmarks/bench_ssl.py --prototypes 4096 --hidden 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import attrs
import torch
from tapct_ssl import DINOv2Objective, DINOv2ObjectiveConfig, get_params_groups, ibot_mask_indices
from tapct_vit3d import create_model
from torch.profiler import ProfilerActivity, profile

LABELS = (
    "tapct_ssl.teacher.backbone",
    "tapct_ssl.teacher.heads",
    "tapct_ssl.teacher.targets",
    "tapct_ssl.student.backbone",
    "tapct_ssl.student.heads",
    "tapct_ssl.losses",
)


def make_batch(
    n_images: int,
    n_local: int,
    global_size: tuple[int, int, int],
    local_size: tuple[int, int, int],
    patch: tuple[int, int, int],
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, Any]:
    """Random crops, masks and their mask index, crop-major (DINOv2's layout)."""
    grid = [g // p for g, p in zip(global_size, patch)]
    n_tokens = grid[0] * grid[1] * grid[2]
    globals_ = torch.randn(2 * n_images, 1, *global_size, generator=generator)
    locals_ = torch.randn(n_local * n_images, 1, *local_size, generator=generator)
    masks = torch.rand(2 * n_images, n_tokens, generator=generator) < 0.3
    masks[n_images:] = False  # half the global crops masked, as mask_probability 0.5
    mask_index = ibot_mask_indices(masks)  # on the CPU, as in a DataLoader worker
    return {
        "global_crops": globals_.to(device),
        "local_crops": locals_.to(device),
        "masks": masks.to(device),
        "mask_index": mask_index.to(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run the benchmark and print a table plus one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tap_nano_3d")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--global-size", type=int, nargs=3, default=(12, 64, 64))
    parser.add_argument("--local-size", type=int, nargs=3, default=(12, 32, 32))
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--bottleneck", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    backbone = create_model(args.model)
    config = attrs.evolve(
        DINOv2ObjectiveConfig(),
        dino_head_n_prototypes=args.prototypes,
        ibot_head_n_prototypes=args.prototypes,
        dino_head_hidden_dim=args.hidden,
        ibot_head_hidden_dim=args.hidden,
        dino_head_bottleneck_dim=args.bottleneck,
        ibot_head_bottleneck_dim=args.bottleneck,
    )
    objective = DINOv2Objective(backbone, config).to(device).train()
    optimizer = torch.optim.AdamW(get_params_groups(objective), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    patch = tuple(backbone.patch_size)
    batches = [
        make_batch(
            args.batch,
            args.n_local,
            tuple(args.global_size),
            tuple(args.local_size),
            patch,
            generator,
            device,
        )
        for _ in range(args.warmup + args.steps)
    ]

    phases: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "optim", "update")}

    def step(batch: dict[str, Any], record: bool) -> None:
        _sync(device)
        t0 = time.perf_counter()
        out = objective(
            batch["global_crops"],
            batch["local_crops"],
            batch["masks"],
            0.04,
            mask_index=batch["mask_index"],
        )
        _sync(device)
        t1 = time.perf_counter()
        out.loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        objective.update(0.992)
        _sync(device)
        t4 = time.perf_counter()
        if record:
            for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[key].append(dt * 1e3)

    for batch in batches[: args.warmup]:
        step(batch, record=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches[args.warmup :]:
            step(batch, record=True)
    n_steps = args.steps
    events = {e.key: e for e in prof.key_averages()}
    split = {}
    for label in LABELS:
        event = events.get(label)
        if event is None:
            split[label] = 0.0
        elif device.type == "cuda":  # GPU kernels launched inside the region
            split[label] = event.device_time_total / 1e3 / n_steps
        else:
            split[label] = event.cpu_time_total / 1e3 / n_steps
    medians = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(medians.values())

    n_params = sum(p.numel() for p in backbone.parameters())
    print(
        f"model={args.model} ({n_params / 1e6:.2f} M backbone params) device={device} "
        f"threads={torch.get_num_threads()} batch={args.batch} crops=2x{tuple(args.global_size)}"
        f" + {args.n_local}x{tuple(args.local_size)} heads={args.prototypes}/{args.hidden}/"
        f"{args.bottleneck} masked_tokens/step={int(batches[0]['n_masked_patches'])}"
    )
    print(f"{'phase':32s} {'ms/step':>10s} {'share':>7s}")
    for label, ms in split.items():
        print(f"  forward: {label.removeprefix('tapct_ssl.'):21s} {ms:10.1f} {ms / total:7.1%}")
    for key in ("forward", "backward", "optim", "update"):
        print(f"{key + ' (wall, median)':32s} {medians[key]:10.1f} {medians[key] / total:7.1%}")
    print(f"{'step total':32s} {total:10.1f}")
    print(json.dumps({"split_ms": split, "wall_ms": medians, "total_ms": total}))


if __name__ == "__main__":
    main()
