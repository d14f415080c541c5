"""Benchmark of `MultiCropAugmentation.apply`: time, torch calls and host reads per batch.

The paper's crops (2 global (12, 224, 224) + 8 local (12, 96, 96)) from slabs
``(B, 1, 12, H0, W0)``; parameters drawn once with `sample` (a DataLoader worker's job),
then `apply` is timed. Torch calls and host reads (``item``, ``__bool__``, ``tolist``,
``__int__``, ``__float__``, ``nonzero``, ``cpu``) are counted with a ``TorchFunctionMode``.

Usage: uv run python benchmarks/bench_augment.py [--batch 16] [--in-plane 256]
       [--dtype float32|int16] [--device cpu] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from tapct_data import MultiCropAugmentation
from torch.overrides import TorchFunctionMode

HOST_READS = {"item", "__bool__", "tolist", "__int__", "__float__", "__index__", "nonzero", "cpu"}


class CountTorchCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.host_reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.host_reads[name] += 1
        return func(*args, **(kwargs or {}))


def _slabs(b: int, in_plane: int, dtype: str, device: str) -> torch.Tensor:
    x = torch.randint(-1024, 1500, (b, 1, 12, in_plane, in_plane), dtype=torch.int16)
    return (x if dtype == "int16" else x.float() / 300.0).to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--in-plane", type=int, default=256)
    parser.add_argument("--dtype", choices=("float32", "int16"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    aug = MultiCropAugmentation()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    for b in (2, args.batch):
        x = _slabs(b, args.in_plane, args.dtype, args.device)
        params = aug.sample(b, x.shape[2:], torch.Generator().manual_seed(0)).to(args.device)
        with CountTorchCalls() as count:
            aug.apply(x, params)
        print(f"B={b:3d}: {count.calls} torch calls, host reads {dict(count.host_reads) or 0}")

    x = _slabs(args.batch, args.in_plane, args.dtype, args.device)
    g = torch.Generator().manual_seed(1)
    t_sample = float("inf")
    for _ in range(args.repeats + 1):  # best of: the first call pays one-off set-up
        t0 = time.perf_counter()
        params = aug.sample(args.batch, x.shape[2:], g)
        t_sample = min(t_sample, time.perf_counter() - t0)
    params = params.to(args.device)
    aug.apply(x, params)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        aug.apply(x, params)
    sync()
    t_apply = (time.perf_counter() - t0) / args.repeats
    print(
        f"apply B={args.batch} slabs (12, {args.in_plane}, {args.in_plane}) {args.dtype} on "
        f"{args.device} ({args.threads} threads): {t_apply * 1e3:.0f} ms per batch "
        f"({args.batch / t_apply:.1f} samples/s); sample: {t_sample * 1e3:.1f} ms on the CPU (best)"
    )


if __name__ == "__main__":
    main()
