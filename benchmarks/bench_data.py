"""Benchmark of the tapct_data input pipeline on a realistic scan size.

Compares, for one multi-crop sample (2 global (12, 224, 224) + 8 local (12, 96, 96)):
  * zarr path: `PretrainSlabDataset` reads a 12-slice slab from the chunked store, then
    `MultiCropAugmentation` runs on the batch tensor;
  * whole-file path: load the whole NIfTI with TorchIO, take a 12-slice block with
    ``tio.Crop`` and run the same multi-crop on it.
Also times the batched multi-crop alone on CPU tensors (B = 8).

Usage: uv run python benchmarks/bench_data.py [--shape 300 512 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchio as tio
from tapct_data import (
    ClipNormalize,
    MultiCropAugmentation,
    PretrainSlabDataset,
    build_zarr_store,
    expand_inputs,
    write_volume,
)
from tapct_data.phantom import make_phantom


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = tuple(args.shape)
    aug = MultiCropAugmentation()
    norm = ClipNormalize()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        image, _ = make_phantom(shape, seed=0)
        t_phantom = time.perf_counter() - t0
        nii = write_volume(image, tmp / "scan.nii.gz")
        del image
        t0 = time.perf_counter()
        store = build_zarr_store(expand_inputs([nii]), tmp / "store.zarr").path
        t_store = time.perf_counter() - t0
        ds = PretrainSlabDataset(
            store, slab_depth=12, in_plane_size=(256, 256), normalize=norm, seed=0
        )
        g = torch.Generator().manual_seed(0)

        ds[0]  # warm-up
        t0 = time.perf_counter()
        for k in range(args.repeats):
            slab = ds[k + 1]
            aug(slab[None], generator=g)
        t_zarr = (time.perf_counter() - t0) / args.repeats

        t0 = time.perf_counter()
        for _ in range(max(1, args.repeats // 2)):
            subject = tio.Subject(image=tio.ScalarImage(nii))
            subject.load()
            depth = subject.image.shape[-1]
            start = int(torch.randint(0, depth - 12 + 1, (1,), generator=g))
            block = tio.Crop((0, 0, 0, 0, start, depth - 12 - start))(subject)
            block.image.set_data(norm(block.image.data))
            aug(block, generator=g)
        t_file = (time.perf_counter() - t0) / max(1, args.repeats // 2)

        batch = torch.randn(8, 1, 12, 256, 256)
        aug(batch, generator=g)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            aug(batch, generator=g)
        t_batched = (time.perf_counter() - t0) / args.repeats

    print(f"scan {shape}: phantom {t_phantom:.2f} s, zarr store build {t_store:.2f} s")
    print(f"zarr slab + multi-crop : {1 / t_zarr:8.2f} samples/s ({t_zarr * 1e3:.0f} ms/sample)")
    print(f"whole NIfTI + TorchIO  : {1 / t_file:8.2f} samples/s ({t_file * 1e3:.0f} ms/sample)")
    print(f"speed-up               : {t_file / t_zarr:8.1f}x")
    print(f"batched multi-crop CPU : {t_batched * 1e3:.0f} ms per batch of 8 "
          f"({8 / t_batched:.1f} samples/s, 2 threads)")


if __name__ == "__main__":
    main()
