"""Measure the built-in pretraining demo on the CPU: iterations/s and peak memory.

    uv run python benchmarks/bench_pretrain_cpu.py [--iterations N] [--threads T]

Runs ``tapct pretrain``'s demo config (tap_nano_3d, crops (8,64,64)/(8,32,32), batch 8) for
N iterations in a temporary folder and prints wall time, iterations/s, samples/s and the
peak resident memory of the process. For the share of each phase of the step (data,
augmentation, forward, backward, optimizer) run
``benchmarks/bench_pretrain_gpu.py --device cpu --config demo``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tapct_app.pretrain import resolve_pretrain_config
    from tapct_app.train.loop import run_pretraining

    cfg = resolve_pretrain_config(None, [], iterations=args.iterations, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_pretraining(cfg, Path(tmp) / "demo", progress=False)
        total = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"demo config: {cfg.model.name}, batch {cfg.train.batch_size}, crops "
          f"{cfg.crops.global_crops_size}/{cfg.crops.local_crops_size} x "
          f"{cfg.crops.local_crops_number}, {args.threads} threads")
    print(f"iterations: {result.iterations_done} in {result.wall_s:.1f} s training loop "
          f"({total:.1f} s incl. phantoms/store/export)")
    print(f"iterations/s: {result.iterations_done / result.wall_s:.3f}")
    print(f"samples/s: {result.samples_per_s:.2f}")
    print(f"loss: first {result.first_loss:.4f} -> last {result.last_loss:.4f}")
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
