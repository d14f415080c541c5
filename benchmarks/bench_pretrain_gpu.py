"""Pretraining step throughput: the step ``tapct pretrain`` runs, fed by its real loader.

    uv run python benchmarks/bench_pretrain_gpu.py [--batch-size 16] [--steps 20]
    uv run python benchmarks/bench_pretrain_gpu.py --device cpu --config demo --steps 5

Builds a small zarr store from CT phantoms, then the run's parts and loader exactly as
``tapct pretrain`` does (``tapct_app.train.build``), and times
``tapct_app.train.step.train_step``, the same function the training loop calls, for
``--steps`` steps after ``--warmup``, then counts host reads in ``--count-steps`` more
(counting slows the step, so those are not timed). Prints per step: data wait (the
loader, whose workers also draw the crops' parameters and masks, and the copy to the
device), augmentation (applying them on the device), forward, backward, optimizer +
EMA, samples/s, the fraction of the GPU's dense bf16 peak (analytic FLOPs below), peak
memory, and host reads per step: a ``TorchFunctionMode`` count
(``tapct_app.train.host_syncs``, any device) and, on CUDA, the synchronisations that
``torch.cuda.set_sync_debug_mode("warn")`` reports. Phases are timed with CUDA events
on CUDA, with the host clock on CPU. Without CUDA and with ``--device auto`` it says so
and exits 0; ``--device cpu`` runs on the CPU (the test suite runs it so with tiny
sizes, so it cannot rot). ``--json PATH`` also writes the figures.

Analytic FLOPs per sample (matmuls, 2 per multiply-add; backward = 2 x forward):
- ViT forward on a crop with ``N`` tokens (patches + cls + registers), width ``E``,
  depth ``L``: ``L * (24 N E^2 + 4 N^2 E)`` plus the patch embedding
  ``2 * patches * E * prod(patch)``;
- a DINO head on ``n`` inputs: ``2 n (E h + h h + h b + b K)`` (3 layers, hidden ``h``,
  bottleneck ``b``, ``K`` prototypes);
- the student: every global and local crop forward and backward (x3), the DINO head on
  every crop's cls token, the iBOT head on the masked tokens (expected fraction
  ``mask_probability * mean(mask_ratio)``); the teacher: the global crops and heads
  forward only (x1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
PHASES = ("data", "augment", "forward", "backward", "optimizer")


def vit_flops(tokens: int, patches: int, width: int, depth: int, patch_voxels: int) -> float:
    """Forward matmul FLOPs of a ViT on one crop."""
    blocks = depth * (24 * tokens * width**2 + 4 * tokens**2 * width)
    return blocks + 2 * patches * width * patch_voxels


def head_flops(n: float, width: int, hidden: int, bottleneck: int, prototypes: int) -> float:
    """Forward FLOPs of a 3-layer DINO head on ``n`` inputs."""
    per_input = width * hidden + hidden * hidden + hidden * bottleneck + bottleneck * prototypes
    return 2 * n * per_input


def sample_flops(cfg: Any, backbone: Any, objective_cfg: Any) -> float:
    """Analytic training FLOPs per sample (student x3, teacher x1) for a run config."""
    patch = tuple(backbone.patch_size)
    width, depth = backbone.embed_dim, len(backbone.blocks)
    extra = 1 + int(getattr(backbone, "num_register_tokens", 0))
    pv = math.prod(patch)

    def crop(size: Sequence[int]) -> tuple[float, int]:
        n = math.prod(s // p for s, p in zip(size, patch, strict=True))
        return vit_flops(n + extra, n, width, depth, pv), n

    g, g_patches = crop(cfg.crops.global_crops_size)
    loc, _ = crop(cfg.crops.local_crops_size)
    n_local = cfg.crops.local_crops_number
    m = cfg.masking
    masked = 2 * g_patches * m.mask_probability * sum(m.mask_ratio) / 2
    oc = objective_cfg
    dino = (oc.dino_head_hidden_dim, oc.dino_head_bottleneck_dim, oc.dino_head_n_prototypes)
    ibot = (oc.ibot_head_hidden_dim, oc.ibot_head_bottleneck_dim, oc.ibot_head_n_prototypes)
    student = 2 * g + n_local * loc
    student += head_flops(2 + n_local, width, *dino) + head_flops(masked, width, *ibot)
    teacher = 2 * g + head_flops(2, width, *dino) + head_flops(masked, width, *ibot)
    return 3 * student + teacher


class PhaseTimer:
    """``phase(name)`` context managers; CUDA events on CUDA, the host clock on CPU."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.host: dict[str, float] = defaultdict(float)
        self.events: list[tuple[str, Any, Any]] = []
        self.enabled = False

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.host[name] += time.perf_counter() - t0

    def totals(self) -> dict[str, float]:
        """Seconds per phase (synchronises CUDA)."""
        out = defaultdict(float, self.host)
        if self.cuda:
            self.torch.cuda.synchronize()
            for name, start, end in self.events:
                out[name] += start.elapsed_time(end) / 1000.0
        return dict(out)


def _phantom_store(root: Path, in_plane: Sequence[int], depth: int) -> Path:
    from tapct_app.train.data import prepare_stores, write_demo_phantoms

    shape = (max(2 * depth, 16), max(in_plane[0], 48), max(in_plane[1], 48))
    paths = write_demo_phantoms(root / "nii", 2, shape, seed=0)
    return prepare_stores([str(p) for p in paths], root / "cache")[0]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build the run as ``tapct pretrain`` does and time ``train_step``; return figures."""
    import torch
    from tapct_app.pretrain import resolve_pretrain_config
    from tapct_app.train.build import build_data, build_loader, build_parts, objective_config
    from tapct_app.train.data import IterationBatchSampler
    from tapct_app.train.distributed import DistInfo, resolve_device
    from tapct_app.train.host_syncs import HostReadCounter
    from tapct_app.train.step import train_step

    device = resolve_device(args.device)
    sets = [*args.set, f"data.num_workers={args.workers}"]
    with tempfile.TemporaryDirectory() as tmp:
        base = resolve_pretrain_config(args.config, ["unused"], preset=args.preset,
                                       batch_size=args.batch_size, device=str(device),
                                       overrides=sets)  # fmt: skip
        store = _phantom_store(Path(tmp) / "phantoms", base.data.in_plane_size,
                               base.data.slab_depth)  # fmt: skip
        cfg = resolve_pretrain_config(args.config, [str(store)], preset=args.preset,
                                      batch_size=args.batch_size, device=str(device),
                                      overrides=sets)  # fmt: skip
        dist = DistInfo(device=device)
        dataset, _ = build_data(cfg, Path(tmp) / "run", dist)
        parts = build_parts(cfg, dist)
        parts.objective.train()
        accum, batch = cfg.train.accumulation_steps, cfg.train.batch_size
        n_steps = args.warmup + args.steps + args.count_steps
        sampler = IterationBatchSampler(0, n_steps, 0, batch, accum, 0, 1)
        loader = build_loader(dataset, sampler, parts.collate, cfg, device)
        timer = PhaseTimer(device)
        reads, cuda_syncs = 0, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_start = wall = 0.0
        for it in range(n_steps):
            timed = args.warmup <= it < args.warmup + args.steps
            if it == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                timer.enabled, t_start = True, time.perf_counter()
            if it == args.warmup + args.steps:  # then a few counted (slower) steps
                phases = timer.totals()
                wall, timer.enabled = time.perf_counter() - t_start, False
            t0 = time.perf_counter()
            micro = [next(loader).to(device, non_blocking=True) for _ in range(accum)]
            if timed:
                timer.host["data"] += time.perf_counter() - t0
            if timed or it < args.warmup:
                train_step(parts, micro, it, phase=timer)
                continue
            with contextlib.ExitStack() as stack:
                counter = stack.enter_context(HostReadCounter())
                if device.type == "cuda":
                    caught = stack.enter_context(warnings.catch_warnings(record=True))
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    stack.callback(torch.cuda.set_sync_debug_mode, "default")
                train_step(parts, micro, it)
            reads += counter.total
            if device.type == "cuda":
                cuda_syncs += sum("synchroniz" in str(w.message) for w in caught)
        if args.count_steps == 0:
            phases = timer.totals()
            wall = time.perf_counter() - t_start
        backbone = parts.objective.student_backbone
        flops = sample_flops(cfg, backbone, objective_config(cfg))
    samples = args.steps * batch * accum
    step_s = wall / args.steps
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result: dict[str, Any] = {
        "device": name,
        "model": cfg.model.name,
        "batch_size": batch,
        "accumulation_steps": accum,
        "global_crops": list(cfg.crops.global_crops_size),
        "local_crops": [cfg.crops.local_crops_number, *cfg.crops.local_crops_size],
        "steps": args.steps,
        "step_ms": 1000 * step_s,
        "samples_per_s": samples / wall,
        "phase_ms": {p: 1000 * phases.get(p, 0.0) / args.steps for p in PHASES},
        "phase_share": {p: phases.get(p, 0.0) / wall for p in PHASES},
        "gflop_per_sample": flops / 1e9,
        "achieved_tflops": flops * samples / wall / 1e12,
        "fraction_of_bf16_peak": (flops * samples / wall / 1e12 / peak) if peak else None,
        "host_reads_per_step": reads / args.count_steps if args.count_steps else None,
        "cuda_syncs_per_step": (
            cuda_syncs / args.count_steps if device.type == "cuda" and args.count_steps else None
        ),
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        ),
    }
    return result


def _report(r: dict[str, Any]) -> None:
    print(f"device: {r['device']}; {r['model']}, batch {r['batch_size']} x accumulation "
          f"{r['accumulation_steps']}, crops 2x{tuple(r['global_crops'])} + "
          f"{r['local_crops'][0]}x{tuple(r['local_crops'][1:])}, {r['steps']} steps")  # fmt: skip
    print(f"step: {r['step_ms']:.1f} ms; samples/s: {r['samples_per_s']:.2f}")
    for p in PHASES:
        print(f"  {p:9s} {r['phase_ms'][p]:9.1f} ms  {r['phase_share'][p]:6.1%}")
    print(f"analytic: {r['gflop_per_sample']:.1f} GFLOP/sample; achieved "
          f"{r['achieved_tflops']:.2f} TFLOP/s")  # fmt: skip
    if r["fraction_of_bf16_peak"] is not None:
        print(f"fraction of dense bf16 peak: {r['fraction_of_bf16_peak']:.1%}")
    if r["host_reads_per_step"] is not None:
        print(f"host reads per step (TorchFunctionMode): {r['host_reads_per_step']:.1f}")
    if r["cuda_syncs_per_step"] is not None:
        print(f"CUDA synchronisations per step (sync debug mode): {r['cuda_syncs_per_step']:.1f}")
    unit = "GiB allocated" if r["device"] != "cpu" else "GiB peak RSS"
    print(f"peak memory: {r['peak_memory_gib']:.2f} {unit}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print (and write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA or skip), cuda, cpu")
    parser.add_argument("--config", default="tap_b_3d", help="a shipped config or a file")
    parser.add_argument("--preset", default=None, help="model preset (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="per micro-batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--count-steps",
        type=int,
        default=1,
        help="extra steps after the timed ones, with host reads counted",
    )
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures")
    args = parser.parse_args(argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto" and not torch.cuda.is_available():
        print("bench_pretrain_gpu: no CUDA device; nothing to measure (or use --device cpu)")
        return 0
    if args.device == "auto":
        args.device = "cuda"
    result = run_benchmark(args)
    _report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
