"""Seconds and peak memory of sliding-window feature extraction, in memory vs streamed to zarr.

Each mode runs in its own subprocess; peak resident memory is the subprocess's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. The volume (default 300 x 512 x 512 float32,
300 MiB) is created in a numpy memmap on disk so the streamed mode can read it slab by slab.

Usage: uv run python benchmarks/bench_eval.py [--shape 300 512 512] [--model tap_nano_3d]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _worker(
    mode: str, volume_path: str, shape: list[int], model_name: str, roi: list[int], out: str
):
    import torch
    from tapct_eval import extract_features
    from tapct_vit3d import create_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_model(model_name)
    volume = np.memmap(volume_path, dtype=np.float32, mode="r", shape=(1, *shape))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "memory":
        feats = extract_features(model, torch.from_numpy(np.array(volume)), roi, overlap=0.25)
    else:
        feats = extract_features(model, volume, roi, overlap=0.25, output=out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "peak_rss_mib": peak / 1024,
                "rss_before_mib": base / 1024,
                "grid": list(feats.grid_size),
                "windows": len(feats.cls_tokens),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    parser.add_argument("--model", default="tap_nano_3d")
    parser.add_argument("--roi", type=int, nargs=3, default=[12, 64, 64])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, path = args.worker
        _worker(mode, path, args.shape, args.model, args.roi, path + ".zarr")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "volume.f32")
        volume = np.memmap(path, dtype=np.float32, mode="w+", shape=(1, *args.shape))
        rng = np.random.default_rng(0)
        for d in range(args.shape[0]):
            volume[0, d] = rng.standard_normal(args.shape[1:], dtype=np.float32)
        volume.flush()
        del volume
        for mode in ("memory", "zarr"):
            cmd = [
                sys.executable,
                __file__,
                "--shape",
                *map(str, args.shape),
                "--model",
                args.model,
                "--roi",
                *map(str, args.roi),
                "--worker",
                mode,
                path,
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
