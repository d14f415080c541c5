"""How fast `tapct_data.expand_inputs` walks an archive (one header read per DICOM file).

Builds a synthetic tree in a temporary folder: ``--series`` DICOM series of ``--slices``
small slices each (real CT headers from ``../shared/data/ct/ct_small_slice.dcm``, 8 x 8
pixels, two series per folder), plus as many NIfTI-named files as series, then times one
expansion. Usage::

    uv run python benchmarks/bench_expand_inputs.py --series 100 --slices 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from tapct_data import expand_inputs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build(root: Path, n_series: int, n_slices: int) -> int:
    template = pydicom.dcmread(SHARED / "ct/ct_small_slice.dcm")
    template.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    template.Rows = template.Columns = 8
    template.PixelData = np.zeros((8, 8), np.int16).tobytes()
    count = 0
    for s in range(n_series):
        folder = root / f"p{s // 2:05d}" / "ct"
        folder.mkdir(parents=True, exist_ok=True)
        template.SeriesInstanceUID = pydicom.uid.generate_uid()
        for k in range(n_slices):
            template.ImagePositionPatient = [0.0, 0.0, float(k)]
            template.SOPInstanceUID = pydicom.uid.generate_uid()
            template.save_as(folder / f"s{s}_{k:04d}")  # no extension, as many archives
            count += 1
        (root / f"p{s // 2:05d}" / f"mask{s}.nii.gz").write_bytes(b"")
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--slices", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_files = build(root, args.series, args.slices)
        start = time.perf_counter()
        listing = expand_inputs(root)
        seconds = time.perf_counter() - start
    assert len(listing.scans) == 2 * args.series, len(listing.scans)
    print(
        f"{n_files} files -> {len(listing.scans)} scans in {seconds:.2f} s: "
        f"{n_files / seconds:,.0f} files/s, {1e3 * seconds / n_files:.3f} ms per file; "
        f"10^5 files: about {1e5 * seconds / n_files:.0f} s"
    )


if __name__ == "__main__":
    main()
