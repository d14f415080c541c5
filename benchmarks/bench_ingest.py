"""Ingest benchmark (issue 9): preprocessing throughput, store open time, loader CPU per sample.

1. A synthetic archive of CT phantoms (`tapct_data.phantom`): ``--small`` scans of
   ``--small-shape`` as NIfTI, ``--dicom`` series of the same shape as a DICOM tree
   (pydicom, one file per slice, int16 with rescale), and ``--large`` scans of
   300x512x512 as NIfTI. Default: 170 + 40 + 2 = 212 scans.
2. Preprocessing (`build_zarr_store`) with 1 and 2 workers (each a single-threaded
   reader: 1 in-process, 2 in a pool): scans/s, the speed-up overall and after the pool's
   start-up (a fork server importing torch, zarr, torchio and the readers, about 4 s once
   per build), and the load average before each run (the target, >= 1.8x on 2 cores,
   needs a quiet machine).
3. Store open time (`ZarrVolumeStore(path).names`) for 100 and 2,000 tiny scans, with the
   consolidated index and with a stale one (every record read).
4. Loader CPU time per (12, 512, 512) sample on one core (``torch.set_num_threads(1)``,
   ``time.process_time`` so zarr's decoding threads count): `PretrainSlabDataset` as
   stored (int16 HU, the default) and with the CPU resize to 224 + normalisation.

Usage: uv run python benchmarks/bench_ingest.py [--small 170] [--dicom 40] [--large 2]
       [--open-sizes 100 2000] [--samples 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tapct_data import (
    ClipNormalize,
    PretrainSlabDataset,
    Volume,
    ZarrVolumeStore,
    expand_inputs,
    write_volume,
)
from tapct_data import store as store_module
from tapct_data.phantom import make_phantom


def write_dicom_series(volume: Volume, folder: Path, seed: int) -> Path:
    """Write ``volume`` as a CT series of one file per slice (LPS, axial, int16 + rescale)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    data = volume.data[0].round().clamp(-1024, 3071).to(torch.int16).numpy()
    sd, sh, sw = volume.spacing
    study, series = generate_uid(entropy_srcs=[f"s{seed}"]), generate_uid(entropy_srcs=[f"r{seed}"])
    for k in range(data.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", f"P{seed}", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * sd)]  # D runs inferior -> superior
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [float(sh), float(sw)], float(sd)
        ds.Rows, ds.Columns = data.shape[1], data.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = data[k].tobytes()
        pydicom.dcmwrite(ds.filename, ds, enforce_file_format=True)
    return folder


def make_archive(root: Path, n_small: int, n_dicom: int, n_large: int, shape) -> list[Path]:
    """Write the synthetic archive; return one input path per scan (files, series folders)."""
    paths = []
    for i in range(n_small):
        paths.append(
            write_volume(make_phantom(shape, seed=i)[0], root / "nifti" / f"s{i:04d}.nii.gz")
        )
    for i in range(n_dicom):
        image = make_phantom(shape, seed=10_000 + i)[0]
        paths.append(write_dicom_series(image, root / "dicom" / f"p{i:04d}" / "ct", seed=i))
    for i in range(n_large):
        image = make_phantom((300, 512, 512), seed=20_000 + i)[0]
        paths.append(write_volume(image, root / "large" / f"l{i}.nii.gz"))
    return paths


def bench_convert(root: Path, tmp: Path, workers: int) -> float:
    listing = expand_inputs([root])  # the archive folder, walked (DICOM grouped by series)
    out = tmp / f"store-w{workers}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    done: list[float] = []
    t0 = time.perf_counter()
    report = store_module.build_zarr_store(
        listing, out, workers=workers, progress=lambda *_: done.append(time.perf_counter())
    )
    wall = time.perf_counter() - t0
    rate = len(report.written) / wall
    steady = (len(done) - 1) / (done[-1] - done[0])  # without the pool's start-up
    print(
        f"  workers={workers}: {len(report.written)} scans in {wall:.1f} s = {rate:.2f} scans/s; "
        f"first scan after {done[0] - t0:.1f} s (pool start-up), {steady:.2f} scans/s after it "
        f"(load average before: {load:.1f}; {len(report.skipped)} skipped)",
        flush=True,
    )
    return rate, steady


def bench_open(tmp: Path, sizes: list[int]) -> None:
    tiny = Volume(data=torch.full((1, 2, 4, 4), -1000.0), spacing=(1.0, 1.0, 1.0), affine=np.eye(4))
    real_read = store_module.read_scan
    store_module.read_scan = lambda source, **_: tiny  # tiny arrays: the index is what we time
    try:
        for n in sizes:
            sources = [
                store_module.ScanSource(
                    name=f"scan{i:06d}", path=Path(f"/x/{i}.nii.gz"), kind="nifti"
                )
                for i in range(n)
            ]
            path = tmp / f"open-{n}.zarr"
            t0 = time.perf_counter()
            store_module.build_zarr_store(sources, path, chunks=(1, 4, 4))
            build = time.perf_counter() - t0
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                names = ZarrVolumeStore(path).names
                times.append(time.perf_counter() - t0)
            assert len(names) == n
            (path / "index.json").unlink()
            t0 = time.perf_counter()
            ZarrVolumeStore(path)
            stale = time.perf_counter() - t0
            print(
                f"  {n:>5} scans: open + names {1e3 * min(times):.1f} ms (median "
                f"{1e3 * sorted(times)[2]:.1f} ms); without the consolidated index "
                f"{1e3 * stale:.1f} ms; build {build:.1f} s",
                flush=True,
            )
    finally:
        store_module.read_scan = real_read


def bench_loader(tmp: Path, samples: int) -> None:
    scan = tmp / "loader" / "l.nii.gz"
    write_volume(make_phantom((300, 512, 512), seed=1)[0], scan)
    path = tmp / "loader.zarr"
    store_module.build_zarr_store(expand_inputs([scan]), path)
    torch.set_num_threads(1)
    for label, kwargs in (
        ("int16 HU 512x512 (default)", {}),
        (
            "CPU resize to 224 + ClipNormalize",
            {"in_plane_size": (224, 224), "normalize": ClipNormalize()},
        ),
    ):
        ds = PretrainSlabDataset(path, slab_depth=12, seed=0, **kwargs)
        ds[0]
        t0, w0 = time.process_time(), time.perf_counter()
        for k in range(1, samples + 1):
            ds[k]
        cpu = (time.process_time() - t0) / samples * 1e3
        wall = (time.perf_counter() - w0) / samples * 1e3
        print(f"  {label}: {cpu:.1f} ms CPU per sample ({wall:.1f} ms wall)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=170, help="small NIfTI scans")
    parser.add_argument("--dicom", type=int, default=40, help="small DICOM series")
    parser.add_argument("--large", type=int, default=2, help="300x512x512 NIfTI scans")
    parser.add_argument("--small-shape", type=int, nargs=3, default=(24, 96, 96))
    parser.add_argument("--open-sizes", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--samples", type=int, default=60, help="loader samples timed")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench_ingest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"cores available: {len(os.sched_getaffinity(0))}; work folder {tmp}", flush=True)
    try:
        t0 = time.perf_counter()
        paths = make_archive(
            tmp / "archive", args.small, args.dicom, args.large, tuple(args.small_shape)
        )
        print(
            f"archive: {len(paths)} scans written in {time.perf_counter() - t0:.0f} s", flush=True
        )
        print("preprocessing:", flush=True)
        rates = {w: bench_convert(tmp / "archive", tmp, w) for w in args.workers}
        if 1 in rates and 2 in rates:
            print(
                f"  speed-up 2 vs 1 workers: {rates[2][0] / rates[1][0]:.2f}x overall, "
                f"{rates[2][1] / rates[1][1]:.2f}x after the pool's start-up",
                flush=True,
            )
        print("store open:", flush=True)
        bench_open(tmp, args.open_sizes)
        print("loader (one core):", flush=True)
        bench_loader(tmp, args.samples)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
