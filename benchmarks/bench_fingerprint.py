"""Benchmark of ``tapct_data.compute_fingerprint`` (body-mask foreground, sampling).

Times, on CT phantoms written as NIfTI:
  * the per-scan work on one scan of ``--shape`` (read, body mask, sampling), and its
    peak resident memory;
  * scans/s over ``--scans`` smaller scans with 1 and with ``--workers`` processes.

Usage: uv run python benchmarks/bench_fingerprint.py [--shape 300 512 512] [--scans 16]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from tapct_data import body_mask, compute_fingerprint, read_volume, write_volume
from tapct_data.phantom import make_phantom


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--small", type=int, nargs=3, default=(64, 256, 256))
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.nii.gz"
        write_volume(make_phantom(tuple(args.shape), seed=0)[0], big)
        t0 = time.perf_counter()
        vol = read_volume(big)
        t1 = time.perf_counter()
        mask = body_mask(vol.data)
        t2 = time.perf_counter()
        compute_fingerprint([vol])
        t3 = time.perf_counter()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"scan {tuple(args.shape)}: read {t1 - t0:.2f} s, body mask {t2 - t1:.2f} s "
            f"({mask.mean():.1%} of voxels), fingerprint of the read volume {t3 - t2:.2f} s; "
            f"peak RSS {peak_mb:.0f} MB"
        )
        paths = []
        for i in range(args.scans):
            p = Path(tmp) / f"s{i:03d}.nii.gz"
            write_volume(make_phantom(tuple(args.small), seed=i)[0], p)
            paths.append(p)
        rates = {}
        for workers in (1, args.workers):
            t = time.perf_counter()
            fp = compute_fingerprint(paths, workers=workers)
            rates[workers] = args.scans / (time.perf_counter() - t)
            print(
                f"{args.scans} scans {tuple(args.small)}, workers={workers}: "
                f"{rates[workers]:.2f} scans/s (clip [{fp.normalize.lower:.0f}, "
                f"{fp.normalize.upper:.0f}] HU)"
            )
        print(
            f"speed-up with {args.workers} workers: {rates[args.workers] / rates[1]:.2f}x "
            f"(process start included); lungs in the phantom reach "
            f"{np.percentile(vol.data[0].numpy()[mask], 0.5):.0f} HU"
        )


if __name__ == "__main__":
    main()
